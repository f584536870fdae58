"""Requests where Smokescreen's answer is not the obvious one, checked through a real proxy
(SPEC 3.5 "Details that clients and dashboards depend on")."""

import socket

import pytest
from .client import connect, eventually, exchange, read_head, read_until_closed
from .test_connect import address_deny, deny_bytes
from .test_metrics import samples, scrape

import netns


@pytest.mark.parametrize("target, reason", [
    ("origin.test", "missing port in address"),
    ("origin.test:", "missing port in address"),
    (f"[{netns.ORIGIN6}]", "missing port in address"),
    ("origin.test:99999", "invalid port number"),
    ("origin.test:65536", "invalid port number"),
])
def test_connect_port_problems_are_denied_with_a_407(start_proxy, echo, target, reason):
    proxy = start_proxy()
    answer = exchange(proxy.address, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert answer == deny_bytes(target, reason, "bad_port")
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["allow"], record["status_code"], record["decision_reason"]) == (False, 407, reason)
    assert echo.connections == 0


def test_absolute_form_port_past_65535_is_denied_and_the_connection_stays(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET http://origin.test:70000/hello HTTP/1.1\r\nHost: origin.test:70000\r\n\r\n")
        head, _ = read_head(sock)
        assert (head.status, head.reason) == (407, "Proxy Authentication Required")
        assert dict(head.headers)[b"X-Fastfog-Reason"] == b"bad_port"
        sock.sendall(b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        head, _ = read_head(sock)
        assert head.status == 200
    assert [request["target"] for request in http_origin.requests] == ["/hello"]


def test_port_zero_is_a_failed_dial(start_proxy):
    proxy = start_proxy()
    answer = exchange(proxy.address, b"CONNECT origin.test:0 HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad gateway\r\n")
    assert f"dial tcp {netns.ORIGIN}:0: connect: connection refused".encode() in answer


def test_userinfo_is_dropped_and_the_host_after_the_last_at_is_reached(start_proxy, http_origin):
    """``http://a@b/``: the destination is b, decided, classified and dialed as b; the
    userinfo never reaches the origin."""
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET http://user:secret@private.test@origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        head, _ = read_head(sock)
        assert head.status == 200
    request = http_origin.requests[0]
    assert request["target"] == "/hello"
    assert ("host", "origin.test") in request["headers"]
    assert not any("secret" in value or "user" in value for _, value in request["headers"])
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert record["requested_host"] == "origin.test"
    assert record["outbound_remote_addr"] == f"{netns.ORIGIN}:80"


def test_userinfo_cannot_hide_a_private_destination(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET http://origin.test@loopback.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        head, _ = read_head(sock)
    assert head.status == 407
    assert proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]["decision_reason"] == address_deny(
        "127.0.0.1", "Deny: Not Global Unicast")
    assert http_origin.requests == []


def test_http_upstream_proxy_is_classified_like_an_https_one(start_proxy, echo):
    proxy = start_proxy()
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n"
                                     b"X-Upstream-Https-Proxy: http://127.0.0.2:4750\r\n\r\n")
    reason = address_deny("127.0.0.2", "Deny: Not Global Unicast")
    assert answer == deny_bytes("origin.test:7", reason, "addr_not_global_unicast")
    assert echo.connections == 0


def test_self_connection_to_another_address_of_the_host(start_proxy, echo):
    """The proxy listens on one address; the host's other addresses at its port are itself too."""
    proxy = start_proxy()
    target = f"{netns.ORIGIN}:4750"
    answer = exchange(proxy.address, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert answer == deny_bytes(target, address_deny(netns.ORIGIN, "Deny: Self Connection"), "addr_self_connection")


def test_http10_request_with_transfer_encoding_gets_a_400_and_a_close(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"POST http://origin.test/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Transfer-Encoding in an HTTP/1.0 message" in answer
    assert http_origin.requests == []


def test_resolver_attempts_count_cache_hits_and_the_cache_is_counted(start_proxy, echo):
    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY)
    for _ in range(3):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    assert eventually(lambda: samples(scrape(netns.PROXY)[1]).get("resolver_attempts_total") == 3)
    found = samples(scrape(netns.PROXY)[1])
    assert (found["fastfog_dns_cache_hits"], found["fastfog_dns_cache_misses"]) == (2, 1)
    assert found["fastfog_dns_cache_entries"] == 1 and found["fastfog_dns_cache_bytes"] > 0


MITM_ACL = """
version: v1
services: []
default:
  action: enforce
  allowed_domains: [origin.test]
  mitm_domains:
    - domain: origin.test
      add_headers: {X-Partner-Key: secret}
"""


def test_connect_to_a_mitm_domain_without_a_mitm_ca_is_denied(start_proxy, echo, http_origin):
    """As Smokescreen without a MITM CA: never a tunnel that skips the interception asked for
    (the headers it would add, the requests it would log); plain HTTP to the domain is forwarded."""
    proxy = start_proxy(acl=MITM_ACL, config="allow_missing_role: true\n")
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
    reason = "ACLDecision specified MITM but Smokescreen doesn't have MITM enabled"
    assert answer == deny_bytes("origin.test:7", reason, "mitm_not_enabled")
    assert echo.connections == 0
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["allow"], record["decision_reason"]) == (False, reason)
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        head, _ = read_head(sock)
    assert head.status == 200
