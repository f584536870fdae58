# Log records as bytes, and connection ids: the twins of fastfog/reference/record.py,
# whose docstring gives the format. Here a record is written straight into one
# growing C buffer: no intermediate strings, no per-value Python calls for the
# str, int, bool and None values that make up nearly every record.

from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject, PyObject_Hash
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite, isnan, nearbyint
from libc.time cimport time_t, tm
from posix.time cimport CLOCK_REALTIME

from fastfog.reference.record import json_value as _json_value
from fastfog.reference.record import rfc3339 as _rfc3339_reference

cdef extern from "<time.h>" nogil:
    tm* gmtime_r(const time_t* timep, tm* result)

cdef long long rfc3339_second = -1
cdef char rfc3339_text[32]  # "YYYY-MM-DDTHH:MM:SS" of rfc3339_second, then the fraction

cdef const char* HEX_DIGITS = b"0123456789abcdef"
cdef const char* BASE32HEX = b"0123456789abcdefghijklmnopqrstuv"


cdef struct _Out:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity


cdef int _reserve(_Out* out, Py_ssize_t more) except -1:
    cdef Py_ssize_t capacity
    cdef char* grown
    if out.length + more <= out.capacity:
        return 0
    capacity = max(out.capacity * 2, out.length + more)
    grown = <char*>PyMem_Realloc(out.data, capacity)
    if grown == NULL:
        raise MemoryError()
    out.data, out.capacity = grown, capacity
    return 0


cdef int _put(_Out* out, const char* data, Py_ssize_t length) except -1:
    _reserve(out, length)
    memcpy(out.data + out.length, data, length)
    out.length += length
    return 0


cdef int _put_escaped(_Out* out, const unsigned char* text, Py_ssize_t length) except -1:
    """A JSON string body: quotes, backslashes and control characters escaped as json does."""
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef char* p
    _reserve(out, length * 6 + 2)  # the worst case: every byte a \u00XX
    p = out.data + out.length
    p[0] = b'"'
    p += 1
    for i in range(length):
        c = text[i]
        if c >= 0x20 and c != b'"' and c != b'\\':
            p[0] = c
            p += 1
            continue
        p[0] = b'\\'
        if c == b'"' or c == b'\\':
            p[1] = c
        elif c == b'\n':
            p[1] = b'n'
        elif c == b'\r':
            p[1] = b'r'
        elif c == b'\t':
            p[1] = b't'
        elif c == 0x08:
            p[1] = b'b'
        elif c == 0x0c:
            p[1] = b'f'
        else:
            p[1], p[2], p[3], p[4], p[5] = b'u', b'0', b'0', HEX_DIGITS[c >> 4], HEX_DIGITS[c & 15]
            p += 6
            continue
        p += 2
    p[0] = b'"'
    out.length = p + 1 - out.data
    return 0


cdef int _put_str(_Out* out, object text) except -1:
    cdef Py_ssize_t length
    cdef const char* utf8
    try:
        utf8 = PyUnicode_AsUTF8AndSize(text, &length)
    except UnicodeEncodeError:  # a lone surrogate: as the reference, "?" for what UTF-8 cannot carry
        encoded = (<str>text).encode("utf-8", "replace")
        return _put_escaped(out, <const unsigned char*>PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))
    return _put_escaped(out, <const unsigned char*>utf8, length)


cdef int _put_value(_Out* out, object value) except -1:
    cdef double number
    if isinstance(value, str):
        return _put_str(out, value)
    if value is None:
        return _put(out, b"null", 4)
    if value is True:
        return _put(out, b"true", 4)
    if value is False:
        return _put(out, b"false", 5)
    if type(value) is int:
        return _put_int(out, value)
    if type(value) is float:
        number = value
        if isfinite(number):
            text = repr(value).encode("ascii")
        else:
            text = b"NaN" if isnan(number) else (b"Infinity" if number > 0 else b"-Infinity")
        return _put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    # Anything else (containers, int and float subclasses, objects written as str): the reference's encoder.
    encoded = (<str>_json_value(value)).encode("utf-8", "replace")
    return _put(out, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded))


# The keys of a record in the order it is written (sorted), each with where its value is
# (0 in the fields; 1-3 the record's own level, msg and time, which win over fields of those
# names) and its text ready to copy ('"key":', with the comma before it past the first). The
# same few record shapes come again and again: each order is remembered under a signature of
# the fields' key set, made without allocating, and checked as it is used (every remembered
# key present, as many fields as keys), so a signature shared by two shapes only costs a
# sort. Bounded: past the bound, new shapes are sorted each time.
@cython.final
cdef class _KeyOrder:
    cdef Py_ssize_t fields  # how many of the keys are the fields' (source 0)
    cdef tuple keys
    cdef bytes sources  # one byte per key: 0, or 1-3 for level, msg, time
    cdef tuple texts


cdef dict _key_orders = {}  # signature -> _KeyOrder
cdef int KEY_ORDERS_MAX = 256
cdef dict _OWN_KEYS = {"level": 1, "msg": 2, "time": 3}


cdef Py_hash_t _shape_signature(dict fields) except? -1:
    """The same for any two dicts with the same keys, whatever their order."""
    cdef Py_ssize_t position = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef uint64_t mixed, signature = <uint64_t>PyDict_Size(fields)
    while PyDict_Next(fields, &position, &key, &value):
        mixed = <uint64_t>PyObject_Hash(<object>key)
        mixed ^= mixed >> 29
        mixed *= <uint64_t>0xbf58476d1ce4e5b9
        signature += mixed ^ (mixed >> 32)
    return <Py_hash_t>(signature & <uint64_t>0x7fffffffffffffff)


cdef bytes _key_text(str key, bint first):
    cdef _Out out
    out.length, out.capacity = 0, 64
    out.data = <char*>PyMem_Malloc(out.capacity)
    if out.data == NULL:
        raise MemoryError()
    try:
        _put(&out, b"{" if first else b",", 1)
        _put_str(&out, key)
        _put(&out, b":", 1)
        return PyBytes_FromStringAndSize(out.data, out.length)
    finally:
        PyMem_Free(out.data)


cdef _KeyOrder _sorted_order(dict fields):
    cdef _KeyOrder order = _KeyOrder.__new__(_KeyOrder)
    keys = sorted(_OWN_KEYS.keys() | set(fields))
    order.keys = tuple(keys)
    order.sources = bytes([_OWN_KEYS.get(key, 0) for key in keys])
    order.texts = tuple([_key_text(key, index == 0) for index, key in enumerate(keys)])
    order.fields = sum(1 for key in keys if key not in _OWN_KEYS)
    return order


cdef int _put_record(_Out* out, _KeyOrder order, dict fields, str level, str msg, str time) except -1:
    """The record in ``order``; 1 if a key of the order is not in ``fields`` (nothing is written then
    that counts: the caller starts over)."""
    cdef Py_ssize_t index
    cdef PyObject* value
    cdef const char* sources = PyBytes_AS_STRING(order.sources)
    cdef char source
    for index in range(PyTuple_GET_SIZE(order.keys)):
        text = <bytes>PyTuple_GET_ITEM(order.texts, index)
        _put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
        source = sources[index]
        if source == 0:
            value = PyDict_GetItem(fields, <object>PyTuple_GET_ITEM(order.keys, index))
            if value == NULL:
                return 1
            _put_value(out, <object>value)
        else:
            _put_str(out, level if source == 1 else msg if source == 2 else time)
    _put(out, b"}\n", 2)
    return 0


cdef int _put_int(_Out* out, object value) except -1:
    """A Python int's decimal digits, without a str in between when it fits 64 bits."""
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(value, &overflow)
    cdef unsigned long long magnitude
    cdef char digits[24]
    cdef int at = 24
    if overflow:
        text = str(value).encode("ascii")
        return _put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    magnitude = <unsigned long long>(-(number + 1)) + 1 if number < 0 else <unsigned long long>number
    while True:
        at -= 1
        digits[at] = c'0' + <char>(magnitude % 10)
        magnitude //= 10
        if magnitude == 0:
            break
    if number < 0:
        at -= 1
        digits[at] = b'-'
    return _put(out, digits + at, 24 - at)


def json_line(dict fields, str level, str msg, str time):
    return _json_line(fields, level, msg, time)


cdef bytes _json_line(dict fields, str level, str msg, str time):
    cdef _Out out
    cdef Py_hash_t signature = _shape_signature(fields)
    cdef _KeyOrder order = <_KeyOrder>_key_orders.get(signature)
    out.length, out.capacity = 0, 512
    out.data = <char*>PyMem_Malloc(out.capacity)
    if out.data == NULL:
        raise MemoryError()
    try:
        if order is None or order.fields != PyDict_Size(fields) or _put_record(&out, order, fields, level, msg, time):
            out.length = 0
            order = _sorted_order(fields)
            _put_record(&out, order, fields, level, msg, time)
            if order.fields == PyDict_Size(fields) and len(_key_orders) < KEY_ORDERS_MAX:
                _key_orders[signature] = order  # (a signature two shapes share: the latest one's)
        return PyBytes_FromStringAndSize(out.data, out.length)
    finally:
        PyMem_Free(out.data)


cdef class IdSource:
    """Connection ids; same API as fastfog.reference.record.IdSource."""
    cdef unsigned char machine[5]
    cdef uint32_t counter

    def __init__(self, machine=None, counter=None):
        cdef bytes chosen = os.urandom(5) if machine is None else bytes(machine)
        if len(chosen) != 5:
            raise ValueError("machine must be 5 bytes")
        memcpy(self.machine, PyBytes_AS_STRING(chosen), 5)
        self.counter = (int.from_bytes(os.urandom(3), "big") if counter is None else counter) & 0xFFFFFF

    def next(self):
        return self._next()

    cdef str _next(self):
        cdef unsigned char raw[13]
        cdef char text[20]
        cdef timespec clock
        cdef uint32_t now
        clock_gettime(CLOCK_REALTIME, &clock)  # not time(): its coarse clock can lag time.time() by a tick
        now = <uint32_t>clock.tv_sec
        cdef int bit, i, value
        self.counter = (self.counter + 1) & 0xFFFFFF
        raw[0], raw[1], raw[2], raw[3] = (now >> 24) & 255, (now >> 16) & 255, (now >> 8) & 255, now & 255
        memcpy(raw + 4, self.machine, 5)
        raw[9], raw[10], raw[11] = (self.counter >> 16) & 255, (self.counter >> 8) & 255, self.counter & 255
        raw[12] = 0  # padding: the 20th character holds the last bit and four zero bits
        for i in range(20):
            bit = i * 5
            value = ((raw[bit >> 3] << 8) | raw[(bit >> 3) + 1]) >> (11 - (bit & 7))
            text[i] = BASE32HEX[value & 31]
        return PyUnicode_DecodeASCII(text, 20, NULL)


cdef inline void _two_digits(char* at, int value) noexcept:
    at[0] = c'0' + value // 10
    at[1] = c'0' + value % 10


def rfc3339(double timestamp):
    return _rfc3339(timestamp)


cdef str _rfc3339(double timestamp):
    global rfc3339_second
    cdef long long seconds
    cdef long long nanos
    cdef tm parts
    cdef time_t whole
    cdef int length = 19, digit
    if not (0 <= timestamp < 253402300799.0):  # outside years 1970-9999: the reference's rules
        return _rfc3339_reference(timestamp)
    seconds = <long long>timestamp
    nanos = <long long>nearbyint((timestamp - seconds) * 1e9)  # round half to even, as Python's round()
    if nanos >= 1000000000:
        seconds, nanos = seconds + 1, nanos - 1000000000
    if seconds != rfc3339_second:
        whole = <time_t>seconds
        gmtime_r(&whole, &parts)
        digit = parts.tm_year + 1900
        _two_digits(rfc3339_text, digit // 100)
        _two_digits(rfc3339_text + 2, digit % 100)
        rfc3339_text[4] = b'-'
        _two_digits(rfc3339_text + 5, parts.tm_mon + 1)
        rfc3339_text[7] = b'-'
        _two_digits(rfc3339_text + 8, parts.tm_mday)
        rfc3339_text[10] = b'T'
        _two_digits(rfc3339_text + 11, parts.tm_hour)
        rfc3339_text[13] = b':'
        _two_digits(rfc3339_text + 14, parts.tm_min)
        rfc3339_text[16] = b':'
        _two_digits(rfc3339_text + 17, parts.tm_sec)
        rfc3339_second = seconds
    if nanos:
        rfc3339_text[19] = b'.'
        for digit in range(9):
            rfc3339_text[28 - digit] = c'0' + nanos % 10
            nanos //= 10
        length = 29
        while rfc3339_text[length - 1] == c'0':
            length -= 1
    rfc3339_text[length] = b'Z'
    return PyUnicode_DecodeASCII(rfc3339_text, length + 1, NULL)


cdef inline double _now() noexcept:
    """time.time(), as CPython computes it: the realtime clock in nanoseconds, then seconds."""
    cdef timespec clock
    clock_gettime(CLOCK_REALTIME, &clock)
    return <double>(<long long>clock.tv_sec * 1000000000 + clock.tv_nsec) / 1e9


@cython.final
cdef class RecordBatch:
    """A log's records between two writes (same API as fastfog.reference.record.RecordBatch,
    which documents it); JSON records are formatted without leaving C."""
    cdef readonly list lines
    cdef object _format, _schedule
    cdef bint _json

    def __init__(self, format, schedule):
        self.lines = []
        self._format, self._schedule = format, schedule
        self._json = format is json_line

    cpdef add(self, str level, msg, fields=None):
        cdef str stamp = _rfc3339(_now())
        if self._json:
            line = _json_line(fields if fields else {}, level, msg, stamp)
        else:
            line = self._format(fields if fields else {}, level, msg, stamp)
        if not self.lines:
            self._schedule()
        self.lines.append(line)

    def info(self, msg, fields=None):
        self.add("info", msg, fields)

    def warning(self, msg, fields=None):
        self.add("warning", msg, fields)

    def error(self, msg, fields=None):
        self.add("error", msg, fields)

    def take(self):
        lines, self.lines = self.lines, []
        return lines
