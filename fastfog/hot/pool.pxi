# Idle upstream connections for forwarded requests, compiled. Twin:
# fastfog/reference/pool.py; fastfog/pool.py describes the pool. A kept-alive
# request takes one connection and gives one back: here that is a dict lookup,
# a list pop and push, a C peek, and typed fields.

from fastfog.reference.pool import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_IDLE, DEFAULT_MAX_IDLE_PER_HOST


@cython.final
cdef class _Idle:
    """A pooled connection: its socket, its watch, the names its owner wants back, and since
    when it has been idle."""
    cdef UpstreamPool pool
    cdef object key, sock, watch, names
    cdef double since

    def server_spoke(self):
        """Bytes or the end of the stream while idle: the connection can serve no request."""
        self.pool._drop(self)

    cdef close(self):
        if self.watch is not None:
            self.watch.forget()
        self.sock.close()


@cython.final
cdef class UpstreamPool:
    """Idle sockets by (address, port), newest first (same API as the twin's)."""
    cdef public long long max_idle, max_idle_per_host
    cdef public double idle_seconds
    cdef dict _idle
    cdef long long _count

    def __init__(self, max_idle=0, max_idle_per_host=0, idle_seconds=0.0):
        self.max_idle = max_idle or DEFAULT_MAX_IDLE
        self.max_idle_per_host = max_idle_per_host or DEFAULT_MAX_IDLE_PER_HOST
        self.idle_seconds = idle_seconds or DEFAULT_IDLE_SECONDS
        self._idle = {}

    def __len__(self):
        return self._count

    cpdef take(self, address, port):
        cdef list stack = self._idle.get((address, port))
        cdef _Idle idle
        if not stack:
            return None
        cdef double now = _monotonic()
        while stack:
            idle = <_Idle>stack.pop()
            self._count -= 1
            if idle.watch is not None:
                _watch_cancel(idle.watch)
            if now - idle.since < self.idle_seconds and still_open(idle.sock):
                return idle.sock, idle.watch, idle.names
            idle.close()
        return None

    cpdef give(self, address, port, sock, watch=None, names=None):
        key = (address, port)
        cdef list stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = []
        cdef _Idle idle = _Idle.__new__(_Idle)
        idle.pool, idle.key, idle.sock, idle.watch, idle.names = self, key, sock, watch, names
        idle.since = _monotonic()
        full = len(stack) >= self.max_idle_per_host or self._count >= self.max_idle
        if full or (watch is not None and watch.hung_up):  # the server already said it is closing
            idle.close()
            return
        stack.append(idle)
        self._count += 1
        if watch is not None:
            if type(watch) is EdgeWatch:
                (<EdgeWatch>watch).wait_read(idle.server_spoke)
            else:
                watch.wait_read(idle.server_spoke)

    cdef _drop(self, _Idle idle):
        cdef list stack = self._idle.get(idle.key)
        if stack is not None and idle in stack:
            stack.remove(idle)
            self._count -= 1
        idle.close()

    def close(self):
        cdef _Idle idle
        for stack in self._idle.values():
            for idle in stack:
                idle.close()
        self._idle.clear()
        self._count = 0
