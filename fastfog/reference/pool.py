"""Idle upstream connections for forwarded HTTP requests, kept for reuse, in pure Python: the twin
of fastfog/hot/pool.pxi. fastfog/pool.py describes the pool."""

import time

from fastfog.reference.relay import still_open

DEFAULT_MAX_IDLE = 100
DEFAULT_MAX_IDLE_PER_HOST = 100
DEFAULT_IDLE_SECONDS = 90.0


class _Idle:
    """A pooled connection: its socket, its watch (an EdgeWatch, or None), the names its owner
    wants back, and since when it has been idle."""

    __slots__ = ("pool", "key", "sock", "watch", "names", "since")

    def __init__(self, pool, key, sock, watch, names):
        self.pool, self.key, self.sock, self.watch, self.names = pool, key, sock, watch, names
        self.since = time.monotonic()

    def server_spoke(self):
        """Bytes or the end of the stream while idle: the connection can serve no request."""
        self.pool._drop(self)

    def close(self):
        if self.watch is not None:
            self.watch.forget()
        self.sock.close()


class UpstreamPool:
    """Idle sockets by (address, port), newest first."""

    def __init__(self, max_idle=0, max_idle_per_host=0, idle_seconds=0.0):
        self.max_idle = max_idle or DEFAULT_MAX_IDLE
        self.max_idle_per_host = max_idle_per_host or DEFAULT_MAX_IDLE_PER_HOST
        self.idle_seconds = idle_seconds or DEFAULT_IDLE_SECONDS
        self._idle = {}
        self._count = 0

    def __len__(self):
        return self._count

    def take(self, address, port):
        """(socket, watch, names) of an idle connection to ``address:port`` that still looks open, or None."""
        stack = self._idle.get((address, port))
        now = time.monotonic()
        while stack:
            idle = stack.pop()
            self._count -= 1
            if idle.watch is not None:
                idle.watch.cancel()
            if now - idle.since < self.idle_seconds and still_open(idle.sock):
                return idle.sock, idle.watch, idle.names
            idle.close()
        return None

    def give(self, address, port, sock, watch=None, names=None):
        """Keep ``sock`` for reuse, or close it when the pool is full. ``watch``: its readiness (an
        EdgeWatch, kept registered: it tells when the server closes the connection, and is
        forgotten when the socket closes here); ``names``: what the caller wants back with it
        (its local and remote address texts, which do not change)."""
        key = (address, port)
        stack = self._idle.setdefault(key, [])
        idle = _Idle(self, key, sock, watch, names)
        full = len(stack) >= self.max_idle_per_host or self._count >= self.max_idle
        if full or (watch is not None and watch.hung_up):  # the server already said it is closing
            idle.close()
            return
        stack.append(idle)
        self._count += 1
        if watch is not None:
            watch.wait_read(idle.server_spoke)

    def _drop(self, idle):
        stack = self._idle.get(idle.key)
        if stack is not None and idle in stack:
            stack.remove(idle)
            self._count -= 1
        idle.close()

    def close(self):
        for stack in self._idle.values():
            for idle in stack:
                idle.close()
        self._idle.clear()
        self._count = 0

