# Metric series as C counters: the twins of fastfog/reference/series.py, whose
# docstring gives the API. Counts are 64-bit integers (a counter, a bucket, an
# integer sum) and a double for the fractional sum: an update is a few C
# additions, and nothing here is ever tracked by the cyclic collector.

cdef enum:
    SERIES_MAX_BOUNDS = 32


@cython.final
@cython.freelist(64)
cdef class Count:
    """A counter; same API as fastfog.reference.series.Count."""
    cdef public long long value

    def __init__(self, long long value=0):
        self.value = value

    cpdef add(self, long long n=1):
        self.value += n


@cython.final
cdef class Histogram:
    """Counts per bucket, their sum and count; same API as fastfog.reference.series.Histogram."""
    cdef readonly tuple bounds
    cdef double limits[SERIES_MAX_BOUNDS]
    cdef long long counts[SERIES_MAX_BOUNDS]
    cdef int size
    cdef long long whole
    cdef double fraction
    cdef bint floats
    cdef readonly long long count

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        if len(self.bounds) > SERIES_MAX_BOUNDS:
            raise ValueError(f"at most {SERIES_MAX_BOUNDS} bucket bounds")
        self.size = len(self.bounds)
        for index, bound in enumerate(self.bounds):
            self.limits[index] = bound
            self.counts[index] = 0
        self.whole, self.fraction, self.floats, self.count = 0, 0.0, False, 0

    cpdef observe(self, value):
        cdef double number = value
        cdef int low = 0, high = self.size, middle
        while low < high:  # bisect_left: the first bound not below the value
            middle = (low + high) >> 1
            if self.limits[middle] < number:
                low = middle + 1
            else:
                high = middle
        if low < self.size:
            self.counts[low] += 1
        if type(value) is int:
            self.whole += <long long>value
        else:
            self.fraction += number
            self.floats = True
        self.count += 1

    @property
    def sum(self):
        return self.whole + self.fraction if self.floats else self.whole

    def slots(self):
        return [self.counts[index] for index in range(self.size)] + [self.sum, self.count]


@cython.final
cdef class TunnelSeries:
    """One role and project's tunnel-close series; same API as fastfog.reference.series.TunnelSeries."""
    cdef readonly Count closes
    cdef readonly Count active
    cdef readonly Histogram duration
    cdef readonly Histogram bytes_in
    cdef readonly Histogram bytes_out

    def __init__(self, Count closes, Count active, Histogram duration, Histogram bytes_in, Histogram bytes_out):
        self.closes, self.active = closes, active
        self.duration, self.bytes_in, self.bytes_out = duration, bytes_in, bytes_out

    cpdef closed(self, double duration, long long bytes_in, long long bytes_out, bint active_at_termination):
        self.closes.value += 1
        if active_at_termination:
            self.active.value += 1
        self.duration.observe(duration)
        self.bytes_in.observe(bytes_in)
        self.bytes_out.observe(bytes_out)
