"""Running out of file descriptors: the proxy neither spins nor floods its log, keeps serving
what is open, and accepts again as soon as descriptors free up."""

import os
import resource
import socket
import time

from .client import connect, eventually
from .test_metrics import samples, scrape

import netns

LIMIT = 512
HELD = 700


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_out_of_descriptors(start_proxy, echo):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY,
                        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT)))
    assert proxy.records("open file limit", wait_for=1)[0]["limit"] == LIMIT
    tunnel, head, _ = connect(proxy.address, "origin.test:7")
    assert head.status == 200
    held = []
    try:
        for _ in range(HELD):  # each sends part of a head, so the proxy takes and keeps it
            sock = socket.create_connection(proxy.address, timeout=10)
            sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n")
            held.append(sock)
        assert proxy.records("accept failed: out of resources; new connections wait", wait_for=1, timeout=10)
        before, started = cpu_ticks(proxy.process.pid), time.monotonic()
        time.sleep(2)
        busy = (cpu_ticks(proxy.process.pid) - before) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - started)
        assert busy < 0.25, f"the proxy spun at {busy:.0%} of a CPU"
        failures = proxy.records("accept failed: out of resources; new connections wait")
        assert 1 <= len(failures) <= 5 and all(record["refused"] >= 1 for record in failures)
        assert not proxy.records("accept failed")  # no record per failed accept
        tunnel.sendall(b"still served")  # what is open keeps being served
        assert tunnel.recv(100) == b"still served"
    finally:
        for sock in held[:400]:
            sock.close()
    try:
        fresh, head, _ = connect(proxy.address, "origin.test:7")  # accepted again once descriptors free up
        with fresh:
            assert head.status == 200
            fresh.sendall(b"new")
            assert fresh.recv(10) == b"new"
        assert eventually(lambda: samples(scrape(netns.PROXY)[1]).get("fastfog_accept_exhausted", 0) >= 1)
    finally:
        tunnel.close()
        for sock in held[400:]:
            sock.close()
