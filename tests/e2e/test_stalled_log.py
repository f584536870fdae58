"""A log reader that stops reading (a stuck log shipper, a paused container log driver) never
stops the proxy: records wait in a bounded backlog, the rest are dropped whole and counted."""

import json
import socket
import subprocess
import sys
import threading
import time

from .client import connect
from .conftest import DNS_PORT
from .test_metrics import samples, scrape

import netns

TUNNELS = 600  # two records each, about 1 KB: far past the pipe's 64 KiB and the backlog


def test_requests_are_served_while_nobody_reads_the_log(dns, echo, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("log_buffer_bytes: 65536\n")
    proxy = subprocess.Popen([sys.executable, "-m", "fastfog", "serve", "--config-file", str(config),
                              "--listen-ip", netns.PROXY, "--resolver-address", f"{netns.DNS}:{DNS_PORT}",
                              "--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY],
                             stderr=subprocess.PIPE)  # and nobody reads it, for now
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((netns.PROXY, 9810), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proxy.poll() is None
                time.sleep(0.05)
        for number in range(TUNNELS):
            sock, head, _ = connect((netns.PROXY, 4750), "origin.test:7", timeout=5)
            with sock:
                assert head.status == 200, number
                sock.sendall(b"ping")
                assert sock.recv(10) == b"ping"
        dropped = samples(scrape(netns.PROXY)[1]).get("fastfog_log_dropped", 0)
        assert dropped > 0
        chunks = []
        reader = threading.Thread(target=lambda: [chunks.append(chunk) for chunk in iter(
            lambda: proxy.stderr.read1(1 << 16), b"")], daemon=True)
        reader.start()  # the reader is back
        sock, head, _ = connect((netns.PROXY, 4750), "origin.test:7", timeout=5)
        sock.close()
        time.sleep(1)
    finally:
        proxy.terminate()
        proxy.wait(20)
    reader.join(5)
    records = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]  # every line whole
    [report] = [record for record in records if record["msg"] == "log records dropped: the log reader was too slow"]
    assert report["dropped"] >= dropped  # (a record or two may have been dropped after the scrape)
    assert records[-1]["msg"] == "quitting gracefully"
