"""HTTP/1.x request and response heads, in pure Python.

This is the twin of the compiled parser in ``fastfog/hot/httphead.pxi``: the
same functions, the same result attributes, the same error reasons, checked
against each other by the property tests. The grammar is RFC 9112, read
strictly, because a proxy that is lenient where its upstream is strict is how
requests get smuggled:

- lines end in CRLF; a bare LF or a stray CR is an error;
- obs-fold (a header line starting with whitespace) is an error;
- names are tokens, immediately followed by ``:``; values hold no controls
  other than HTAB (obs-text, bytes 0x80-0xFF, is kept as received);
- Content-Length values must agree; Transfer-Encoding must be exactly
  ``chunked`` and may not come with Content-Length;
- the request target is visible ASCII, its host letters, digits, ``-._`` or a
  bracketed IPv6 literal, its port digits; an absolute-form target's
  authority is what follows its last ``@`` (userinfo is dropped, never kept);
- a port is reported as written, even 0 or past 65535, and a CONNECT target
  may lack one (``port`` None): those are the proxy's to deny, with
  Smokescreen's answers, not the parser's;
- an HTTP/1.0 message with Transfer-Encoding has faulty framing (RFC 9112
  section 6.1);
- at most one Host header, and HTTP/1.1 requests other than CONNECT need one.

Empty lines before a request line are skipped (RFC 9112 section 2.2). A head is
complete at the empty line; ``head_end`` is the offset just past it, where a
body or tunnel data begin.
"""

from socket import AF_INET6, inet_pton

from fastfog.errors import HeadError

DEFAULT_MAX_HEAD_SIZE = 65536
DEFAULT_MAX_HEADERS = 100

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VCHAR = bytes(range(0x21, 0x7F))
_FIELD_VALUE = b"\t " + _VCHAR + bytes(range(0x80, 0x100))
_HOST_CHARS = b"-._0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGITS = b"0123456789"
_SCHEME_CHARS = b"+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_OWS = b" \t"
_MAX_HOST_LENGTH = 255
_MAX_CONTENT_LENGTH_DIGITS = 18
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PORT_DIGITS = 10


def _as_bytes(data):
    """Any bytes-like object as bytes; TypeError for anything else (``bytes(5)`` would not raise)."""
    return data if type(data) is bytes else bytes(memoryview(data))


def _only(data, allowed):
    """True when every byte of ``data`` is in ``allowed`` (and data is not empty)."""
    return bool(data) and not data.translate(None, allowed)


class _Head:
    """What request and response heads share (their own fields are each class's slots)."""

    __slots__ = ()

    def header(self, lowercase_name):
        """The first header called ``lowercase_name`` (any case), as str, or None."""
        for name, value in self.headers:
            if len(name) == len(lowercase_name) and name.lower() == lowercase_name:
                return value.decode("latin-1")
        return None


class RequestHead(_Head):
    """A parsed request head.

    ``form`` is ``"authority"`` (CONNECT), ``"absolute"``, ``"origin"`` or
    ``"asterisk"``. ``host``/``port``/``authority`` are set for the first two
    (``host`` without IPv6 brackets, as the client spelled it), ``scheme`` for
    absolute-form, ``path`` for absolute- and origin-form.
    """

    __slots__ = (
        "method", "target", "version", "headers", "head_end", "form", "scheme",
        "host", "port", "authority", "path", "content_length", "chunked", "keep_alive",
    )

    def __init__(self, method, target, version, headers, head_end, form, scheme,
                 host, port, authority, path, content_length, chunked, keep_alive):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.head_end = head_end
        self.form = form
        self.scheme = scheme
        self.host = host
        self.port = port
        self.authority = authority
        self.path = path
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive

    def __repr__(self):
        return f"<RequestHead {self.method} {self.target} HTTP/{self.version}>"


class ResponseHead(_Head):
    """A parsed response head."""

    __slots__ = ("version", "status", "reason", "headers", "head_end",
                 "content_length", "chunked", "keep_alive")

    def __init__(self, version, status, reason, headers, head_end,
                 content_length, chunked, keep_alive):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.head_end = head_end
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive

    def __repr__(self):
        return f"<ResponseHead HTTP/{self.version} {self.status}>"


def _parse_port(text):
    """The digits of a port as a number, whatever its size (MAX_PORT_DIGITS at most)."""
    if len(text) > MAX_PORT_DIGITS or not _only(text, _DIGITS):
        raise HeadError("invalid port")
    return int(text)


def _parse_authority(authority, default_port):
    """``host[:port]`` or ``[v6]:port`` → (host, port); an empty or missing port is
    ``default_port`` (None for CONNECT, which has none)."""
    if not authority:
        raise HeadError("missing host")
    port_text = None
    if authority[0] == 0x5B:  # "["
        close = authority.find(b"]")
        if close < 0:
            raise HeadError("invalid host")
        host = authority[1:close]
        try:
            inet_pton(AF_INET6, host.decode("ascii"))
        except (OSError, ValueError):
            raise HeadError("invalid IPv6 address") from None
        rest = authority[close + 1:]
        if rest:
            if rest[0] != 0x3A:  # ":"
                raise HeadError("invalid host")
            port_text = rest[1:]
    else:
        colon = authority.find(b":")
        if colon < 0:
            host = authority
        else:
            host = authority[:colon]
            port_text = authority[colon + 1:]
        if not host:
            raise HeadError("missing host")
        if len(host) > _MAX_HOST_LENGTH:
            raise HeadError("host too long")
        if not _only(host, _HOST_CHARS):
            raise HeadError("invalid host")
    port = _parse_port(port_text) if port_text else default_port
    return host.decode("ascii"), port


def _parse_request_line(line):
    sp1 = line.find(b" ")
    sp2 = line.find(b" ", sp1 + 1) if sp1 > 0 else -1
    if sp2 < 0 or sp2 == sp1 + 1:
        raise HeadError("invalid request line")
    method = line[:sp1]
    target = line[sp1 + 1:sp2]
    version = line[sp2 + 1:]
    if not _only(method, _TCHAR):
        raise HeadError("invalid method")
    if not _only(target, _VCHAR):
        raise HeadError("invalid request target")
    if len(version) != 8 or not version.startswith(b"HTTP/1.") or version[7] not in _DIGITS:
        raise HeadError("unsupported HTTP version")

    scheme = host = port = authority = path = None
    if method == b"CONNECT":
        if target[0] == 0x2F:  # "/"
            raise HeadError("CONNECT target must be host:port")
        form = "authority"
        authority = target
        host, port = _parse_authority(target, None)
    elif target[0] == 0x2F:
        form = "origin"
        path = target
    elif target == b"*":
        if method != b"OPTIONS":
            raise HeadError("invalid request target")
        form = "asterisk"
    else:
        form = "absolute"
        sep = target.find(b"://")
        if sep <= 0 or target[0] not in _ALPHA or not _only(target[:sep], _SCHEME_CHARS):
            raise HeadError("invalid request target")
        scheme = target[:sep].decode("ascii").lower()
        default_port = _DEFAULT_PORTS.get(scheme)
        if default_port is None:
            raise HeadError("unsupported URL scheme")
        rest = target[sep + 3:]
        end = len(rest)
        for delimiter in (b"/", b"?"):
            found = rest.find(delimiter, 0, end)
            if found >= 0:
                end = found
        authority = rest[rest.rfind(b"@", 0, end) + 1:end]
        host, port = _parse_authority(authority, default_port)
        path = rest[end:]
        if not path:
            path = b"/"
        elif path[0] == 0x3F:  # "?"
            path = b"/" + path
    return (method.decode("ascii"), target.decode("ascii"), version[5:].decode("ascii"),
            form, scheme, host, port,
            None if authority is None else authority.decode("ascii"),
            None if path is None else path.decode("ascii"))


def _parse_status_line(line):
    if len(line) < 12 or line[8] != 0x20 or (len(line) > 12 and line[12] != 0x20):
        raise HeadError("invalid status line")
    if not line.startswith(b"HTTP/1.") or line[7] not in _DIGITS:
        raise HeadError("unsupported HTTP version")
    status_text = line[9:12]
    if not _only(status_text, _DIGITS) or status_text[0] == 0x30:  # "0"
        raise HeadError("invalid status code")
    reason = line[13:]
    if reason and not _only(reason, _FIELD_VALUE):
        raise HeadError("invalid reason phrase")
    return line[5:8].decode("ascii"), int(status_text), reason.decode("latin-1")


class _Headers:
    """Header lines of one head, validated one at a time as they complete."""

    __slots__ = ("fields", "content_length", "chunked", "hosts", "close", "keep_alive")

    def __init__(self):
        self.fields = []
        self.content_length = None
        self.chunked = False
        self.hosts = 0
        self.close = False
        self.keep_alive = False

    def add(self, line):
        if line[0] in _OWS:
            raise HeadError("obs-fold not allowed")
        colon = line.find(b":")
        if colon < 0:
            raise HeadError("invalid header line")
        name = line[:colon]
        if not _only(name, _TCHAR):
            raise HeadError("invalid header name")
        value = line[colon + 1:].strip(_OWS)
        if value and not _only(value, _FIELD_VALUE):
            raise HeadError("invalid header value")
        self.fields.append((name, value))
        if len(name) in (4, 10, 14, 17):
            self._framing(name.lower(), value)

    def _framing(self, name, value):
        if name == b"content-length":
            for part in value.split(b","):
                part = part.strip(_OWS)
                if len(part) > _MAX_CONTENT_LENGTH_DIGITS or not _only(part, _DIGITS):
                    raise HeadError("invalid Content-Length")
                length = int(part)
                if self.content_length is None:
                    self.content_length = length
                elif self.content_length != length:
                    raise HeadError("conflicting Content-Length")
        elif name == b"transfer-encoding":
            if self.chunked:
                raise HeadError("multiple Transfer-Encoding headers")
            if value.lower() != b"chunked":
                raise HeadError("unsupported Transfer-Encoding")
            self.chunked = True
        elif name == b"host":
            self.hosts += 1
            if self.hosts > 1:
                raise HeadError("multiple Host headers")
        elif name == b"connection":
            for token in value.split(b","):
                token = token.strip(_OWS).lower()
                if token == b"close":
                    self.close = True
                elif token == b"keep-alive":
                    self.keep_alive = True

    def finish(self, version):
        if self.chunked and self.content_length is not None:
            raise HeadError("both Transfer-Encoding and Content-Length")
        if self.chunked and version == "1.0":
            raise HeadError("Transfer-Encoding in an HTTP/1.0 message")
        if version == "1.0":
            return self.keep_alive and not self.close
        return not self.close


def _scan(data, pos, max_head_size, max_headers, parse_start_line):
    """Walk the lines of a head from ``pos``: (start line fields, headers, head_end) or None."""
    start = None
    headers = _Headers()
    count = 0
    while True:
        eol = data.find(b"\n", pos)
        if eol < 0:
            if len(data) >= max_head_size:
                raise HeadError("head too large")
            return None
        if eol >= max_head_size:
            raise HeadError("head too large")
        if eol == pos or data[eol - 1] != 0x0D:
            raise HeadError("bare LF in head")
        line = data[pos:eol - 1]
        pos = eol + 1
        if start is None:
            start = parse_start_line(line)
        elif not line:
            return start, headers, pos
        else:
            count += 1
            if count > max_headers:
                raise HeadError("too many headers")
            headers.add(line)


def parse_request_head(data, max_head_size=DEFAULT_MAX_HEAD_SIZE, max_headers=DEFAULT_MAX_HEADERS):
    """Parse a request head from the bytes received so far.

    Returns a :class:`RequestHead`, or None when more bytes are needed; raises
    :class:`HeadError` with a short reason when the bytes can never form a
    valid head (including a head longer than ``max_head_size`` bytes or with
    more than ``max_headers`` header lines).
    """
    data = _as_bytes(data)
    pos = 0
    while data.startswith(b"\r\n", pos):
        pos += 2
    scanned = _scan(data, pos, max_head_size, max_headers, _parse_request_line)
    if scanned is None:
        return None
    start, headers, head_end = scanned
    method, target, version, form, scheme, host, port, authority, path = start
    keep_alive = headers.finish(version)
    if headers.hosts == 0 and version != "1.0" and method != "CONNECT":
        raise HeadError("missing Host header")
    return RequestHead(method, target, version, headers.fields, head_end, form, scheme,
                       host, port, authority, path, headers.content_length,
                       headers.chunked, keep_alive)


def parse_response_head(data, max_head_size=DEFAULT_MAX_HEAD_SIZE, max_headers=DEFAULT_MAX_HEADERS):
    """Parse a response head; same contract as :func:`parse_request_head`."""
    data = _as_bytes(data)
    scanned = _scan(data, 0, max_head_size, max_headers, _parse_status_line)
    if scanned is None:
        return None
    (version, status, reason), headers, head_end = scanned
    keep_alive = headers.finish(version)
    return ResponseHead(version, status, reason, headers.fields, head_end,
                        headers.content_length, headers.chunked, keep_alive)
