"""Resolution through the stub DNS server: the configured timeout is the one applied, and one
question left unanswered does not throw away the other's answer."""

import time

import pytest
from .client import connect, exchange

import netns


@pytest.mark.parametrize("timeout", [1.0, 2.0])
def test_the_whole_dns_timeout_is_spent(start_proxy, timeout):
    proxy = start_proxy("--dns-timeout", f"{timeout}s")
    started = time.monotonic()
    answer = exchange(proxy.address, b"CONNECT silent.test:7 HTTP/1.1\r\n\r\n")
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 504 Gateway timeout\r\n")
    assert timeout - 0.05 <= elapsed <= timeout + 0.5, elapsed


@pytest.mark.parametrize("name, address", [("slow-aaaa.test", netns.ORIGIN), ("slow-a.test", f"[{netns.ORIGIN6}]")])
def test_an_unanswered_question_keeps_the_other_answer(start_proxy, echo, name, address):
    proxy = start_proxy("--dns-timeout", "500ms")
    sock, head, _ = connect(proxy.address, f"{name}:7")
    with sock:
        assert head.status == 200
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert record["outbound_remote_addr"] == f"{address}:7"
