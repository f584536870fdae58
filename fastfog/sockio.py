"""Waiting on raw non-blocking sockets, cheaply.

The event loop's ``sock_recv``/``sock_sendall`` register the socket with the
loop on every call and re-inspect its family and address (each an enum
conversion in the socket module). ``recv`` and ``sendall`` here try the system
call first and wait for readiness on the bare file descriptor only when it
would block, which is the uncommon case on a busy proxy. ``Readiness`` is the
same idea for steps driven by callbacks rather than coroutines.
"""

READ, WRITE = 1, 2


def _wake(future):
    if not future.done():
        future.set_result(None)


async def _ready(loop, fd, add, remove):
    future = loop.create_future()
    add(fd, _wake, future)
    try:
        await future
    finally:
        remove(fd)


async def recv(loop, sock, size):
    """Up to ``size`` bytes, b"" at end of stream."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await _ready(loop, sock.fileno(), loop.add_reader, loop.remove_reader)


async def sendall(loop, sock, data):
    """All of ``data``, waiting while the send buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await _ready(loop, sock.fileno(), loop.add_writer, loop.remove_writer)


class Readiness:
    """At most one readiness registration with the loop at a time, for a step driven by callbacks.

    Asking again for what is registered already costs nothing; asking for another socket,
    direction or callback replaces the registration, so a step that moves between sockets and
    states never leaves a stale one behind.
    """

    __slots__ = ("_loop", "_fd", "_kind", "_callback")

    def __init__(self, loop):
        self._loop = loop
        self._fd = -1
        self._kind = 0
        self._callback = None

    def read(self, fd, callback):
        if self._fd != fd or self._kind != READ or self._callback != callback:
            self.clear()
            self._loop.add_reader(fd, callback)
            self._fd, self._kind, self._callback = fd, READ, callback

    def write(self, fd, callback):
        if self._fd != fd or self._kind != WRITE or self._callback != callback:
            self.clear()
            self._loop.add_writer(fd, callback)
            self._fd, self._kind, self._callback = fd, WRITE, callback

    def clear(self):
        if self._kind == READ:
            self._loop.remove_reader(self._fd)
        elif self._kind == WRITE:
            self._loop.remove_writer(self._fd)
        self._fd, self._kind, self._callback = -1, 0, None
