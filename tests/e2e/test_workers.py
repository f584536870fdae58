"""``--workers N``: several processes on one port under a supervisor (SPEC 5.9)."""

import json
import os
import signal
import subprocess
import sys

from .client import connect, eventually
from .test_metrics import samples, scrape
from .test_reload import admin

import netns

ECHO = "origin.test:7"


def start_workers(start_proxy, tmp_path, *flags, workers=2):
    path = str(tmp_path / "admin.sock")
    proxy = start_proxy("--workers", str(workers), "--expose-prometheus-metrics", "--prometheus-listen-ip",
                        netns.PROXY, *flags, config=f"allow_missing_role: true\nadmin_socket: {path}\n")
    assert len(proxy.records("listening", wait_for=workers, timeout=20)) == workers
    assert eventually(lambda: os.path.exists(path))
    return proxy, path


def test_workers_share_the_port_and_their_figures_add_up(start_proxy, tmp_path, echo):
    proxy, path = start_workers(start_proxy, tmp_path)
    tunnels = []
    try:
        for _ in range(40):
            sock, head, _ = connect(proxy.address, ECHO)
            assert head.status == 200
            tunnels.append(sock)
        code, status = admin(path, "GET", "/status")
        assert code == 200 and len(status["workers"]) == 2
        open_per_worker = [worker["open_tunnels"] for worker in status["workers"]]
        assert sum(open_per_worker) == 40 and min(open_per_worker) > 0  # the kernel spread them
        assert len({worker["pid"] for worker in status["workers"]} | {proxy.process.pid}) == 3
    finally:
        for sock in tunnels:
            sock.close()
    assert eventually(lambda: samples(scrape(netns.PROXY)[1]).get("cn_close{project=\"\",role=\"\"}") == 40)
    found = samples(scrape(netns.PROXY)[1])
    assert found['cn_atpt_total{success="true"}'] == 40
    assert found['process_open_fds{worker="0"}'] > 0 and found['process_open_fds{worker="1"}'] > 0  # per worker


def test_a_worker_that_dies_is_replaced_and_reload_reaches_every_worker(start_proxy, tmp_path, echo):
    proxy, path = start_workers(start_proxy, tmp_path)
    victim = admin(path, "GET", "/status")[1]["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    [died] = proxy.records("worker exited unexpectedly; starting it again", wait_for=1, timeout=10)
    assert (died["pid"], died["exit_code"]) == (victim, -signal.SIGKILL)
    assert len(proxy.records("listening", wait_for=3, timeout=20)) == 3
    pids = {worker["pid"] for worker in admin(path, "GET", "/status")[1]["workers"]}
    assert victim not in pids and len(pids) == 2
    for _ in range(10):
        sock, head, _ = connect(proxy.address, ECHO)
        sock.close()
        assert head.status == 200
    code, outcome = admin(path, "POST", "/reload")
    assert code == 200 and [worker["ok"] for worker in outcome["workers"]] == [True, True]
    proxy.process.send_signal(signal.SIGHUP)
    assert len(proxy.records("configuration reloaded", wait_for=4, timeout=10)) == 4  # 2 by POST, 2 by SIGHUP
    assert proxy.stop() == 0
    assert len(proxy.records("quitting gracefully")) == 2
    assert not os.path.exists(path)


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastfog", "serve", "--listen-ip", netns.PROXY, "--listen-port",
                             "4751", "--workers", "2", "--stats-socket-dir", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert sum(record["msg"] == "cannot start" for record in records) >= 1
    assert "a worker could not start; stopping" in [record["msg"] for record in records]


def test_counters_never_go_backwards_when_a_worker_dies_or_does_not_answer(start_proxy, tmp_path, echo):
    proxy, path = start_workers(start_proxy, tmp_path)

    def tunnels(count):
        for _ in range(count):
            sock, head, _ = connect(proxy.address, ECHO)
            sock.close()
            assert head.status == 200

    def total():
        return samples(scrape(netns.PROXY)[1])

    tunnels(20)
    assert total()['cn_atpt_total{success="true"}'] == 20
    workers = admin(path, "GET", "/status")[1]["workers"]
    os.kill(workers[0]["pid"], signal.SIGKILL)
    assert len(proxy.records("listening", wait_for=3, timeout=20)) == 3
    found = total()
    assert found['cn_atpt_total{success="true"}'] == 20  # the dead worker's figures are carried on
    assert found["fastfog_workers_unreachable"] == 0
    tunnels(10)
    assert total()['cn_atpt_total{success="true"}'] == 30
    stopped = admin(path, "GET", "/status")[1]["workers"][1]["pid"]
    os.kill(stopped, signal.SIGSTOP)  # alive, but it cannot answer
    try:
        found = total()
        assert found['cn_atpt_total{success="true"}'] >= 30 and found["fastfog_workers_unreachable"] == 1
        assert proxy.records("a worker did not answer the metrics scrape; its last figures are served",
                             wait_for=1)
    finally:
        os.kill(stopped, signal.SIGCONT)
