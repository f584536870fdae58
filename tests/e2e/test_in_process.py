"""The proxy embedded in the test process (``fastfog.server.serve``); CI runs it on both cores."""

import socket

from .client import connect, exchange

import netns


def test_embedded_proxy_tunnels_and_denies(in_process_proxy, echo):
    proxy = in_process_proxy()
    sock, head, _ = connect(proxy.address, f"{netns.ORIGIN}:7")
    with sock:
        assert head.status == 200
        sock.sendall(b"in process")
        assert sock.recv(100) == b"in process"
        sock.shutdown(socket.SHUT_WR)
    assert b"Deny: Private Range" in exchange(proxy.address, b"CONNECT private.test:7 HTTP/1.1\r\n\r\n")
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
    assert [record["allow"] for record in decisions] == [True, False]
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert closes[0]["bytes_out"] == 10


def test_an_unexpected_error_is_a_500_for_that_request_only(in_process_proxy, echo, monkeypatch):
    from fastfog.classify import AddressPolicy

    proxy = in_process_proxy()
    original = AddressPolicy.pick

    def pick(self, addresses, port):
        if port == 9:
            raise RuntimeError("a bug in one request's path")
        return original(self, addresses, port)

    monkeypatch.setattr(AddressPolicy, "pick", pick)
    answer = exchange(proxy.address, f"CONNECT {netns.ORIGIN}:9 HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 500 Internal server error\r\n")
    assert b"An unexpected error occurred: RuntimeError: a bug in one request's path" in answer
    sock, head, _ = connect(proxy.address, f"{netns.ORIGIN}:7")  # everyone else is served
    sock.close()
    assert head.status == 200
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["status_code"], record["level"]) == (500, "error")


def test_a_bug_met_once_the_upstream_is_dialed_is_a_500_for_that_request_only(in_process_proxy, echo, monkeypatch):
    """After the dial, in the compiled lane as in Opening: the upstream is closed, the request's
    concurrency released, and it is answered 500; the next client is served."""
    from fastfog.metrics import Metrics

    proxy = in_process_proxy(max_concurrent_requests=1)
    original = Metrics.incr
    broken = []

    def incr(self, name, labels=(), value=1):
        if name == "cn.atpt.total" and not broken:
            broken.append(name)
            raise RuntimeError("a bug after one dial")
        return original(self, name, labels, value)

    monkeypatch.setattr(Metrics, "incr", incr)
    answer = exchange(proxy.address, f"CONNECT {netns.ORIGIN}:7 HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 500 Internal server error\r\n")
    assert b"RuntimeError: a bug after one dial" in answer
    sock, head, _ = connect(proxy.address, f"{netns.ORIGIN}:7")  # the one concurrent request was released
    with sock:
        assert head.status == 200
        sock.sendall(b"after")
        assert sock.recv(100) == b"after"
    records = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
    assert [record["status_code"] for record in records[:1]] == [500]
    assert records[1]["allow"] is True
