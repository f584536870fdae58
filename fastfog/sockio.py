"""Waiting on raw non-blocking sockets, cheaply.

The event loop's ``sock_recv``/``sock_sendall`` register the socket with the
loop on every call and re-inspect its family and address (each an enum
conversion in the socket module). ``recv`` and ``sendall`` here try the system
call first and wait for readiness on the bare file descriptor only when it
would block, which is the uncommon case on a busy proxy. ``LevelWatch`` is the
same idea for steps driven by callbacks rather than coroutines, where the
proxy's edge poller (``hotpaths.EdgeWatch``) does not serve.
"""


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


class LevelWatch:
    """The EdgeWatch interface (see fastfog.reference.relay) over the loop's own registrations.

    For sockets whose readiness the kernel alone does not know, such as a TLS socket that holds
    decrypted bytes no edge announces, and for steps that own a socket only briefly.
    ``readable`` and ``writable`` always say "try": the owner reads and writes until EAGAIN.
    ``wait_read``/``wait_write`` call back once at the next readiness; the registration stays
    while the owner keeps waiting the same way and goes at ``cancel()``, so another user of the
    socket (a relay, a final answer) never finds one left behind.
    """

    __slots__ = ("_loop", "fd", "_on_read", "_on_write", "_reading", "_writing")

    readable = writable = True

    def __init__(self, loop, fd):
        self._loop, self.fd = loop, fd
        self._on_read = self._on_write = None
        self._reading = self._writing = False

    def wait_read(self, callback):
        self._on_read = callback
        if not self._reading:
            self._reading = True
            self._loop.add_reader(self.fd, self._readable)

    def wait_write(self, callback):
        self._on_write = callback
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self.fd, self._writable)

    def receive(self, sock, size, callback):
        """As EdgeWatch.receive; only EAGAIN says a TLS socket has nothing more."""
        try:
            return sock.recv(size)
        except BlockingIOError:
            self.wait_read(callback)
            return None

    def _readable(self):
        callback, self._on_read = self._on_read, None
        if callback is None:  # nobody waits any more
            self._reading = False
            self._loop.remove_reader(self.fd)
        else:
            callback()

    def _writable(self):
        callback, self._on_write = self._on_write, None
        if callback is None:
            self._writing = False
            self._loop.remove_writer(self.fd)
        else:
            callback()

    def cancel(self):
        self._on_read = self._on_write = None
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.fd)

    remove = forget = cancel
