"""Property tests for the head parser: compiled core vs reference, and h11 as an outside oracle."""

import h11
from support import IMPLEMENTATIONS, needs_core
from hypothesis import assume, example, given
from hypothesis import strategies as st
from support import outcome

from fastfog import reference

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789/-._~%!$&'()*+,;=:@?"

tokens = st.text(TCHAR, min_size=1, max_size=12)
methods = st.one_of(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "CONNECT"]), tokens)
hosts = st.one_of(
    st.text(HOST_CHARS, min_size=1, max_size=20),
    st.sampled_from(["example.com", "203.0.113.9", "[2001:db8::1]", "[::1]", "[fe80::1%25x]",
                     "[1.2.3.4]", "h", "127.1", "0x7f.1", "a..b", ""]),
)
ports = st.one_of(
    st.none(),
    st.sampled_from(["0", "1", "80", "443", "65535", "65536", "99999", "00000", "0443", "", "x", "-1"]),
    st.integers(0, 70000).map(str),
)


@st.composite
def authorities(draw):
    port = draw(ports)
    return draw(hosts) + ("" if port is None else ":" + port)


paths = st.text(PATH_CHARS, max_size=30).map(lambda p: "/" + p)
targets = st.one_of(
    paths,
    authorities(),
    st.builds(lambda s, a, p: f"{s}://{a}{p}", st.sampled_from(["http", "https", "HTTP", "ftp", "h+s"]),
              authorities(), st.one_of(st.just(""), paths, st.just("?q=1"))),
    st.just("*"),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
)
versions = st.sampled_from(["1.1", "1.1", "1.0", "1.9", "2.0", "0.9"])
header_names = st.one_of(
    st.sampled_from(["Host", "host", "Content-Length", "content-length", "Transfer-Encoding",
                     "Connection", "Proxy-Authorization", "X-Smokescreen-Role"]),
    tokens,
)
value_bytes = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(str.encode),
    st.sampled_from([b"chunked", b"CHUNKED", b"gzip, chunked", b"5", b"5, 5", b"5, 6", b" 12 ",
                     b"close", b"keep-alive", b"Keep-Alive, close", b"", b"\t x \t"]),
    st.binary(max_size=8),
)


@st.composite
def request_heads(draw):
    """Mostly well-formed request heads, with every part sometimes bent out of shape."""
    target, version = draw(targets), draw(versions)
    method = draw(st.one_of(methods, st.just("CONNECT" if target[:1] not in ("/", "*", "h") else "GET")))
    lines = [f"{method} {target} HTTP/{version}".encode()]
    for _ in range(draw(st.integers(0, 6))):
        fold = draw(st.sampled_from([b""] * 6 + [b" ", b"\t"]))
        lines.append(fold + draw(header_names).encode() + b":"
                     + draw(st.sampled_from([b"", b" ", b"\t"])) + draw(value_bytes))
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"]))
    data = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + eol.join(lines) + eol + eol
    return data + draw(st.binary(max_size=8))


@st.composite
def response_heads(draw):
    line = b"HTTP/" + draw(versions).encode() + b" " + str(draw(st.integers(0, 1200))).encode()
    line += draw(st.sampled_from([b"", b" ", b" OK", b" Not \xe9 Found"]))
    lines = [line]
    for _ in range(draw(st.integers(0, 6))):
        fold = draw(st.sampled_from([b""] * 6 + [b" ", b"\t"]))
        lines.append(fold + draw(header_names).encode() + b": " + draw(value_bytes))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=8))


@st.composite
def mutated(draw, heads):
    """A head with a byte replaced, inserted or deleted, or cut short."""
    data = bytearray(draw(heads))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 0x3A, 0x2C, 0x7F, 0xFF, 0x41]))
        if action == "replace":
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif action == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


limits = st.fixed_dictionaries({}, optional={"max_head_size": st.integers(0, 120),
                                             "max_headers": st.integers(0, 4)})


@needs_core
@given(data=st.one_of(request_heads(), mutated(request_heads()), st.binary(max_size=300)), limits=limits)
@example(data=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", limits={"max_head_size": 29})
def test_core_matches_reference_on_requests(data, limits):
    core = IMPLEMENTATIONS["core"]
    assert outcome(core.parse_request_head, data, **limits) == outcome(
        reference.parse_request_head, data, **limits)


@needs_core
@given(data=st.one_of(response_heads(), mutated(response_heads()), st.binary(max_size=300)), limits=limits)
def test_core_matches_reference_on_responses(data, limits):
    core = IMPLEMENTATIONS["core"]
    assert outcome(core.parse_response_head, data, **limits) == outcome(
        reference.parse_response_head, data, **limits)


# --- h11 as the oracle -----------------------------------------------------------

def h11_request(data):
    conn = h11.Connection(h11.SERVER)
    # fastfog skips empty lines before a request line (RFC 9112 section 2.2); h11 does not.
    while data.startswith(b"\r\n"):
        data = data[2:]
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def h11_response(data):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Response) else None


def lowered(headers):
    return [(name.lower(), value) for name, value in headers]


def framing_free(headers):
    """Headers without Content-Length and Transfer-Encoding, which h11 normalises."""
    return [(n, v) for n, v in lowered(headers) if n not in (b"content-length", b"transfer-encoding")]


@given(data=st.one_of(request_heads(), mutated(request_heads())))
def test_every_request_head_fastfog_accepts_h11_accepts_alike(data):
    """fastfog is never more lenient than h11, and reads what it accepts the same way."""
    for impl in IMPLEMENTATIONS.values():
        result = outcome(impl.parse_request_head, data)
        if result[0] != "head":
            continue
        fields = result[1]
        if fields["version"] != "1.0" and fields["method"] == "CONNECT" and not any(
                name.lower() == b"host" for name, _ in fields["headers"]):
            continue  # fastfog, like Go's net/http, does not require Host on CONNECT
        event = h11_request(data)
        assert event is not None, data
        assert event.method.decode() == fields["method"]
        assert event.target.decode() == fields["target"]
        assert event.http_version.decode() == fields["version"]
        assert framing_free(event.headers) == framing_free(fields["headers"])
        h11_lengths = [int(v) for n, v in lowered(event.headers) if n == b"content-length"]
        assert h11_lengths == ([] if fields["content_length"] is None else [fields["content_length"]])
        assert any(n == b"transfer-encoding" for n, _ in lowered(event.headers)) == fields["chunked"]


@st.composite
def clean_request_heads(draw):
    """Heads valid by RFC 9112 and by fastfog's stricter target rules."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]) | tokens.filter(
        lambda m: m not in ("CONNECT", "OPTIONS")))
    host = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=20))
    target = draw(st.one_of(paths, st.just(f"http://{host}"), paths.map(lambda p: f"http://{host}{p}"),
                            paths.map(lambda p: f"https://{host}:8443{p}")))
    version = draw(st.sampled_from(["1.0", "1.1"]))
    lines = [f"{method} {target} HTTP/{version}".encode(), b"Host: " + host.encode()]
    for _ in range(draw(st.integers(0, 5))):
        name = draw(tokens.filter(lambda n: n.lower() not in (
            "host", "content-length", "transfer-encoding")))
        value = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=10))
        lines.append(f"{name}: {value}".encode())
    # RFC 9112 section 6.1: HTTP/1.0 with Transfer-Encoding is faulty framing (h11 takes it).
    framing = draw(st.sampled_from([None, "length"] + (["chunked"] if version == "1.1" else [])))
    if framing == "length":
        lines.append(b"Content-Length: " + str(draw(st.integers(0, 10**9))).encode())
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@given(data=clean_request_heads())
def test_heads_h11_accepts_fastfog_accepts_alike(data):
    event = h11_request(data)
    assert event is not None
    for impl in IMPLEMENTATIONS.values():
        head = impl.parse_request_head(data)
        assert head.method.encode() == event.method
        assert head.target.encode() == event.target
        assert head.version.encode() == event.http_version
        assert lowered(head.headers) == lowered(event.headers)
        assert head.head_end == len(data)


@given(data=st.one_of(response_heads(), mutated(response_heads())))
def test_every_response_head_fastfog_accepts_h11_accepts_alike(data):
    for impl in IMPLEMENTATIONS.values():
        result = outcome(impl.parse_response_head, data)
        if result[0] != "head" or result[1]["status"] < 200:
            continue
        fields = result[1]
        event = h11_response(data)
        assert event is not None, data
        assert event.status_code == fields["status"]
        assert event.http_version.decode() == fields["version"]
        assert event.reason == fields["reason"].encode("latin-1")
        assert framing_free(event.headers) == framing_free(fields["headers"])


@given(data=st.one_of(clean_request_heads(), request_heads()))
def test_cut_anywhere_a_valid_head_is_incomplete(data):
    """Splitting a head across reads never changes the answer: every prefix waits for more."""
    result = outcome(reference.parse_request_head, data)
    assume(result[0] == "head")
    head_end = result[1]["head_end"]
    for impl in IMPLEMENTATIONS.values():
        for cut in range(head_end):
            assert outcome(impl.parse_request_head, data[:cut]) == ("incomplete",)


NAMES = ["x-smokescreen-trace-id", "proxy-authorization", "expect", "host", "x-upstream-https-proxy"]


VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t\xe9\xff"


@given(headers=st.lists(st.tuples(st.sampled_from(NAMES + ["X-SmokeScreen-Trace-ID", "EXPECT", "hosts", "x"]) | tokens,
                                  st.text(VALUE_CHARS, max_size=10).map(lambda value: value.strip(" \t"))),
                        max_size=8),
       wanted=st.sampled_from(NAMES) | tokens.map(str.lower))
def test_header_lookup_agrees_with_a_plain_scan(headers, wanted):
    """head.header(name): the first header of that name in any case, as str (Latin-1), both
    implementations, against a scan written here."""
    raw = b"CONNECT a:1 HTTP/1.1\r\n" + b"".join(f"{name}: {value}\r\n".encode("latin-1")
                                                  for name, value in headers) + b"\r\n"
    expected = next((value for name, value in headers if name.lower() == wanted), None)
    try:
        reference.parse_request_head(raw)
    except reference.HeadError:  # (two Host headers, a bad Content-Length, ...: no head to ask)
        assume(False)
    for impl in IMPLEMENTATIONS.values():
        assert impl.parse_request_head(raw).header(wanted.encode()) == expected
