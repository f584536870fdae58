"""The SNI check for CONNECT tunnels through a real ``fastfog serve`` (SPEC 5.4)."""

import time

import netns
import pytest
from support import client_hello

from .client import connect, eventually, read_until_closed


def through(proxy, target, first, split=False):
    """Send ``first`` into a new tunnel; what comes back before the tunnel closes or 1 s passes."""
    sock, head, _ = connect(proxy.address, target)
    with sock:
        assert head.status == 200
        if split:  # a ClientHello in two TCP segments
            sock.sendall(first[:40])
            time.sleep(0.1)
            sock.sendall(first[40:])
        else:
            sock.sendall(first)
        sock.settimeout(1)
        received = b""
        try:
            while len(received) < len(first):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


@pytest.mark.parametrize("mode", ["report", "enforce"])
def test_a_matching_server_name_passes(start_proxy, echo, mode):
    proxy = start_proxy(config=f"sni_check: {mode}\n")
    for name, split in (("origin.test", False), ("ORIGIN.test.", True)):
        hello = client_hello(name)
        assert through(proxy, "origin.test:7", hello, split) == hello
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=2)
    assert [record["tls_sni"] for record in closes] == ["origin.test", "ORIGIN.test."]
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
    assert {record["decision_reason"] for record in decisions} == {"Egress ACL is not configured"}


def test_enforce_closes_a_mismatch_before_the_hello_goes_upstream(start_proxy, echo):
    proxy = start_proxy(config="sni_check: enforce\n")
    assert through(proxy, "origin.test:7", client_hello("internal.example")) == b""
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (decision["allow"], decision["decision_reason"], decision["tls_sni"]) == (
        False, "tls server name does not match CONNECT host", "internal.example")
    assert echo.received == 0
    assert through(proxy, "origin.test:7", client_hello(None)) == b""  # no SNI for a named host


def test_report_lets_a_mismatch_through_and_says_so(start_proxy, echo):
    proxy = start_proxy(config="sni_check: report\n")
    hello = client_hello("internal.example")
    assert through(proxy, "origin.test:7", hello) == hello
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (decision["allow"], decision["decision_reason"], decision["enforce_would_deny"],
            decision["tls_sni"]) == (True, "tls server name does not match CONNECT host", True,
                                     "internal.example")


def test_ip_literal_hosts_are_compared_only_when_a_name_is_sent(start_proxy, echo):
    proxy = start_proxy(config="sni_check: enforce\n")
    hello = client_hello(None)
    assert through(proxy, f"{netns.ORIGIN}:7", hello) == hello
    assert through(proxy, f"{netns.ORIGIN}:7", client_hello("origin.test")) == b""


def test_plain_bytes_pass_to_port_80_and_are_closed_elsewhere_under_enforce(start_proxy, echo, http_origin):
    proxy = start_proxy(config="sni_check: enforce\n")
    request = b"GET /hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n"
    assert through(proxy, "origin.test:80", request).startswith(b"HTTP/1.1 200 ")
    assert through(proxy, "origin.test:7", b"plain text\n") == b""
    reasons = [record["decision_reason"] for record in proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)]
    assert reasons == ["tunnel did not start with a TLS ClientHello"] * 2
    report = start_proxy(config="sni_check: report\n", port=4751)
    assert through(report, "origin.test:7", b"plain text\n") == b"plain text\n"


def test_a_silent_client_is_decided_after_the_wait(start_proxy, echo):
    proxy = start_proxy(config="sni_check: enforce\n")
    sock, head, _ = connect(proxy.address, "origin.test:7")
    with sock:
        started = time.monotonic()
        assert head.status == 200 and read_until_closed(sock) == b""
        assert 1.5 < time.monotonic() - started < 5
    assert eventually(lambda: proxy.records("CANONICAL-PROXY-DECISION"))
