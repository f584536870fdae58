# Longest-prefix match: a binary search over sorted disjoint address ranges.
#
# compile_ranges (fastfog/reference/cidr.py) turns the entries into ranges
# once per table; here they live in C arrays, IPv4 as uint32 and IPv6 as
# (high, low) uint64 pairs, and a lookup is one search without allocating.

cdef struct V6:
    uint64_t hi
    uint64_t lo

cdef inline bint _v6_le(V6 a, V6 b) noexcept nogil:
    return a.hi < b.hi or (a.hi == b.hi and a.lo <= b.lo)


cdef inline V6 _v6_from_packed(const unsigned char* p) noexcept nogil:
    cdef V6 v
    cdef int i
    v.hi = 0
    v.lo = 0
    for i in range(8):
        v.hi = (v.hi << 8) | p[i]
        v.lo = (v.lo << 8) | p[8 + i]
    return v


cdef inline uint32_t _v4_from_packed(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline bint _is_mapped(const unsigned char* p) noexcept nogil:
    cdef int i
    for i in range(10):
        if p[i] != 0:
            return False
    return p[10] == 0xFF and p[11] == 0xFF


cdef class CidrTable:
    """Longest-prefix match from IP addresses (and ports) to values.

    Same API and rules as fastfog.reference.cidr.CidrTable.
    """
    cdef uint32_t* _v4_starts
    cdef uint32_t* _v4_ends
    cdef Py_ssize_t _v4_count
    cdef V6* _v6_starts
    cdef V6* _v6_ends
    cdef Py_ssize_t _v6_count
    cdef list _v4_values
    cdef list _v6_values
    cdef dict _ports

    def __cinit__(self):
        self._v4_starts = self._v4_ends = NULL
        self._v6_starts = self._v6_ends = NULL
        self._v4_count = self._v6_count = 0

    def __init__(self, entries):
        cdef Py_ssize_t i
        v4, v6, self._ports = compile_ranges(entries)
        starts, ends, self._v4_values = v4
        self._v4_count = len(starts)
        self._v4_starts = <uint32_t*>PyMem_Malloc(max(self._v4_count, 1) * sizeof(uint32_t))
        self._v4_ends = <uint32_t*>PyMem_Malloc(max(self._v4_count, 1) * sizeof(uint32_t))
        if self._v4_starts == NULL or self._v4_ends == NULL:
            raise MemoryError()
        for i in range(self._v4_count):
            self._v4_starts[i] = starts[i]
            self._v4_ends[i] = ends[i]
        starts, ends, self._v6_values = v6
        self._v6_count = len(starts)
        self._v6_starts = <V6*>PyMem_Malloc(max(self._v6_count, 1) * sizeof(V6))
        self._v6_ends = <V6*>PyMem_Malloc(max(self._v6_count, 1) * sizeof(V6))
        if self._v6_starts == NULL or self._v6_ends == NULL:
            raise MemoryError()
        for i in range(self._v6_count):
            self._v6_starts[i].hi = starts[i] >> 64
            self._v6_starts[i].lo = starts[i] & 0xFFFFFFFFFFFFFFFF
            self._v6_ends[i].hi = ends[i] >> 64
            self._v6_ends[i].lo = ends[i] & 0xFFFFFFFFFFFFFFFF

    def __dealloc__(self):
        PyMem_Free(self._v4_starts)
        PyMem_Free(self._v4_ends)
        PyMem_Free(self._v6_starts)
        PyMem_Free(self._v6_ends)

    cdef Py_ssize_t _find_v4(self, uint32_t x) noexcept nogil:
        """Index of the range holding x, or -1."""
        cdef Py_ssize_t lo = 0, hi = self._v4_count, mid
        while lo < hi:  # first start > x
            mid = (lo + hi) >> 1
            if self._v4_starts[mid] <= x:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and x <= self._v4_ends[lo - 1]:
            return lo - 1
        return -1

    cdef Py_ssize_t _find_v6(self, V6 x) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._v6_count, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if _v6_le(self._v6_starts[mid], x):
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and _v6_le(x, self._v6_ends[lo - 1]):
            return lo - 1
        return -1

    def lookup(self, address, port=None, default=None):
        """The value of the longest prefix holding ``address`` (str or packed bytes), else ``default``."""
        cdef unsigned char buf[16]
        cdef const unsigned char* p
        cdef Py_ssize_t size, i
        cdef const char* text
        cdef bytes encoded
        if type(address) is str:
            encoded = (<str>address).encode("utf-8", "surrogatepass")
            text = PyBytes_AS_STRING(encoded)
            if <Py_ssize_t>strlen(text) != PyBytes_GET_SIZE(encoded):
                raise ValueError(f"invalid IP address: {address!r}")
            if memchr(text, 0x3A, PyBytes_GET_SIZE(encoded)) != NULL:
                size = 16
                ok = inet_pton(AF_INET6, text, buf) == 1
            else:
                size = 4
                ok = inet_pton(AF_INET, text, buf) == 1
            if not ok:
                raise ValueError(f"invalid IP address: {address!r}")
            p = buf
        elif type(address) is bytes:
            size = PyBytes_GET_SIZE(address)
            if size != 4 and size != 16:
                raise ValueError(f"a packed IP address has 4 or 16 bytes, not {size}")
            p = <const unsigned char*>PyBytes_AS_STRING(address)
        else:
            raise TypeError(f"an IP address is str or bytes, not {type(address).__name__}")
        if size == 16 and _is_mapped(p):
            p += 12
            size = 4
        if port is not None and self._ports:
            value = self._ports.get((PyBytes_FromStringAndSize(<const char*>p, size), port), self)
            if value is not self:
                return value
        if size == 4:
            i = self._find_v4(_v4_from_packed(p))
            return default if i < 0 else self._v4_values[i]
        i = self._find_v6(_v6_from_packed(p))
        return default if i < 0 else self._v6_values[i]
