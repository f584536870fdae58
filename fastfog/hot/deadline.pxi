# Connection deadlines on one timer structure per loop, compiled. Twin, and the
# description: fastfog/reference/deadline.py. Setting a deadline later and clearing
# it are a store; an earlier one moves up a heap of typed objects; the loop's timer
# is made again only when the earliest place comes earlier than it.

cdef class Deadline


@cython.final
cdef class Timers:
    """The pending deadlines of one loop, earliest first (same API as the twin's)."""
    cdef object _loop_ref  # the loop holds us (through our timer); we must not hold it
    cdef list _heap
    cdef readonly object handle
    cdef double _armed

    def __init__(self, loop):
        self._loop_ref = _weakref.ref(loop)
        self._heap = []

    def __len__(self):
        return len(self._heap)

    cdef place(self, Deadline deadline):
        cdef list heap = self._heap
        cdef double earliest
        if deadline._index < 0:
            deadline._key, deadline._index = deadline._when, len(heap)
            heap.append(deadline)
            self._sift_up(deadline._index)
        elif deadline._when < deadline._key:
            deadline._key = deadline._when
            self._sift_up(deadline._index)
        else:
            return  # later: its place comes first, and it goes back in at its time then
        earliest = (<Deadline>heap[0])._key
        if self.handle is None or earliest < self._armed:
            self._arm(earliest)

    cdef remove(self, Deadline deadline):
        cdef list heap = self._heap
        cdef Py_ssize_t index = deadline._index
        cdef Deadline last = <Deadline>heap.pop()
        deadline._index = -1
        if last is not deadline:  # the last one fills the hole, then finds its place
            heap[index] = last
            last._index = index
            self._sift_down(self._sift_up(index))

    cdef _arm(self, double when):
        if self.handle is not None:
            self.handle.cancel()
        self._armed = when
        self.handle = self._loop_ref().call_at(when, self._run)

    def _run(self):
        cdef list heap = self._heap
        cdef Deadline deadline
        self.handle = None
        loop = self._loop_ref()
        cdef double now = loop.time()
        while heap and (<Deadline>heap[0])._key <= now:
            deadline = <Deadline>heap[0]
            if deadline._callback is not None and deadline._when > now:  # set later meanwhile
                deadline._key = deadline._when
                self._sift_down(0)
                continue
            self.remove(deadline)
            callback, deadline._callback = deadline._callback, None
            if callback is None:  # cleared
                continue
            try:
                callback()
            except Exception as err:  # one connection's bug: the others due now are still called
                loop.call_exception_handler({"message": "error in a deadline's callback", "exception": err})
        if heap and self.handle is None:
            self._arm((<Deadline>heap[0])._key)

    cdef Py_ssize_t _sift_up(self, Py_ssize_t index):
        cdef list heap = self._heap
        cdef Deadline moving = <Deadline>heap[index], above
        cdef Py_ssize_t parent
        while index > 0:
            parent = (index - 1) >> 1
            above = <Deadline>heap[parent]
            if above._key <= moving._key:
                break
            heap[index] = above
            above._index = index
            index = parent
        heap[index] = moving
        moving._index = index
        return index

    cdef Py_ssize_t _sift_down(self, Py_ssize_t index):
        cdef list heap = self._heap
        cdef Py_ssize_t count = len(heap), child
        cdef Deadline moving = <Deadline>heap[index], below
        while True:
            child = 2 * index + 1
            if child >= count:
                break
            if child + 1 < count and (<Deadline>heap[child + 1])._key < (<Deadline>heap[child])._key:
                child += 1
            below = <Deadline>heap[child]
            if moving._key <= below._key:
                break
            heap[index] = below
            below._index = index
            index = child
        heap[index] = moving
        moving._index = index
        return index


cdef PerLoop _timers = PerLoop(Timers)


cpdef Timers timers_for(loop):
    """The Timers of ``loop``, made on first use."""
    return <Timers>_timers.get(loop)


@cython.final
cdef class Deadline:
    """At most one pending ``callback``, called once its deadline has passed (same API as
    fastfog.reference.deadline.Deadline)."""
    cdef object _loop, _callback
    cdef Timers _timers
    cdef double _when, _key  # its time; its place's (never later while it waits)
    cdef Py_ssize_t _index

    def __init__(self, loop):
        self._loop, self._timers = loop, timers_for(loop)
        self._index = -1

    cpdef set(self, seconds, callback):
        if not seconds:
            self._callback = None
            return
        self._when, self._callback = self._loop.time() + seconds, callback
        self._timers.place(self)

    cpdef clear(self):
        self._callback = None

    cpdef cancel(self):
        self._callback = None
        if self._index >= 0:
            self._timers.remove(self)
