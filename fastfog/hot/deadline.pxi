# The reusable timeout of a client connection's phases, compiled. Twin, and the
# description: fastfog/reference/deadline.py. A kept-alive connection sets and
# clears it three times per request; here that is a few C comparisons, and the
# loop's timer is made again only when a deadline comes earlier than it.

@cython.final
cdef class Deadline:
    """At most one pending ``callback``, called once its deadline has passed (same API as
    fastfog.reference.deadline.Deadline)."""
    cdef object _loop, _callback
    cdef readonly object _handle
    cdef double _due, _when

    def __init__(self, loop):
        self._loop = loop

    cpdef set(self, seconds, callback):
        if not seconds:
            self._callback = None
            return
        cdef double when = self._loop.time() + seconds
        self._when, self._callback = when, callback
        if self._handle is None or self._due > when:
            if self._handle is not None:
                self._handle.cancel()
            self._due = when
            self._handle = self._loop.call_at(when, self._fire)

    cpdef clear(self):
        self._callback = None

    cpdef cancel(self):
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self):
        self._handle = None
        if self._callback is None:
            return
        if self._loop.time() < self._when:  # moved later since the timer was made
            self._due = self._when
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        callback, self._callback = self._callback, None
        callback()
