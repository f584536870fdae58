"""The head parser, run against both implementations (the ``impl`` fixture)."""

import os
import random

import pytest
from support import outcome

from fastfog.errors import HeadError


def parse(impl, data, **limits):
    return impl.parse_request_head(data, **limits)


# --- request targets ---------------------------------------------------------

@pytest.mark.parametrize("target, form, scheme, host, port, authority, path", [
    ("example.com:443", "authority", None, "example.com", 443, "example.com:443", None),
    ("EXAMPLE.com.:8443", "authority", None, "EXAMPLE.com.", 8443, "EXAMPLE.com.:8443", None),
    ("[2001:db8::1]:443", "authority", None, "2001:db8::1", 443, "[2001:db8::1]:443", None),
    ("[::ffff:192.0.2.1]:80", "authority", None, "::ffff:192.0.2.1", 80, "[::ffff:192.0.2.1]:80", None),
    ("203.0.113.7:65535", "authority", None, "203.0.113.7", 65535, "203.0.113.7:65535", None),
    ("0x7f.1:80", "authority", None, "0x7f.1", 80, "0x7f.1:80", None),
    ("under_score.example:1", "authority", None, "under_score.example", 1, "under_score.example:1", None),
])
def test_connect_authority_form(impl, target, form, scheme, host, port, authority, path):
    head = parse(impl, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert (head.form, head.scheme, head.host, head.port, head.authority, head.path) == (
        form, scheme, host, port, authority, path)
    assert head.method == "CONNECT" and head.target == target and head.version == "1.1"


@pytest.mark.parametrize("target, scheme, host, port, authority, path", [
    ("http://example.com/a/b?c=d", "http", "example.com", 80, "example.com", "/a/b?c=d"),
    ("http://example.com", "http", "example.com", 80, "example.com", "/"),
    ("http://example.com?q", "http", "example.com", 80, "example.com", "/?q"),
    ("HTTP://Example.COM:8080/x", "http", "Example.COM", 8080, "Example.COM:8080", "/x"),
    ("https://example.com/", "https", "example.com", 443, "example.com", "/"),
    ("http://[2001:db8::2]:81/p", "http", "2001:db8::2", 81, "[2001:db8::2]:81", "/p"),
    ("http://[2001:db8::2]/", "http", "2001:db8::2", 80, "[2001:db8::2]", "/"),
    ("http://h/p#frag", "http", "h", 80, "h", "/p#frag"),
])
def test_absolute_form(impl, target, scheme, host, port, authority, path):
    head = parse(impl, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (head.form, head.scheme, head.host, head.port, head.authority, head.path) == (
        "absolute", scheme, host, port, authority, path)


@pytest.mark.parametrize("target, host, port", [
    (b"example.com", "example.com", None),  # the proxy denies it: missing port
    (b"example.com:", "example.com", None),
    (b"[2001:db8::1]", "2001:db8::1", None),
    (b"example.com:0", "example.com", 0),  # its dial fails, as Smokescreen's
    (b"example.com:65536", "example.com", 65536),  # the proxy denies it: invalid port number
    (b"example.com:000443", "example.com", 443),
    (b"example.com:9999999999", "example.com", 9999999999),
])
def test_connect_ports_are_reported_as_written(impl, target, host, port):
    head = parse(impl, b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
    assert (head.host, head.port, head.authority) == (host, port, target.decode())


@pytest.mark.parametrize("target, host, port, authority", [
    (b"http://user:pw@example.com/p", "example.com", 80, "example.com"),
    (b"http://example.com@evil.test:81/p", "evil.test", 81, "evil.test:81"),
    (b"http://a@b@c.test/p", "c.test", 80, "c.test"),
    (b"http://example.com:/p", "example.com", 80, "example.com:"),
])
def test_absolute_form_authority_follows_the_last_at(impl, target, host, port, authority):
    head = parse(impl, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (head.host, head.port, head.authority, head.path) == (host, port, authority, "/p")


def test_http10_with_transfer_encoding_is_faulty_framing(impl):
    """RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding is not to be trusted."""
    with pytest.raises(HeadError, match="^Transfer-Encoding in an HTTP/1.0 message$"):
        parse(impl, b"POST http://h/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HeadError, match="^Transfer-Encoding in an HTTP/1.0 message$"):
        impl.parse_response_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_origin_and_asterisk_forms(impl):
    head = parse(impl, b"GET /healthcheck HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert (head.form, head.path, head.host, head.port) == ("origin", "/healthcheck", None, None)
    head = parse(impl, b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert (head.form, head.path, head.host) == ("asterisk", None, None)


@pytest.mark.parametrize("line, reason", [
    (b"CONNECT example.com:443x HTTP/1.1", "invalid port"),
    (b"CONNECT example.com:-1 HTTP/1.1", "invalid port"),
    (b"CONNECT example.com:12345678901 HTTP/1.1", "invalid port"),
    (b"GET http://u@example.com:44x/ HTTP/1.1", "invalid port"),
    (b"GET http://user@/ HTTP/1.1", "missing host"),
    (b"CONNECT :443 HTTP/1.1", "missing host"),
    (b"CONNECT /x HTTP/1.1", "CONNECT target must be host:port"),
    (b"CONNECT [2001:db8::1]443 HTTP/1.1", "invalid host"),
    (b"CONNECT [2001:db8::1:443 HTTP/1.1", "invalid host"),
    (b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1", "invalid IPv6 address"),
    (b"CONNECT [1.2.3.4]:443 HTTP/1.1", "invalid IPv6 address"),
    (b"CONNECT []:443 HTTP/1.1", "invalid IPv6 address"),
    (b"CONNECT exa%6dple.com:443 HTTP/1.1", "invalid host"),
    (b"CONNECT exa*mple.com:443 HTTP/1.1", "invalid host"),
    (b"CONNECT " + b"a" * 256 + b":443 HTTP/1.1", "host too long"),
    (b"GET ftp://example.com/ HTTP/1.1", "unsupported URL scheme"),
    (b"GET ://example.com/ HTTP/1.1", "invalid request target"),
    (b"GET 1http://example.com/ HTTP/1.1", "invalid request target"),
    (b"GET example.com/ HTTP/1.1", "invalid request target"),
    (b"GET * HTTP/1.1", "invalid request target"),
    (b"GET http:///path HTTP/1.1", "missing host"),
    (b"GET /caf\xc3\xa9 HTTP/1.1", "invalid request target"),
    (b"GET /a\x00b HTTP/1.1", "invalid request target"),
    (b"GET  / HTTP/1.1", "invalid request line"),
    (b"GET / HTTP/1.1 extra", "unsupported HTTP version"),
    (b" GET / HTTP/1.1", "invalid request line"),
    (b"GET /", "invalid request line"),
    (b"G(T / HTTP/1.1", "invalid method"),
    (b"GET / HTTP/2.0", "unsupported HTTP version"),
    (b"GET / HTTP/1.x", "unsupported HTTP version"),
    (b"GET / http/1.1", "unsupported HTTP version"),
])
def test_bad_request_lines(impl, line, reason):
    with pytest.raises(HeadError, match=f"^{reason}$"):
        parse(impl, line + b"\r\nHost: x\r\n\r\n")


def test_error_is_a_value_error(impl):
    with pytest.raises(ValueError):
        parse(impl, b"GET / HTTP/9.9\r\n\r\n")


# --- headers -------------------------------------------------------------------

def test_headers_kept_as_received(impl):
    head = parse(impl, b"GET http://h/ HTTP/1.1\r\nHost:  h \r\nX-Odd:\t a \t b \t\r\n"
                       b"Empty:\r\nObs: caf\xc3\xa9\r\nHOST-like: 1\r\n\r\n")
    assert head.headers == [(b"Host", b"h"), (b"X-Odd", b"a \t b"), (b"Empty", b""),
                            (b"Obs", b"caf\xc3\xa9"), (b"HOST-like", b"1")]


@pytest.mark.parametrize("header, reason", [
    (b" folded", "obs-fold not allowed"),
    (b"\tfolded", "obs-fold not allowed"),
    (b"NoColon", "invalid header line"),
    (b"Bad Name: v", "invalid header name"),
    (b"Bad\x7fName: v", "invalid header name"),
    (b": v", "invalid header name"),
    (b"X: a\x00b", "invalid header value"),
    (b"X: a\rb", "invalid header value"),
    (b"X: a\x1bb", "invalid header value"),
    (b"X: \x7f", "invalid header value"),
    (b"Content-Length: 5\r\nContent-Length: 6", "conflicting Content-Length"),
    (b"Content-Length: 5, 6", "conflicting Content-Length"),
    (b"Content-Length: -1", "invalid Content-Length"),
    (b"Content-Length: 0x10", "invalid Content-Length"),
    (b"Content-Length:", "invalid Content-Length"),
    (b"Content-Length: 5,", "invalid Content-Length"),
    (b"Content-Length: 1234567890123456789", "invalid Content-Length"),
    (b"Transfer-Encoding: gzip, chunked", "unsupported Transfer-Encoding"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "multiple Transfer-Encoding headers"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5", "both Transfer-Encoding and Content-Length"),
    (b"Content-Length: 5\r\nTransfer-Encoding: CHUNKED", "both Transfer-Encoding and Content-Length"),
    (b"Host: b", "multiple Host headers"),
])
def test_bad_headers(impl, header, reason):
    with pytest.raises(HeadError, match=f"^{reason}$"):
        parse(impl, b"POST http://h/ HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n")


def test_obs_fold_on_first_header_line(impl):
    with pytest.raises(HeadError, match="^obs-fold not allowed$"):
        parse(impl, b"GET / HTTP/1.1\r\n Host: a\r\n\r\n")


@pytest.mark.parametrize("headers, length, chunked", [
    (b"Content-Length: 12", 12, False),
    (b"content-length: 007", 7, False),
    (b"Content-Length: 5 , 5\r\nContent-Length: 5", 5, False),
    (b"Transfer-Encoding:  Chunked ", None, True),
    (b"X: y", None, False),
    (b"Content-Length: 999999999999999999", 999999999999999999, False),
])
def test_framing(impl, headers, length, chunked):
    head = parse(impl, b"POST http://h/ HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n\r\n")
    assert (head.content_length, head.chunked) == (length, chunked)


@pytest.mark.parametrize("version, connection, keep_alive", [
    ("1.1", None, True),
    ("1.1", "close", False),
    ("1.1", "Upgrade, CLOSE", False),
    ("1.1", "keep-alive", True),
    ("1.0", None, False),
    ("1.0", "Keep-Alive", True),
    ("1.0", "keep-alive, close", False),
])
def test_keep_alive(impl, version, connection, keep_alive):
    extra = f"Connection: {connection}\r\n" if connection else ""
    head = parse(impl, f"GET http://h/ HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode())
    assert head.keep_alive is keep_alive


def test_host_header_rules(impl):
    with pytest.raises(HeadError, match="^missing Host header$"):
        parse(impl, b"GET http://h/ HTTP/1.1\r\n\r\n")
    assert parse(impl, b"GET http://h/ HTTP/1.0\r\n\r\n").host == "h"
    assert parse(impl, b"CONNECT h:443 HTTP/1.1\r\n\r\n").host == "h"


# --- completeness, offsets, limits -------------------------------------------

def test_head_end_and_trailing_bytes(impl):
    data = b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01 tls bytes"
    head = parse(impl, data)
    assert data[head.head_end:] == b"\x16\x03\x01 tls bytes"


def test_leading_empty_lines_skipped(impl):
    data = b"\r\n\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse(impl, data).head_end == len(data)
    assert parse(impl, b"\r\n\r") is None


def test_every_prefix_of_a_valid_head_is_incomplete(impl):
    data = (b"POST http://example.com:8080/submit?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n"
            b"Content-Length: 4\r\nConnection: keep-alive\r\n\r\nbody")
    head_end = len(data) - 4
    for cut in range(head_end):
        assert parse(impl, data[:cut]) is None, cut
    for cut in range(head_end, len(data) + 1):
        assert parse(impl, data[:cut]).head_end == head_end


def test_bare_lf_rejected_without_waiting_for_more(impl):
    with pytest.raises(HeadError, match="^bare LF in head$"):
        parse(impl, b"GET / HTTP/1.1\n")
    with pytest.raises(HeadError, match="^bare LF in head$"):
        parse(impl, b"GET / HTTP/1.1\r\nHost: h\n")
    with pytest.raises(HeadError, match="^bare LF in head$"):
        parse(impl, b"\n")


def test_errors_in_complete_lines_surface_before_the_head_ends(impl):
    with pytest.raises(HeadError, match="^invalid method$"):
        parse(impl, b"G@T / HTTP/1.1\r\n")
    with pytest.raises(HeadError, match="^invalid header name$"):
        parse(impl, b"GET / HTTP/1.1\r\nBad Name: x\r\nHost")


def test_head_size_limit(impl):
    line = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n"
    head = line + b"X: " + b"a" * 100 + b"\r\n\r\n"
    assert parse(impl, head, max_head_size=len(head)).head_end == len(head)
    with pytest.raises(HeadError, match="^head too large$"):
        parse(impl, head, max_head_size=len(head) - 1)
    with pytest.raises(HeadError, match="^head too large$"):
        parse(impl, head[:-1], max_head_size=len(head) - 1)
    assert parse(impl, head[:-1], max_head_size=len(head)) is None
    huge = line + b"X: " + b"a" * 70000
    with pytest.raises(HeadError, match="^head too large$"):
        parse(impl, huge)


def test_header_count_limit(impl):
    head = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 99 + b"\r\n"
    assert len(parse(impl, head).headers) == 100
    with pytest.raises(HeadError, match="^too many headers$"):
        parse(impl, head.replace(b"\r\n\r\n", b"\r\nX: y\r\n\r\n"))
    with pytest.raises(HeadError, match="^too many headers$"):
        parse(impl, head, max_headers=3)


def test_accepts_any_bytes_like_and_rejects_other_types(impl):
    data = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"
    for form in (data, bytearray(data), memoryview(data)):
        assert parse(impl, form).headers == [(b"Host", b"h")]
    for bad in ("GET / HTTP/1.1\r\n\r\n", 5, None):
        with pytest.raises(TypeError):
            parse(impl, bad)


def test_random_bytes_never_crash(impl):
    rng = random.Random(20261121)
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        outcome(impl.parse_request_head, data)
        outcome(impl.parse_response_head, data)
    for _ in range(20):
        outcome(impl.parse_request_head, os.urandom(100_000))


# --- responses -----------------------------------------------------------------

def test_response_head(impl):
    data = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-Smokescreen-Error: x\r\n\r\nabc"
    head = impl.parse_response_head(data)
    assert (head.version, head.status, head.reason, head.content_length, head.chunked,
            head.keep_alive) == ("1.1", 404, "Not Found", 3, False, True)
    assert head.headers == [(b"Content-Length", b"3"), (b"X-Smokescreen-Error", b"x")]
    assert data[head.head_end:] == b"abc"


@pytest.mark.parametrize("line, status, reason", [
    (b"HTTP/1.1 200", 200, ""),
    (b"HTTP/1.1 200 ", 200, ""),
    (b"HTTP/1.0 599 Whatever \xe9", 599, "Whatever \xe9"),
    (b"HTTP/1.1 101 Switching Protocols", 101, "Switching Protocols"),
])
def test_status_lines(impl, line, status, reason):
    head = impl.parse_response_head(line + b"\r\n\r\n")
    assert (head.status, head.reason) == (status, reason)


@pytest.mark.parametrize("line, reason", [
    (b"HTTP/1.1 20 OK", "invalid status line"),
    (b"HTTP/1.1  200 OK", "invalid status line"),
    (b"HTTP/1.1 2000 OK", "invalid status line"),
    (b"HTTP/2.0 200 OK", "unsupported HTTP version"),
    (b"HTTPS/1.1 200 OK", "invalid status line"),
    (b"HTTP/1.1 099 Low", "invalid status code"),
    (b"HTTP/1.1 2x0 OK", "invalid status code"),
    (b"HTTP/1.1 200 O\x00K", "invalid reason phrase"),
])
def test_bad_status_lines(impl, line, reason):
    with pytest.raises(HeadError, match=f"^{reason}$"):
        impl.parse_response_head(line + b"\r\n\r\n")


def test_response_header_rules_and_no_host_requirement(impl):
    assert impl.parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n").keep_alive is True
    assert impl.parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive is False
    assert impl.parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").chunked
    with pytest.raises(HeadError, match="^both Transfer-Encoding and Content-Length$"):
        impl.parse_response_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n")
    with pytest.raises(HeadError, match="^bare LF in head$"):
        impl.parse_response_head(b"HTTP/1.1 200 OK\n\n")
    # responses do not skip leading empty lines
    with pytest.raises(HeadError, match="^invalid status line$"):
        impl.parse_response_head(b"\r\nHTTP/1.1 200 OK\r\n\r\n")
