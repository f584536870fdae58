"""Chunked-body framing and the heads fastfog forwards."""

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfog import forward
from fastfog.chunked import ChunkedBody
from fastfog.errors import HeadError
from fastfog.reference import parse_request_head, parse_response_head
from fastfog.reference.forwardhead import REQUEST_ONLY, RESPONSE_ONLY
from support import IMPLEMENTATIONS

BODY = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"


def test_chunked_body_end_found_at_every_split():
    for cut in range(len(BODY)):
        scanner = ChunkedBody()
        assert scanner.feed(BODY[:cut]) == cut and not scanner.done
        assert scanner.feed(BODY[cut:] + b"NEXT") == len(BODY) - cut and scanner.done


@pytest.mark.parametrize("body, reason", [
    (b"x\r\n", "invalid chunk size"),
    (b"\r\n", "invalid chunk size"),
    (b"5\nhello", "bare LF in chunked body"),
    (b"3\r\nabcd\r\n", "chunk data longer than its size"),
    (b"0\r\nno colon\r\n", "invalid trailer section"),
    (b"11111111111111111\r\n", "invalid chunk size"),
    (b"5" + b" " * 5000, "chunked body line too long"),
])
def test_chunked_errors(body, reason):
    with pytest.raises(HeadError, match=f"^{reason}$"):
        ChunkedBody().feed(body)


@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8), split=st.integers(1, 50))
def test_chunked_scanner_agrees_with_h11(chunks, split):
    """h11 encodes a chunked body; fed in pieces, the scanner finds exactly its end."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "h"), ("Transfer-Encoding", "chunked")]))
    encoded = b"".join(conn.send(h11.Data(data=chunk)) for chunk in chunks) + conn.send(h11.EndOfMessage())
    scanner, consumed = ChunkedBody(), 0
    stream = encoded + b"GET / HTTP/1.1\r\n"
    for start in range(0, len(stream), split):
        consumed += scanner.feed(stream[start:start + split])
        if scanner.done:
            break
    assert scanner.done and consumed == len(encoded)


def test_upstream_request_head():
    head = parse_request_head(
        b"POST http://Example.com:8080/p?q HTTP/1.1\r\nHost: other\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n"
        b"Proxy-Authorization: x\r\nproxy-foo: y\r\nTE: trailers\r\nX-Smokescreen-Role: r\r\n"
        b"Content-Length: 2\r\nX-Keep: z\r\n\r\n")
    assert forward.upstream_request(head) == (
        b"POST /p?q HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 2\r\nX-Keep: z\r\n\r\n")
    old = parse_request_head(b"GET http://h/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert forward.upstream_request(old) == b"GET / HTTP/1.0\r\nHost: h\r\nConnection: close\r\n\r\n"


def test_client_response_head():
    head = parse_response_head(b"HTTP/1.0 200 Fine\r\nKeep-Alive: 5\r\nConnection: keep-alive\r\n"
                               b"X-Smokescreen-Error: e\r\nContent-Length: 3\r\n\r\n")
    assert forward.client_response(head, close=False, client_version="1.1") == (
        b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\n\r\n")
    assert forward.client_response(head, close=True, client_version="1.1").endswith(b"Connection: close\r\n\r\n")
    assert forward.client_response(head, close=False, client_version="1.0").endswith(
        b"Connection: keep-alive\r\n\r\n")


@pytest.mark.parametrize("response, method, kind", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", "length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", "empty"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", "empty"),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", "GET", "empty"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", "chunked"),
    (b"HTTP/1.0 200 OK\r\n\r\n", "GET", "close"),
])
def test_response_framing(response, method, kind):
    body = forward.response_body(parse_response_head(response), method)
    found = {forward.UntilClose: "close", ChunkedBody: "chunked"}.get(type(body))
    if found is None:
        found = "empty" if body.done else "length"
    assert found == kind


_WELL_KNOWN = [b"Connection", b"Keep-Alive", b"TE", b"Upgrade", b"Proxy-Connection", b"Proxy-Authorization",
               b"Proxy-Foo", b"X-Hop", b"X-Kept", b"Accept", b"X-Smokescreen-Role", b"X-Smokescreen-Error"]
_SPECIAL = {b"host", b"content-length", b"transfer-encoding"}  # framing: h11 checks them, not our subject


def _any_case(name, flips):
    flips = flips + [False] * len(name)
    return bytes(c ^ 0x20 if flip and chr(c).isalpha() else c for c, flip in zip(name, flips, strict=False))


_names = st.builds(_any_case, st.sampled_from(_WELL_KNOWN) | st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,12}\Z"),
                   st.lists(st.booleans(), max_size=20)).filter(lambda name: name.lower() not in _SPECIAL)
_values = st.from_regex(rb"\A([!-~]([ -~]{0,16}[!-~])?)?\Z")
_listing = st.lists(st.sampled_from(_WELL_KNOWN) | _names, max_size=4).map(lambda names: b", ".join(names))
_headers = st.lists(st.one_of(st.tuples(_names, _values), st.tuples(st.just(b"Connection"), _listing)), max_size=12)


@given(headers=_headers, drop_proxy=st.booleans(), request=st.booleans())
def test_rewrite_head_agrees_across_implementations_and_with_h11(headers, drop_proxy, request):
    """Every implementation writes the same head; h11 reads back exactly the headers that should go on."""
    dropped = REQUEST_ONLY if request else RESPONSE_ONLY
    before = b"GET / HTTP/1.1\r\nHost: h\r\n" if request else b"HTTP/1.1 200 OK\r\n"
    written = {name: impl.rewrite_head(before, headers, dropped, drop_proxy, b"X-Own: 1\r\n")
               for name, impl in IMPLEMENTATIONS.items()}
    assert len(set(written.values())) == 1
    listed = {token.strip(b" \t").lower() for name, value in headers if name.lower() == b"connection"
              for token in value.split(b",")}
    hop_by_hop = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}
    expected = [(name.lower(), value) for name, value in headers
                if name.lower() not in hop_by_hop | dropped | listed
                and not (drop_proxy and name.lower().startswith(b"proxy-"))]
    conn = h11.Connection(h11.SERVER if request else h11.CLIENT)
    if not request:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "h")]))
    conn.receive_data(written["reference"])
    event = conn.next_event()
    read_back = [(name, value) for name, value in event.headers]
    assert read_back == ([(b"host", b"h")] if request else []) + expected + [(b"x-own", b"1")]


_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
_paths = st.from_regex(r"\A/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,20}\Z")
_reasons = st.from_regex(r"\A[A-Za-z ]{0,12}\Z")


@given(method=_methods, path=_paths, version=st.sampled_from(["1.0", "1.1"]), headers=_headers,
       add=st.lists(st.tuples(st.sampled_from(["X-Added", "Authorization", "x-keep"]),
                              st.from_regex(r"\A[a-z]{0,5}\Z")), max_size=2))
def test_upstream_request_heads_agree_across_implementations(method, path, version, headers, add):
    raw = (f"{method} http://203.0.113.1:8080{path} HTTP/{version}\r\nHost: 203.0.113.1:8080\r\n".encode() +
           b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n")
    written = {name: impl.upstream_request(impl.parse_request_head(raw), add)
               for name, impl in IMPLEMENTATIONS.items()}
    assert len(set(written.values())) == 1
    assert written["reference"].startswith(f"{method} {path} HTTP/{version}\r\nHost: 203.0.113.1:8080\r\n".encode())


@given(status=st.integers(100, 599), reason=_reasons, headers=_headers, close=st.booleans(),
       client_version=st.sampled_from(["1.0", "1.1"]))
def test_client_response_heads_agree_across_implementations(status, reason, headers, close, client_version):
    raw = (f"HTTP/1.1 {status} {reason}\r\n".encode() + b"".join(name + b": " + value + b"\r\n"
                                                              for name, value in headers) + b"\r\n")
    written = {name: impl.client_response(impl.parse_response_head(raw), close, client_version)
               for name, impl in IMPLEMENTATIONS.items()}
    assert len(set(written.values())) == 1
    assert written["reference"].startswith(f"HTTP/1.1 {status} {reason}".rstrip().encode() + b"\r\n")
