"""A timeout that is set again and again and seldom reached, in pure Python: the twin of
fastfog/hot/deadline.pxi.

A kept-alive client connection moves through a deadline per phase of every
request: the next head, sending the request, relaying the response. Making and
cancelling a loop timer for each (three per request) costs more than the rest
of the bookkeeping. ``Deadline`` keeps one loop timer and only moves the time
it stands for: when the timer fires before that time, it is set again for the
rest; it is made anew only when a deadline comes earlier than the timer.
"""


class Deadline:
    """At most one pending ``callback``, called once its deadline has passed."""

    __slots__ = ("_loop", "_handle", "_due", "_when", "_callback")

    def __init__(self, loop):
        self._loop = loop
        self._handle = None  # the loop timer, due at _due (never later than _when while one waits)
        self._due = self._when = 0.0
        self._callback = None

    def set(self, seconds, callback):
        """Call ``callback()`` ``seconds`` from now, unless set again or cleared before; 0 clears."""
        if not seconds:
            self._callback = None
            return
        when = self._loop.time() + seconds
        self._when, self._callback = when, callback
        if self._handle is None or self._due > when:
            if self._handle is not None:
                self._handle.cancel()
            self._due = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self):
        """Nothing waits any more; the timer stays, to serve the next ``set`` (see cancel)."""
        self._callback = None

    def cancel(self):
        """Clear and drop the timer too: the connection is closing."""
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
