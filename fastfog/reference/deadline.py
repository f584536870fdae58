"""Connection deadlines on one timer structure per loop, in pure Python: the twin of
fastfog/hot/deadline.pxi.

Every deadline of a connection (its next head, a forwarded request's phases, a
dial, a TLS handshake, a last answer's linger) is a ``Deadline``, and all of one
loop's are kept in one ``Timers``: a binary heap with one loop timer, armed for
its earliest entry. A kept-alive request sets and clears three deadlines, so
that is made cheap: each deadline holds one place in the heap (it knows where),
keyed by a time no later than its own; setting it later only changes its own
time, and clearing it only drops its callback. When its place comes due, a
deadline moved later goes back into the heap at its time, and a cleared one
leaves. Only an earlier time moves it up the heap (and the loop timer, when it
becomes the earliest); ``cancel`` (the connection is closing) takes it out at
once. A callback that raises is reported to the loop's exception handler, and
the other deadlines due with it are still called.
"""

import weakref

from fastfog.reference.relay import PerLoop


class Timers:
    """The pending deadlines of one loop, earliest first (``timers_for(loop)``)."""

    __slots__ = ("_loop", "_heap", "handle", "_armed")

    def __init__(self, loop):
        self._loop = weakref.ref(loop)  # the loop holds us (through our timer); we must not hold it
        self._heap = []
        self.handle = None  # the loop timer, due at _armed
        self._armed = 0.0

    def __len__(self):
        return len(self._heap)

    def place(self, deadline):
        """``deadline`` was set to its ``_when``: make sure its place comes no later."""
        heap = self._heap
        if deadline._index < 0:
            deadline._key, deadline._index = deadline._when, len(heap)
            heap.append(deadline)
            self._sift_up(deadline._index)
        elif deadline._when < deadline._key:
            deadline._key = deadline._when
            self._sift_up(deadline._index)
        else:
            return  # later: its place comes first, and it goes back in at its time then
        earliest = heap[0]._key
        if self.handle is None or earliest < self._armed:
            self._arm(earliest)

    def remove(self, deadline):
        heap = self._heap
        index, last = deadline._index, heap.pop()
        deadline._index = -1
        if last is not deadline:  # the last one fills the hole, then finds its place
            heap[index], last._index = last, index
            self._sift_down(self._sift_up(index))
        # The loop timer stays: when it fires with nothing due, it is set for what is.

    def _arm(self, when):
        if self.handle is not None:
            self.handle.cancel()
        self._armed, self.handle = when, self._loop().call_at(when, self._run)

    def _run(self):
        self.handle = None
        loop, heap = self._loop(), self._heap
        now = loop.time()
        while heap and heap[0]._key <= now:
            deadline = heap[0]
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
            self._arm(heap[0]._key)

    def _sift_up(self, index):
        heap = self._heap
        moving = heap[index]
        while index > 0:
            parent = (index - 1) >> 1
            above = heap[parent]
            if above._key <= moving._key:
                break
            heap[index], above._index = above, index
            index = parent
        heap[index], moving._index = moving, index
        return index

    def _sift_down(self, index):
        heap = self._heap
        count, moving = len(heap), heap[index]
        while True:
            child = 2 * index + 1
            if child >= count:
                break
            if child + 1 < count and heap[child + 1]._key < heap[child]._key:
                child += 1
            below = heap[child]
            if moving._key <= below._key:
                break
            heap[index], below._index = below, index
            index = child
        heap[index], moving._index = moving, index
        return index


_timers = PerLoop(Timers)


def timers_for(loop):
    """The Timers of ``loop``, made on first use."""
    return _timers.get(loop)


class Deadline:
    """At most one pending ``callback``, called once its deadline has passed."""

    __slots__ = ("_loop", "_timers", "_callback", "_when", "_key", "_index")

    def __init__(self, loop):
        self._loop, self._timers = loop, timers_for(loop)
        self._callback = None
        self._when = self._key = 0.0  # its time; its place's (never later while it waits)
        self._index = -1  # its place in the heap, or -1: none

    def set(self, seconds, callback):
        """Call ``callback()`` ``seconds`` from now, unless set again or cleared before; 0 clears."""
        if not seconds:
            self._callback = None
            return
        self._when, self._callback = self._loop.time() + seconds, callback
        self._timers.place(self)

    def clear(self):
        """Nothing waits any more; the place stays, to serve the next ``set`` (see cancel)."""
        self._callback = None

    def cancel(self):
        """Clear, and give the place up too: the connection is closing."""
        self._callback = None
        if self._index >= 0:
            self._timers.remove(self)
