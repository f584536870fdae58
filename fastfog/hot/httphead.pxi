# HTTP/1.x request and response heads over a byte buffer.
#
# The grammar, the result attributes and every error reason are those of the
# twin in fastfog/reference/httphead.py, whose docstring documents the rules.
# One pass over the lines; every check is a table lookup per byte.

DEFAULT_MAX_HEAD_SIZE = 65536
DEFAULT_MAX_HEADERS = 100

cdef enum:
    MAX_HOST_LENGTH = 255
    MAX_CONTENT_LENGTH_DIGITS = 18
    MAX_IPV6_TEXT = 63
    MAX_PORT_DIGITS = 10

# Byte classes, as bit flags in one 256-entry table.
cdef enum:
    C_TCHAR = 1     # token characters (methods, header names)
    C_VCHAR = 2     # visible ASCII (request targets)
    C_VALUE = 4     # field value: HTAB, SP, VCHAR, obs-text
    C_HOST = 8      # host names: letters, digits, - . _
    C_DIGIT = 16
    C_SCHEME = 32   # letters, digits, + - .
    C_ALPHA = 64

cdef unsigned char CHAR_CLASS[256]


cdef void _init_char_classes():
    cdef int c
    cdef bytes tchar_extra = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        CHAR_CLASS[c] = 0
    for c in range(0x21, 0x7F):
        CHAR_CLASS[c] |= C_VCHAR | C_VALUE
    for c in range(0x80, 0x100):
        CHAR_CLASS[c] |= C_VALUE
    CHAR_CLASS[9] |= C_VALUE
    CHAR_CLASS[32] |= C_VALUE
    for c in range(256):
        if (0x30 <= c <= 0x39) or (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
            CHAR_CLASS[c] |= C_TCHAR | C_HOST | C_SCHEME
        if 0x30 <= c <= 0x39:
            CHAR_CLASS[c] |= C_DIGIT
        if (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
            CHAR_CLASS[c] |= C_ALPHA
    for c in tchar_extra:
        CHAR_CLASS[c] |= C_TCHAR
    for c in b"-._":
        CHAR_CLASS[c] |= C_HOST
    for c in b"+-.":
        CHAR_CLASS[c] |= C_SCHEME


_init_char_classes()


cdef inline bint _only(const unsigned char* p, Py_ssize_t n, unsigned char cls) noexcept nogil:
    """True when ``p[:n]`` is not empty and every byte has class ``cls``."""
    cdef Py_ssize_t i
    if n <= 0:
        return False
    for i in range(n):
        if not (CHAR_CLASS[p[i]] & cls):
            return False
    return True


cdef inline bint _ieq(const unsigned char* p, Py_ssize_t n, const char* lower) noexcept nogil:
    """ASCII case-insensitive ``p[:n] == lower`` (``lower`` is lowercase)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != <Py_ssize_t>strlen(lower):
        return False
    for i in range(n):
        c = p[i]
        if 0x41 <= c <= 0x5A:
            c += 0x20
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef inline Py_ssize_t _find(const unsigned char* p, Py_ssize_t n, unsigned char c) noexcept nogil:
    cdef const unsigned char* hit
    if n <= 0:
        return -1
    hit = <const unsigned char*>memchr(p, c, n)
    return -1 if hit == NULL else hit - p


cdef inline bint _is_ows(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x09


cdef class _Head:
    """What request and response heads share: headers and message framing."""
    cdef readonly str version
    cdef readonly list headers
    cdef readonly Py_ssize_t head_end
    cdef readonly object content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef long long _length
    cdef int _hosts
    cdef bint _close
    cdef bint _keep_alive_token

    def __cinit__(self):
        self.headers = []
        self._length = -1

    cpdef header(self, bytes lowercase_name):
        """The first header called ``lowercase_name`` (any case), as str, or None."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(lowercase_name), index
        cdef const unsigned char* wanted = <const unsigned char*>PyBytes_AS_STRING(lowercase_name)
        cdef const unsigned char* name
        cdef unsigned char c
        for item in self.headers:
            key = <bytes>(<tuple>item)[0]
            if PyBytes_GET_SIZE(key) != size:
                continue
            name = <const unsigned char*>PyBytes_AS_STRING(key)
            for index in range(size):
                c = name[index]
                if c >= b'A' and c <= b'Z':
                    c += 32
                if c != wanted[index]:
                    break
            else:
                value = <bytes>(<tuple>item)[1]
                return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), NULL)
        return None


cdef class RequestHead(_Head):
    """A parsed request head (see fastfog.reference.httphead.RequestHead)."""
    cdef readonly str method
    cdef readonly str target
    cdef readonly str form
    cdef readonly object scheme
    cdef readonly object host
    cdef readonly object port
    cdef readonly object authority
    cdef readonly object path

    def __repr__(self):
        return f"<RequestHead {self.method} {self.target} HTTP/{self.version}>"


cdef class ResponseHead(_Head):
    """A parsed response head."""
    cdef readonly int status
    cdef readonly str reason

    def __repr__(self):
        return f"<ResponseHead HTTP/{self.version} {self.status}>"


cdef long long _parse_port(const unsigned char* p, Py_ssize_t n) except -1:
    """The digits of a port as a number, whatever its size (MAX_PORT_DIGITS at most): 0 and
    ports past 65535 are the proxy's to deny, with Smokescreen's answers."""
    cdef Py_ssize_t i
    cdef long long port = 0
    if n > MAX_PORT_DIGITS or not _only(p, n, C_DIGIT):
        raise HeadError("invalid port")
    for i in range(n):
        port = port * 10 + (p[i] - 0x30)
    return port


cdef int _parse_authority(RequestHead head, const unsigned char* a, Py_ssize_t n,
                          int default_port) except -1:
    """``host[:port]`` or ``[v6]:port`` into head.host/port; an empty or missing port is
    ``default_port`` (< 0 for CONNECT, which then has none: ``port`` None)."""
    cdef Py_ssize_t close, colon, host_len
    cdef const unsigned char* host
    cdef const unsigned char* port_text = NULL
    cdef Py_ssize_t port_len = -1
    cdef char text[MAX_IPV6_TEXT + 1]
    cdef unsigned char packed[16]
    if n == 0:
        raise HeadError("missing host")
    if a[0] == 0x5B:  # "["
        close = _find(a, n, 0x5D)
        if close < 0:
            raise HeadError("invalid host")
        host = a + 1
        host_len = close - 1
        if host_len > MAX_IPV6_TEXT:
            raise HeadError("invalid IPv6 address")
        memcpy(text, host, host_len)
        text[host_len] = 0
        if inet_pton(AF_INET6, text, packed) != 1:
            raise HeadError("invalid IPv6 address")
        if close + 1 < n:
            if a[close + 1] != 0x3A:  # ":"
                raise HeadError("invalid host")
            port_text = a + close + 2
            port_len = n - close - 2
    else:
        colon = _find(a, n, 0x3A)
        if colon < 0:
            host_len = n
        else:
            host_len = colon
            port_text = a + colon + 1
            port_len = n - colon - 1
        host = a
        if host_len == 0:
            raise HeadError("missing host")
        if host_len > MAX_HOST_LENGTH:
            raise HeadError("host too long")
        if not _only(host, host_len, C_HOST):
            raise HeadError("invalid host")
    if port_len > 0:
        head.port = _parse_port(port_text, port_len)
    elif default_port >= 0:
        head.port = default_port
    head.host = PyUnicode_DecodeASCII(<const char*>host, host_len, NULL)
    return 0


cdef int _parse_request_line(RequestHead head, const unsigned char* line, Py_ssize_t n) except -1:
    cdef Py_ssize_t sp1, sp2, tlen, sep, i, end, at
    cdef const unsigned char* target
    cdef const unsigned char* version
    cdef const unsigned char* rest
    cdef Py_ssize_t rest_len
    cdef int default_port
    sp1 = _find(line, n, 0x20)
    sp2 = -1
    if sp1 > 0:
        sp2 = _find(line + sp1 + 1, n - sp1 - 1, 0x20)
        if sp2 >= 0:
            sp2 += sp1 + 1
    if sp2 < 0 or sp2 == sp1 + 1:
        raise HeadError("invalid request line")
    target = line + sp1 + 1
    tlen = sp2 - sp1 - 1
    version = line + sp2 + 1
    if not _only(line, sp1, C_TCHAR):
        raise HeadError("invalid method")
    if not _only(target, tlen, C_VCHAR):
        raise HeadError("invalid request target")
    if n - sp2 - 1 != 8 or memcmp(version, b"HTTP/1.", 7) != 0 or not (CHAR_CLASS[version[7]] & C_DIGIT):
        raise HeadError("unsupported HTTP version")
    head.method = PyUnicode_DecodeASCII(<const char*>line, sp1, NULL)
    head.target = PyUnicode_DecodeASCII(<const char*>target, tlen, NULL)
    head.version = PyUnicode_DecodeASCII(<const char*>version + 5, 3, NULL)

    if sp1 == 7 and memcmp(line, b"CONNECT", 7) == 0:
        if target[0] == 0x2F:
            raise HeadError("CONNECT target must be host:port")
        head.form = "authority"
        head.authority = head.target
        _parse_authority(head, target, tlen, -1)
    elif target[0] == 0x2F:  # "/"
        head.form = "origin"
        head.path = head.target
    elif tlen == 1 and target[0] == 0x2A:  # "*"
        if not (sp1 == 7 and memcmp(line, b"OPTIONS", 7) == 0):
            raise HeadError("invalid request target")
        head.form = "asterisk"
    else:
        head.form = "absolute"
        sep = -1
        for i in range(tlen - 2):
            if target[i] == 0x3A and target[i + 1] == 0x2F and target[i + 2] == 0x2F:
                sep = i
                break
        if sep <= 0 or not (CHAR_CLASS[target[0]] & C_ALPHA) or not _only(target, sep, C_SCHEME):
            raise HeadError("invalid request target")
        if _ieq(target, sep, "http"):
            head.scheme = "http"
            default_port = 80
        elif _ieq(target, sep, "https"):
            head.scheme = "https"
            default_port = 443
        else:
            raise HeadError("unsupported URL scheme")
        rest = target + sep + 3
        rest_len = tlen - sep - 3
        end = rest_len
        for i in range(rest_len):
            if rest[i] == 0x2F or rest[i] == 0x3F:  # "/" or "?"
                end = i
                break
        at = end - 1  # the authority follows the last "@": userinfo is dropped, never kept
        while at >= 0 and rest[at] != 0x40:
            at -= 1
        _parse_authority(head, rest + at + 1, end - at - 1, default_port)
        head.authority = PyUnicode_DecodeASCII(<const char*>rest + at + 1, end - at - 1, NULL)
        if end == rest_len:
            head.path = "/"
        elif rest[end] == 0x3F:
            head.path = "/" + PyUnicode_DecodeASCII(<const char*>rest + end, rest_len - end, NULL)
        else:
            head.path = PyUnicode_DecodeASCII(<const char*>rest + end, rest_len - end, NULL)
    return 0


cdef int _parse_status_line(ResponseHead head, const unsigned char* line, Py_ssize_t n) except -1:
    cdef int status
    if n < 12 or line[8] != 0x20 or (n > 12 and line[12] != 0x20):
        raise HeadError("invalid status line")
    if memcmp(line, b"HTTP/1.", 7) != 0 or not (CHAR_CLASS[line[7]] & C_DIGIT):
        raise HeadError("unsupported HTTP version")
    if not _only(line + 9, 3, C_DIGIT) or line[9] == 0x30:
        raise HeadError("invalid status code")
    if n > 13 and not _only(line + 13, n - 13, C_VALUE):
        raise HeadError("invalid reason phrase")
    head.version = PyUnicode_DecodeASCII(<const char*>line + 5, 3, NULL)
    head.status = (line[9] - 0x30) * 100 + (line[10] - 0x30) * 10 + (line[11] - 0x30)
    head.reason = PyUnicode_DecodeLatin1(<const char*>line + 13, n - 13, NULL) if n > 13 else ""
    return 0


cdef int _content_length(_Head head, const unsigned char* v, Py_ssize_t n) except -1:
    cdef Py_ssize_t start = 0, end, first, last, i
    cdef long long length
    while True:
        end = _find(v + start, n - start, 0x2C)  # ","
        end = n if end < 0 else start + end
        first = start
        last = end
        while first < last and _is_ows(v[first]):
            first += 1
        while last > first and _is_ows(v[last - 1]):
            last -= 1
        if last - first > MAX_CONTENT_LENGTH_DIGITS or not _only(v + first, last - first, C_DIGIT):
            raise HeadError("invalid Content-Length")
        length = 0
        for i in range(first, last):
            length = length * 10 + (v[i] - 0x30)
        if head._length < 0:
            head._length = length
        elif head._length != length:
            raise HeadError("conflicting Content-Length")
        if end == n:
            return 0
        start = end + 1


cdef void _connection_tokens(_Head head, const unsigned char* v, Py_ssize_t n) noexcept:
    cdef Py_ssize_t start = 0, end, first, last
    while True:
        end = _find(v + start, n - start, 0x2C)
        end = n if end < 0 else start + end
        first = start
        last = end
        while first < last and _is_ows(v[first]):
            first += 1
        while last > first and _is_ows(v[last - 1]):
            last -= 1
        if _ieq(v + first, last - first, "close"):
            head._close = True
        elif _ieq(v + first, last - first, "keep-alive"):
            head._keep_alive_token = True
        if end == n:
            return
        start = end + 1


cdef int _header_line(_Head head, const unsigned char* p, Py_ssize_t n) except -1:
    cdef Py_ssize_t colon, first, last
    if _is_ows(p[0]):
        raise HeadError("obs-fold not allowed")
    colon = _find(p, n, 0x3A)
    if colon < 0:
        raise HeadError("invalid header line")
    if not _only(p, colon, C_TCHAR):
        raise HeadError("invalid header name")
    first = colon + 1
    last = n
    while first < last and _is_ows(p[first]):
        first += 1
    while last > first and _is_ows(p[last - 1]):
        last -= 1
    if last > first and not _only(p + first, last - first, C_VALUE):
        raise HeadError("invalid header value")
    head.headers.append((PyBytes_FromStringAndSize(<const char*>p, colon),
                         PyBytes_FromStringAndSize(<const char*>p + first, last - first)))
    if colon == 14 and _ieq(p, colon, "content-length"):
        _content_length(head, p + first, last - first)
    elif colon == 17 and _ieq(p, colon, "transfer-encoding"):
        if head.chunked:
            raise HeadError("multiple Transfer-Encoding headers")
        if not _ieq(p + first, last - first, "chunked"):
            raise HeadError("unsupported Transfer-Encoding")
        head.chunked = True
    elif colon == 4 and _ieq(p, colon, "host"):
        head._hosts += 1
        if head._hosts > 1:
            raise HeadError("multiple Host headers")
    elif colon == 10 and _ieq(p, colon, "connection"):
        _connection_tokens(head, p + first, last - first)
    return 0


cdef int _scan(_Head head, const unsigned char* data, Py_ssize_t n, Py_ssize_t pos,
               Py_ssize_t max_head_size, Py_ssize_t max_headers) except -1:
    """Fill ``head`` from the lines at ``pos``: 1 when complete, 0 when more bytes are needed."""
    cdef Py_ssize_t eol, line_len, count = 0
    cdef bint started = False
    while True:
        eol = _find(data + pos, n - pos, 0x0A)
        if eol < 0:
            if n >= max_head_size:
                raise HeadError("head too large")
            return 0
        eol += pos
        if eol >= max_head_size:
            raise HeadError("head too large")
        if eol == pos or data[eol - 1] != 0x0D:
            raise HeadError("bare LF in head")
        line_len = eol - 1 - pos
        if not started:
            if type(head) is RequestHead:
                _parse_request_line(<RequestHead>head, data + pos, line_len)
            else:
                _parse_status_line(<ResponseHead>head, data + pos, line_len)
            started = True
        elif line_len == 0:
            head.head_end = eol + 1
            return 1
        else:
            count += 1
            if count > max_headers:
                raise HeadError("too many headers")
            _header_line(head, data + pos, line_len)
        pos = eol + 1


cdef int _finish(_Head head) except -1:
    if head.chunked and head._length >= 0:
        raise HeadError("both Transfer-Encoding and Content-Length")
    if head.chunked and head.version == "1.0":
        raise HeadError("Transfer-Encoding in an HTTP/1.0 message")
    if head._length >= 0:
        head.content_length = head._length
    if head.version == "1.0":
        head.keep_alive = head._keep_alive_token and not head._close
    else:
        head.keep_alive = not head._close
    return 0


def parse_request_head(data, Py_ssize_t max_head_size=DEFAULT_MAX_HEAD_SIZE,
                       Py_ssize_t max_headers=DEFAULT_MAX_HEADERS):
    """Parse a request head from the bytes received so far.

    Returns a RequestHead, or None when more bytes are needed; raises HeadError
    with a short reason when the bytes can never form a valid head.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n, pos = 0
    cdef RequestHead head = RequestHead.__new__(RequestHead)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        while pos + 1 < n and p[pos] == 0x0D and p[pos + 1] == 0x0A:
            pos += 2
        if not _scan(head, p, n, pos, max_head_size, max_headers):
            return None
    finally:
        PyBuffer_Release(&view)
    _finish(head)
    if head._hosts == 0 and head.version != "1.0" and head.method != "CONNECT":
        raise HeadError("missing Host header")
    return head


def parse_response_head(data, Py_ssize_t max_head_size=DEFAULT_MAX_HEAD_SIZE,
                        Py_ssize_t max_headers=DEFAULT_MAX_HEADERS):
    """Parse a response head; same contract as parse_request_head."""
    cdef Py_buffer view
    cdef ResponseHead head = ResponseHead.__new__(ResponseHead)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if not _scan(head, <const unsigned char*>view.buf, view.len, 0, max_head_size, max_headers):
            return None
    finally:
        PyBuffer_Release(&view)
    _finish(head)
    return head
