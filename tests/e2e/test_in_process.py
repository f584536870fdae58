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
