# The heads of forwarded messages: which header lines go on, and the lines fastfog writes.
#
# The rules are those of the twin in fastfog/reference/forwardhead.py (its
# docstring documents them); here the kept lines are copied into one bytes
# object of the right size, with no list of pieces in between.

from fastfog.reference.forwardhead import REQUEST_ONLY, RESPONSE_ONLY

cdef bytes _CLOSE_LINE = b"Connection: close\r\n"
cdef bytes _KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"

cdef frozenset HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})


cdef inline bint _is_connection(bytes name) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef const char* expected = b"connection"
    cdef Py_ssize_t i
    if PyBytes_GET_SIZE(name) != 10:
        return False
    for i in range(10):
        if (p[i] | 0x20) != <unsigned char>expected[i]:
            return False
    return True


cdef inline bytes _lower(bytes name):
    """``name`` itself when it has no capital letter (no copy), else name.lower()."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(name)):
        if 0x41 <= p[i] <= 0x5A:
            return name.lower()
    return name


cdef set _listed_names(list headers):
    cdef set tokens = set()
    cdef bytes name, value
    for name, value in headers:
        if _is_connection(name):
            tokens.update(token.strip(b" \t").lower() for token in value.split(b","))
    return tokens


def rewrite_head(bytes before, list headers, frozenset dropped, bint drop_proxy, bytes after):
    return _rewrite_head(before, headers, dropped, drop_proxy, after)


def upstream_request(head, add_headers=()):
    cdef str version = head.version
    cdef bytes before = f"{head.method} {head.path} HTTP/{version}\r\nHost: {head.authority}\r\n".encode("ascii")
    cdef bytes after = _CLOSE_LINE if version == "1.0" else b""
    cdef frozenset removed = REQUEST_ONLY
    if add_headers:
        removed = REQUEST_ONLY | {name.lower().encode("latin-1") for name, _ in add_headers}
        after += b"".join([f"{name}: {value}\r\n".encode("latin-1") for name, value in add_headers])
    return _rewrite_head(before, head.headers, removed, True, after)


def client_response(head, bint close, client_version):
    cdef str start = f"HTTP/1.1 {head.status} {head.reason}".rstrip() + "\r\n"
    cdef bytes after = _CLOSE_LINE if close else _KEEP_ALIVE_LINE if client_version == "1.0" else b""
    return _rewrite_head(start.encode("latin-1"), head.headers, RESPONSE_ONLY, False, after)


cdef bytes _rewrite_head(bytes before, list headers, frozenset dropped, bint drop_proxy, bytes after):
    cdef Py_ssize_t count = len(headers), index, total, size
    cdef bytes name, value, lower, result
    cdef tuple header
    cdef object named = None
    cdef char* out
    cdef list kept = []
    for index in range(count):
        header = <tuple>headers[index]
        if _is_connection(<bytes>header[0]):
            named = _listed_names(headers)
            break
    total = PyBytes_GET_SIZE(before) + PyBytes_GET_SIZE(after) + 2
    for index in range(count):
        header = <tuple>headers[index]
        name, value = <bytes>header[0], <bytes>header[1]
        lower = _lower(name)
        if lower in HOP_BY_HOP or lower in dropped or (named is not None and lower in named):
            continue
        if drop_proxy and PyBytes_GET_SIZE(lower) >= 6 and memcmp(PyBytes_AS_STRING(lower), b"proxy-", 6) == 0:
            continue
        kept.append(header)
        total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    size = PyBytes_GET_SIZE(before)
    memcpy(out, PyBytes_AS_STRING(before), size)
    out += size
    for header in kept:
        name, value = <bytes>header[0], <bytes>header[1]
        size = PyBytes_GET_SIZE(name)
        memcpy(out, PyBytes_AS_STRING(name), size)
        out += size
        out[0], out[1] = b":", b" "
        out += 2
        size = PyBytes_GET_SIZE(value)
        memcpy(out, PyBytes_AS_STRING(value), size)
        out += size
        out[0], out[1] = b"\r", b"\n"
        out += 2
    size = PyBytes_GET_SIZE(after)
    memcpy(out, PyBytes_AS_STRING(after), size)
    out += size
    out[0], out[1] = b"\r", b"\n"
    return result
