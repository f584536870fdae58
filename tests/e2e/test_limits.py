"""Limits, idle timeouts and the stats socket through a real ``fastfog serve`` (SPEC 3.5, 4.3, 5.6)."""

import json
import os
import socket
import stat
import threading
import time

from .client import connect, eventually, exchange

import netns

ECHO = f"{netns.ORIGIN}:7"


def limited_bytes(status, phrase, message, code):
    body = (message + "\n").encode()
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n"
            f"Retry-After: 1\r\nX-Fastfog-Reason: {code}\r\nX-Smokescreen-Error: {message}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


RATE_LIMITED = limited_bytes(429, "Too Many Requests", "Proxy rate limit exceeded. Please retry later.",
                             "rate_limited")


def status_of_connect(proxy):
    sock, head, _ = connect(proxy.address, ECHO)
    sock.close()
    return head.status


def test_request_rate(start_proxy, echo):
    proxy = start_proxy(config="max_request_rate: 2\nmax_request_burst: 4\n")
    statuses = [status_of_connect(proxy) for _ in range(8)]
    assert 4 <= statuses.count(200) <= 5  # the burst, and at most one token refilled meanwhile
    assert statuses[-1] == 429
    assert exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode()) == RATE_LIMITED
    time.sleep(1.1)  # two tokens a second
    assert status_of_connect(proxy) == 200
    refused = [record for record in proxy.records("CANONICAL-PROXY-DECISION", wait_for=10)
               if record.get("status_code") == 429]
    assert refused and refused[0]["decision_reason"] == "Proxy rate limit exceeded. Please retry later."


def test_concurrent_requests(start_proxy, echo):
    proxy = start_proxy("--dns-timeout", "1s", config="max_concurrent_requests: 1\n")
    held = socket.create_connection(proxy.address, timeout=5)
    held.sendall(b"CONNECT silent.test:7 HTTP/1.1\r\n\r\n")  # processing: its DNS never answers
    time.sleep(0.2)
    answer = exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode())
    assert answer == limited_bytes(503, "Service Unavailable", "Proxy overloaded. Please retry later.",
                                   "concurrency_limited")
    assert held.recv(100).startswith(b"HTTP/1.1 504 ")  # the held request ends...
    held.close()
    sock, head, _ = connect(proxy.address, ECHO)  # ...and frees its place
    sock.close()
    assert head.status == 200


def test_an_open_tunnel_is_not_a_request_in_progress(start_proxy, echo):
    proxy = start_proxy(config="max_concurrent_requests: 1\n")
    opened = [connect(proxy.address, ECHO) for _ in range(3)]
    assert [head.status for _, head, _ in opened] == [200, 200, 200]  # each freed its place once open
    for sock, _, _ in opened:
        sock.close()


def test_concurrent_tunnels(start_proxy, echo):
    proxy = start_proxy(config="max_concurrent_connect_tunnels: 2\n")
    first, second = (connect(proxy.address, ECHO)[0] for _ in range(2))
    refused = limited_bytes(429, "Too Many Requests", "maximum concurrent connect tunnels exceeded",
                            "tunnels_limited")
    assert exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode()) == refused
    first.close()
    assert eventually(lambda: len(proxy.records("CANONICAL-PROXY-CN-CLOSE")) == 1)
    third, head, _ = connect(proxy.address, ECHO)
    assert head.status == 200
    for sock in (second, third):
        sock.close()


def test_role_limits_apply_on_top_of_the_global_ones(start_proxy, echo):
    proxy = start_proxy(config='allow_missing_role: true\nmax_concurrent_connect_tunnels: 10\n'
                               'role_limits:\n  "": {max_concurrent_connect_tunnels: 1}\n')
    held = connect(proxy.address, ECHO)[0]
    assert b"maximum concurrent connect tunnels exceeded" in exchange(
        proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode())
    held.close()


def test_limits_do_not_slow_anything_down_when_unset(start_proxy, echo):
    proxy = start_proxy()
    results = []

    def one():
        sock, head, _ = connect(proxy.address, ECHO)
        sock.close()
        results.append(head.status)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 30


def test_idle_tunnels_are_closed_and_busy_ones_kept(start_proxy, echo):
    proxy = start_proxy(config="idle_timeout: 600ms\n")
    idle = connect(proxy.address, ECHO)[0]
    busy = connect(proxy.address, ECHO)[0]
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        busy.sendall(b"ping")
        assert busy.recv(10) == b"ping"
        time.sleep(0.15)
    idle.settimeout(2)
    assert idle.recv(10) == b""  # closed by the proxy
    busy.sendall(b"still open")
    assert busy.recv(20) == b"still open"
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert [record["error"] for record in closes] == ["idle timeout"]
    for sock in (idle, busy):
        sock.close()


def test_idle_keep_alive_connections_are_closed(start_proxy):
    proxy = start_proxy(config="idle_timeout: 300ms\n")
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: p\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - started < 2


def test_stats_socket_lists_open_tunnels(start_proxy, echo, tmp_path):
    proxy = start_proxy("--stats-socket-dir", str(tmp_path), "--stats-socket-file-mode", "750")
    path = tmp_path / f"track-{proxy.process.pid}.sock"
    assert eventually(path.exists)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    sock = connect(proxy.address, ECHO)[0]
    sock.sendall(b"12345")
    assert sock.recv(10) == b"12345"

    def ask(target):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(f"GET {target} HTTP/1.1\r\nHost: stats\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return head, body

    head, body = ask("/")
    assert head.startswith(b"HTTP/1.1 200 OK")
    [tunnel] = json.loads(body)
    assert (tunnel["rhost"], tunnel["raddr"], tunnel["proxyType"]) == (ECHO, ECHO, "connect")
    assert (tunnel["bytesOut"], tunnel["bytesIn"], tunnel["role"]) == (5, 5, "")
    assert tunnel["secondsSinceLastActivity"] < 5 and tunnel["created"].endswith("Z")
    assert ask("/other")[0].startswith(b"HTTP/1.1 404")
    sock.close()
    assert eventually(lambda: json.loads(ask("/")[1]) == [])
    proxy.stop()
    assert not path.exists()
