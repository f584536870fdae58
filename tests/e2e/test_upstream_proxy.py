"""CONNECT through another HTTPS proxy named by X-Upstream-Https-Proxy (SPEC section 3.4)."""

import base64

import pytest
from .client import connect, exchange

import netns

HEADER = b"X-Upstream-Https-Proxy: https://webhooks:pa%3Ass@upstream-proxy.test:8443\r\n"


@pytest.fixture
def chained_proxy(start_proxy, upstream_pki):
    def start(*flags, **options):
        return start_proxy(*flags, env={"SSL_CERT_FILE": upstream_pki[1]}, **options)
    return start


def test_tunnel_through_the_upstream_proxy(chained_proxy, upstream_proxy, echo):
    proxy = chained_proxy()
    sock, head, rest = connect(proxy.address, "origin.test:7", headers=HEADER, first_bytes=b"first ")
    with sock:
        assert head.status == 200 and head.version == "1.0"
        sock.sendall(b"through two proxies")
        received = rest
        while len(received) < 25:
            received += sock.recv(100)
        assert received == b"first through two proxies"
    # (A TLS leg cannot half-close, so the client closes outright: see reference/buffered.py.)
    target, auth = upstream_proxy.requests[0]
    assert target == "origin.test:7"
    assert auth == "Basic " + base64.b64encode(b"webhooks:pa:ss").decode()
    decision = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert decision["outbound_remote_addr"] == f"{netns.UPSTREAM_PROXY}:8443" and decision["allow"]
    close = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)[0]
    assert (close["bytes_out"], close["bytes_in"]) == (25, 25)


ACL = """
version: v1
services: []
default:
  action: open
  allowed_external_proxies: [upstream-proxy.test, private-proxy.test]
"""


def test_acl_lists_allowed_upstream_proxies(chained_proxy, upstream_proxy, echo):
    proxy = chained_proxy(acl=ACL, config="allow_missing_role: true\n")
    sock, head, _ = connect(proxy.address, "origin.test:7", headers=HEADER)
    sock.close()
    assert head.status == 200
    other = b"X-Upstream-Https-Proxy: https://elsewhere.example:443\r\n"
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n" + other + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 407 Request rejected by proxy\r\n")
    assert b"connect proxy host not allowed in rule" in answer
    unparsable = b"X-Upstream-Https-Proxy: not a url\r\n"
    assert b"connect proxy host not allowed in rule" in exchange(
        proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n" + unparsable + b"\r\n")


def test_upstream_proxy_address_is_classified_like_a_destination(chained_proxy, upstream_proxy):
    proxy = chained_proxy(acl=ACL, config="allow_missing_role: true\n")
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n"
                                     b"X-Upstream-Https-Proxy: https://private-proxy.test:8443\r\n\r\n")
    assert (b"no valid IP found among resolved addresses - 10.0.0.2 denied by rule 'Deny: Private Range'"
            in answer)
    assert upstream_proxy.requests == []


def test_upstream_proxy_refusal_is_a_502(chained_proxy, upstream_proxy):
    upstream_proxy.refuse = True
    proxy = chained_proxy()
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n" + HEADER + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad gateway\r\n")
    assert f"upstream proxy {netns.UPSTREAM_PROXY}:8443 answered 403 Forbidden".encode() in answer


def test_untrusted_upstream_certificate_is_a_502(start_proxy, upstream_proxy):
    proxy = start_proxy()  # without the test CA
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n" + HEADER + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad gateway\r\n") and b"CERTIFICATE_VERIFY_FAILED" in answer
    assert upstream_proxy.requests == []


def test_unparsable_header_without_an_acl_is_a_400(chained_proxy):
    proxy = chained_proxy()
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\nX-Upstream-Https-Proxy: ftp://x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_tunnel_through_an_http_upstream_proxy(start_proxy, background, echo):
    """``http://`` names a proxy spoken to in the clear (as Smokescreen accepts it)."""
    from .conftest import UpstreamProxy

    plain = UpstreamProxy(background, netns.UPSTREAM_PROXY, 8080, None)
    try:
        proxy = start_proxy()
        sock, head, _ = connect(proxy.address, "origin.test:7",
                                headers=b"X-Upstream-Https-Proxy: http://upstream-proxy.test:8080\r\n")
        with sock:
            assert head.status == 200
            sock.sendall(b"in the clear")
            assert sock.recv(100) == b"in the clear"
        assert plain.requests == [("origin.test:7", None)]
    finally:
        background.loop.call_soon_threadsafe(plain.server.close)
