# The server name in a tunnel's first bytes: the twin of fastfog/reference/clienthello.py,
# whose docstring gives the states and the rules. Here the records' payloads are gathered
# into one C buffer and every length is checked against both its container and the input.

cdef enum:
    HELLO_HANDSHAKE = 22
    HELLO_CLIENT_HELLO = 1
    HELLO_MAX_RECORD = 16384 + 2048
    HELLO_MAX_SIZE = 65536

cdef object HELLO_MORE = ("more", None)
cdef object HELLO_NOT_TLS = ("not-tls", None)
cdef object HELLO_MALFORMED = ("malformed", None)
cdef object HELLO_NO_NAME = ("hello", None)


cdef inline Py_ssize_t _u16(const unsigned char* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef object _hello_server_name(const unsigned char* body, Py_ssize_t at, Py_ssize_t end):
    """The first host_name, None when there is none, False when the extension is broken."""
    cdef Py_ssize_t length, i
    cdef unsigned char kind
    cdef object found = None
    if at + 2 > end or at + 2 + _u16(body + at) != end:
        return False
    at += 2
    while at < end:
        if at + 3 > end:
            return False
        kind, length = body[at], _u16(body + at + 1)
        at += 3
        if at + length > end:
            return False
        if kind == 0 and found is None:
            if length == 0:
                return False
            for i in range(length):
                if body[at + i] < 0x21 or body[at + i] > 0x7E:
                    return False
            found = PyUnicode_DecodeASCII(<const char*>body + at, length, NULL)
        at += length
    return found


cdef object _hello_parse(const unsigned char* body, Py_ssize_t end):
    cdef Py_ssize_t at = 34, suites, extensions_end, length
    cdef unsigned int kind
    cdef object name = None, found
    if at + 1 > end or body[at] > 32:
        return HELLO_MALFORMED
    at += 1 + body[at]
    if at + 2 > end:
        return HELLO_MALFORMED
    suites = _u16(body + at)
    if suites < 2 or suites % 2:
        return HELLO_MALFORMED
    at += 2 + suites
    if at + 1 > end or body[at] < 1:
        return HELLO_MALFORMED
    at += 1 + body[at]
    if at > end:
        return HELLO_MALFORMED
    if at == end:
        return HELLO_NO_NAME
    if at + 2 > end:
        return HELLO_MALFORMED
    extensions_end = at + 2 + _u16(body + at)
    if extensions_end != end:
        return HELLO_MALFORMED
    at += 2
    while at < extensions_end:
        if at + 4 > extensions_end:
            return HELLO_MALFORMED
        kind, length = _u16(body + at), _u16(body + at + 2)
        at += 4
        if at + length > extensions_end:
            return HELLO_MALFORMED
        if kind == 0 and name is None:
            found = _hello_server_name(body, at, at + length)
            if found is False:
                return HELLO_MALFORMED
            name = found
        at += length
    return ("hello", name)


def client_hello_sni(data, Py_ssize_t max_size=HELLO_MAX_SIZE):
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t size, at = 0, length, needed = -1, have = 0, take
    cdef unsigned char* message = NULL
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p, size = <const unsigned char*>view.buf, view.len
        if size == 0:
            return HELLO_MORE
        if p[0] != HELLO_HANDSHAKE or (size >= 2 and p[1] != 3):
            return HELLO_NOT_TLS
        if max_size < 0:
            max_size = 0
        message = <unsigned char*>PyMem_Malloc(max_size + HELLO_MAX_RECORD + 4)
        if message == NULL:
            raise MemoryError()
        while needed < 0 or have < needed:
            if size - at < 5:
                return HELLO_MORE
            if p[at] != HELLO_HANDSHAKE or p[at + 1] != 3:
                return HELLO_NOT_TLS if at == 0 else HELLO_MALFORMED
            length = _u16(p + at + 3)
            if length == 0 or length > HELLO_MAX_RECORD:
                return HELLO_MALFORMED
            take = length if size - at - 5 >= length else size - at - 5
            memcpy(message + have, p + at + 5, take)
            have += take
            if needed < 0 and have >= 4:
                if message[0] != HELLO_CLIENT_HELLO:
                    return HELLO_MALFORMED
                needed = 4 + ((<Py_ssize_t>message[1] << 16) | (message[2] << 8) | message[3])
                if needed > max_size:
                    return HELLO_MALFORMED
            if take < length:  # a partial record
                return HELLO_MORE
            at += 5 + length
        return _hello_parse(message + 4, needed - 4)
    finally:
        PyMem_Free(message)
        PyBuffer_Release(&view)
