"""Plain-HTTP forwarding through a real ``fastfog serve`` process, to an h11 origin."""

import os
import signal
import socket
import threading
import time
import weakref

import pytest
from .client import eventually, exchange, read_head, read_until_closed

import netns
from fastfog.chunked import ChunkedBody

from .conftest import ThreadedOrigin

ORIGIN = netns.ORIGIN


def request(target, method="GET", headers=b"", body=b"", version="1.1"):
    return (f"{method} {target} HTTP/{version}\r\nHost: ignored.example\r\n".encode() + headers +
            (f"Content-Length: {len(body)}\r\n".encode() if body else b"") + b"\r\n" + body)


_read_ahead = weakref.WeakKeyDictionary()  # bytes of the next response already read, per socket


def read_response(sock, method="GET"):
    """One response: (head, body) read by its framing; what follows it is kept for the next call
    (pipelined responses can arrive in one read)."""
    head, rest = read_head(sock, already=_read_ahead.pop(sock, b""))
    if method == "HEAD" or head.status in (204, 304):
        body, extra = b"", rest
    elif head.chunked:
        body, scanner = rest, ChunkedBody()
        while True:
            taken = scanner.feed(body)
            if scanner.done:
                body, extra = body[:taken], body[taken:]
                break
            body += sock.recv(65536)
    elif head.content_length is not None:
        while len(rest) < head.content_length:
            rest += sock.recv(65536)
        body, extra = rest[:head.content_length], rest[head.content_length:]
    else:
        return head, read_until_closed(sock, rest)
    if extra:
        _read_ahead[sock] = extra
    return head, body


def headers_of(head):
    return {name.decode().lower(): value.decode() for name, value in head.headers}


def test_get_is_forwarded_and_logged(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hello?x=1", headers=b"X-Smokescreen-Trace-ID: trace-42\r\n"))
        head, body = read_response(sock)
    assert (head.status, body) == (200, b"hello from the origin")
    assert http_origin.requests[0]["target"] == "/hello?x=1"
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["proxy_type"], record["allow"], record["status_code"], record["trace_id"]) == (
        "http", True, 200, "trace-42")
    assert (record["requested_host"], record["content_length"]) == (ORIGIN, 21)
    assert record["outbound_remote_addr"] == f"{ORIGIN}:80" and "conn_establish_time_ms" in record


def test_hop_by_hop_proxy_and_smokescreen_headers_are_removed(start_proxy, http_origin):
    proxy = start_proxy()
    sent = (b"Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: only for the proxy\r\nKeep-Alive: timeout=5\r\n"
            b"TE: trailers\r\nUpgrade: websocket\r\nX-Smokescreen-Role: admin\r\n"
            b"X-Smokescreen-Trace-ID: t\r\nX-Kept: yes\r\nAccept: */*\r\n")
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request("http://origin.test/hello", headers=sent))
        head, _ = read_response(sock)
        assert head.status == 200
    seen = http_origin.requests[0]["headers"]
    names = [name.lower() for name, _ in seen]
    assert names == ["host", "x-kept", "accept"]  # HTTP/1.1 upstream connections stay open for reuse
    assert dict(seen)["host"] == "origin.test"


def test_response_smokescreen_error_header_is_removed(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/smokescreen-error"))
        head, body = read_response(sock)
    assert head.status == 200 and "x-smokescreen-error" not in headers_of(head)


def test_keep_alive_with_each_request_decided_on_its_own(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[0].status == 200
        sock.sendall(request("http://private.test/hello"))
        head, body = read_response(sock)
        assert (head.status, head.reason) == (407, "Proxy Authentication Required")
        assert body == (b"Egress proxying is denied to host 'private.test': no valid IP found among resolved "
                        b"addresses - 10.0.0.1 denied by rule 'Deny: Private Range'. .\n")
        assert headers_of(head)["x-fastfog-reason"] == "addr_private"
        sock.sendall(request(f"http://{ORIGIN}/chunked"))
        head, body = read_response(sock)
        assert (head.status, body) == (200, b"b\r\nchunk one, \r\n9\r\nchunk two\r\n0\r\n\r\n")
        sock.sendall(request(f"http://{ORIGIN}/empty"))
        assert read_response(sock)[0].status == 204
        sock.sendall(request(f"http://{ORIGIN}/hello", method="HEAD"))
        head, body = read_response(sock, "HEAD")
        assert (head.status, head.content_length, body) == (200, 21, b"")
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[1] == b"hello from the origin"
    assert len(http_origin.requests) == 5
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=6)
    assert [record["allow"] for record in decisions] == [True, False, True, True, True, True]


def test_a_kept_alive_connection_can_go_on_with_a_tunnel(start_proxy, http_origin, echo):
    """The client socket waited for heads on the proxy's poller; the tunnel's relay takes it from there."""
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request(f"http://{ORIGIN}/hello"))
            assert read_response(sock)[1] == b"hello from the origin"
        time.sleep(0.1)  # the proxy is now waiting for the next head
        sock.sendall(f"CONNECT {ORIGIN}:7 HTTP/1.1\r\n\r\n".encode())
        head, rest = read_head(sock)
        assert head.status == 200 and rest == b""
        sock.sendall(b"through the tunnel")
        assert sock.recv(100) == b"through the tunnel"
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"<EOF>"  # the echo origin saw the half-close
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert closes[0]["bytes_out"] == len(b"through the tunnel")


def test_pipelined_requests_are_answered_in_order(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/echo", method="POST", body=b"first") +
                     request(f"http://{ORIGIN}/echo", method="POST", body=b"second"))
        assert read_response(sock)[1] == b"first"
        assert read_response(sock)[1] == b"second"


def test_hundreds_of_pipelined_requests_allowed_and_denied(start_proxy, http_origin):
    proxy = start_proxy()
    count = 400
    allowed = lambda index: index >= 300  # noqa: E731  (300 denials in a row, answered from one read)
    with socket.create_connection(proxy.address, timeout=20) as sock:
        sock.sendall(b"".join(
            request(f"http://{ORIGIN}/echo", method="POST", body=b"%d" % index) if allowed(index)
            else request("http://private.test/") for index in range(count)))
        for index in range(count):
            head, body = read_response(sock)
            assert (head.status, body if allowed(index) else b"") == (
                (200, b"%d" % index) if allowed(index) else (407, b""))
    assert len(http_origin.requests) == 100
    assert not [line for line in proxy.lines if "unexpected error" in line]


def test_request_bodies_by_length_and_chunked(start_proxy, http_origin):
    proxy = start_proxy()
    large = os.urandom(3 << 20)
    chunked = (b"Transfer-Encoding: chunked\r\n\r\n" + b"5\r\nhello\r\n" + b"6;ext=1\r\n world\r\n" +
               b"0\r\nX-Trailer: t\r\n\r\n")
    with socket.create_connection(proxy.address, timeout=30) as sock:
        sock.sendall(request(f"http://{ORIGIN}/echo", method="PUT", body=large))
        assert read_response(sock)[1] == large
        sock.sendall(f"POST http://{ORIGIN}/echo HTTP/1.1\r\nHost: x\r\n".encode() + chunked)
        head, body = read_response(sock)
        assert body == b"hello world"
    assert http_origin.requests[1]["body"] == b"hello world"


def test_expect_100_continue_is_answered_before_the_body(start_proxy, http_origin):
    """As a client that waits for 100 Continue does (curl, .NET): head first, body only after."""
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(f"POST http://{ORIGIN}/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n"
                     "Content-Length: 5\r\n\r\n".encode())
        interim, rest = read_head(sock)  # within the socket timeout: no waiting for the client's own
        assert (interim.status, rest) == (100, b"")
        sock.sendall(b"hello")
        head, body = read_response(sock)
        assert (head.status, body) == (200, b"hello")
        denied = request("http://private.test/", method="POST", headers=b"Expect: 100-continue\r\n", body=b"x")
        sock.sendall(denied[:-1])  # a denied request gets its final answer, never a 100
        assert read_head(sock)[0].status == 407
    seen = dict((name.lower(), value) for name, value in http_origin.requests[0]["headers"])
    assert "expect" not in seen  # answered here; the origin gets the body at once


def test_close_delimited_response_closes_the_client_connection(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/close", version="1.0",
                             headers=b"Connection: keep-alive\r\n"))
        head, body = read_response(sock)
        assert (head.status, body, headers_of(head)["connection"]) == (200, b"until the end", "close")


def test_a_client_that_half_closes_after_its_request_gets_the_response_then_the_close(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        sock.shutdown(socket.SHUT_WR)
        head, body = read_response(sock)
        assert (head.status, body) == (200, b"hello from the origin")
        assert sock.recv(100) == b""  # its end of stream came with the request: seen, not waited for


def test_http10_keep_alive(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request(f"http://{ORIGIN}/hello", version="1.0", headers=b"Connection: keep-alive\r\n"))
            head, body = read_response(sock)
            assert (head.version, body, headers_of(head)["connection"]) == ("1.1", b"hello from the origin",
                                                                           "keep-alive")


def test_deny_with_a_body_closes_the_connection(start_proxy, http_origin):
    proxy = start_proxy()
    answer = exchange(proxy.address, request("http://loopback.test/echo", method="POST", body=b"x" * 1000))
    assert answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert not eventually(lambda: http_origin.connections > 0, timeout=0.2)  # a deny opens no connection


@pytest.mark.parametrize("target, status", [
    ("http://nx.test/", 502),
    (f"http://{ORIGIN}:1/", 502),
])
def test_errors_keep_the_connection_usable(start_proxy, http_origin, target, status):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(target))
        assert read_response(sock)[0].status == status
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[0].status == 200


def test_a_failed_dial_for_a_request_with_a_body_closes_the_connection(start_proxy, http_origin):
    """The body was never read: the 502 says Connection: close, and the connection ends."""
    proxy = start_proxy()
    answer = exchange(proxy.address, request(f"http://{ORIGIN}:1/", method="POST", body=b"x" * 1000))
    assert answer.startswith(b"HTTP/1.1 502 Bad gateway\r\n")
    assert b"\r\nConnection: close\r\n" in answer and b"connect: connection refused" in answer
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["status_code"], record["allow"]) == (502, True)


def test_https_urls_are_not_forwarded(start_proxy):
    proxy = start_proxy()
    answer = exchange(proxy.address, request(f"https://{ORIGIN}/"))
    assert answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n")


def test_upstream_that_is_not_http_gets_502(start_proxy, echo):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}:7/"))  # the echo server sends our request back
        head, body = read_response(sock)
    assert head.status == 502
    assert body.startswith(b"Failed to read response from remote host: ")


def test_an_upstream_that_hangs_up_without_answering_gets_502(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hangup"))
        head, body = read_response(sock)
    assert head.status == 502
    assert body.startswith(b"Failed to read response from remote host: connection closed before a response")
    [record] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (record["allow"], record["status_code"]) == (True, 502)
    assert len(http_origin.requests) == 1  # a fresh connection: not sent again


def test_sigterm_lets_a_forwarded_request_finish(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as idle, \
            socket.create_connection(proxy.address, timeout=10) as sock:
        idle.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(idle)[0].status == 200  # then idle between requests
        sock.sendall(request(f"http://{ORIGIN}/slow"))
        head, rest = read_head(sock)
        proxy.process.send_signal(signal.SIGTERM)
        assert idle.recv(100) == b""  # an idle keep-alive connection is closed at once
        assert read_until_closed(sock, rest) == b"1234567890"  # the request in flight finishes
    assert proxy.process.wait(10) == 0


def test_upstream_connections_are_reused_per_address(start_proxy, http_origin):
    proxy = start_proxy()
    for _ in range(3):
        with socket.create_connection(proxy.address, timeout=10) as sock:
            for _ in range(3):
                sock.sendall(request(f"http://{ORIGIN}/hello"))
                assert read_response(sock)[1] == b"hello from the origin"
    assert len(http_origin.requests) == 9 and http_origin.connections == 1
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=9)
    assert [record["allow"] for record in decisions] == [True] * 9


def test_a_pooled_connection_the_server_closed_is_replaced(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[0].status == 200
        http_origin.drop_connections()
        assert eventually(lambda: not http_origin.writers)
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[1] == b"hello from the origin"
    assert http_origin.connections == 2


def test_http10_requests_are_not_pooled(start_proxy, http_origin):
    proxy = start_proxy()
    for _ in range(2):
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(request(f"http://{ORIGIN}/hello", version="1.0"))
            assert read_response(sock)[0].status == 200
    assert http_origin.connections == 2


def test_read_timeout_bounds_a_trickled_request_body(start_proxy, http_origin):
    proxy = start_proxy(config="read_timeout: 400ms\n")
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(f"POST http://{ORIGIN}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".encode())
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed: the body never completed in time
        assert time.monotonic() - started < 3
    assert eventually(lambda: any("forwarded request timed out" in line for line in proxy.lines))


def test_write_timeout_bounds_a_slow_response(start_proxy, http_origin):
    proxy = start_proxy(config="write_timeout: 500ms\n")
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(request(f"http://{ORIGIN}/slow"))
        head, rest = read_head(sock)
        assert head.status == 200 and head.content_length == 10
        assert read_until_closed(sock, rest) == b"12345"  # cut off at the deadline


def test_a_client_that_hangs_up_mid_response_is_not_retried(start_proxy, http_origin):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=5) as sock:
        sock.sendall(request(f"http://{ORIGIN}/hello"))
        assert read_response(sock)[0].status == 200
    with socket.create_connection(proxy.address, timeout=5) as sock:  # the pooled connection is reused...
        sock.sendall(request(f"http://{ORIGIN}/slow", method="DELETE"))
        read_head(sock)  # ...and the client leaves before the body ends
    time.sleep(2.5)
    assert [entry["method"] for entry in http_origin.requests] == ["GET", "DELETE"]


class HangUpOnSecondRequest(ThreadedOrigin):
    """An origin that answers a connection's first request (kept alive), then closes the
    connection when its second request arrives, without a byte of answer: a pooled connection
    found dead when used."""

    requests = 0

    def handle(self, conn):
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(65536)  # the next request: hang up unanswered

    def close(self):
        self.listener.close()


def test_a_dead_pooled_connection_is_dialed_again_without_admitting_the_request_again(start_proxy):
    origin = HangUpOnSecondRequest(netns.ORIGIN, 8080)
    # Two requests may be admitted; admitting the second one twice would make it a 429.
    proxy = start_proxy("--max-request-rate", "0.01", "--max-request-burst", "2")
    try:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            for _ in range(2):
                sock.sendall(request("http://origin.test:8080/"))
                head, body = read_response(sock)
                assert (head.status, body) == (200, b"ok")
        assert (origin.connections, origin.requests) == (2, 2)
        decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
        assert [record["status_code"] for record in decisions] == [200, 200]
        assert len(proxy.records("CANONICAL-PROXY-DECISION")) == 2  # counted once each
    finally:
        origin.close()
