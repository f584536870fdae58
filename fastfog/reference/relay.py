"""Relaying a tunnel between two TCP sockets with splice(2), in pure Python.

Most tunnels a webhook sender opens carry a few kilobytes each way, so each
direction starts by copying: one recv, sent on at once, through user space.
Once a direction has moved COPY_LIMIT bytes it is bulk: it takes a
non-blocking pipe of its own and from then on bytes go socket → pipe → socket
inside the kernel, never entering user space. Small tunnels never pay for the
pipes; large ones pay once.

Both sockets are added once, edge-triggered, to an epoll set of fastfog's own
(``EdgePoller``), which the event loop watches as one file descriptor: the
loop's own add_reader/remove_reader would cost a poll handle per socket each
time (an ioctl and several epoll_ctl calls over its life, several times per
tunnel). An edge says a socket became readable or writable; each direction
remembers it and moves bytes until a system call says EAGAIN:

- source readable: copy it (or splice it into the pipe, then the pipe) into the destination;
- destination full (EAGAIN with bytes left): stop reading the source until the
  destination's next writable edge; the pipe's capacity bounds what one
  direction can hold, however slow its receiver;
- end of stream from a source: once its bytes are delivered, shut the
  destination down for writing (a half-close travels through; the other
  direction keeps flowing); when both directions have ended, everything is closed;
- an error on either socket (reset, broken pipe) closes both at once.

A direction that has moved BUDGET bytes in one go yields to other connections
and goes on in a later loop iteration (an edge does not come again for bytes
that are already there). The relay counts bytes each way and remembers when
it last saw activity, for the close record and idle checks. ``first_bytes``
(what the client sent after its request head, in the same read) goes to the
upstream before anything else.

Either socket may be TLS (an mTLS client's, ``tls.ClientTLSSocket``: OpenSSL's want-read
and want-write come out of it as BlockingIOError, and its ``shutdown`` sends close_notify
before the TCP half-close). Its bytes pass through OpenSSL in user space anyway, so such a
tunnel copies and never splices; everything else is the same machine. A TLS failure (a bad
record, say) closes the tunnel like a reset, with OpenSSL's reason as the error. Before the
close_notify, the relay reads what that peer has sent already: CPython's shutdown goes on to
read the socket for the peer's close_notify, and OpenSSL drops application data it reads
there. (Bytes that arrive in the microseconds between the two reads are still exposed to
that; a TLS leg over memory BIOs would close the gap.)
"""

import fcntl
import os
import select
import socket
import ssl
import struct
import sys
import time
import weakref

SPLICE_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
CHUNK = 1 << 20
PIPE_SIZE = 1 << 20  # a direction that has moved BULK bytes gets a pipe this large
BULK = 1 << 20
_F_SETPIPE_SZ = 1031
_BUDGET = 16 << 20  # bytes moved per callback before yielding to other connections
COPY_LIMIT = 64 << 10  # bytes a direction copies before it switches to splice
COPY_CHUNK = 64 << 10
_LINGER_RESET = struct.pack("ii", 1, 0)
_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
_HANGUP_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
POLLER_BATCH = 128


class EdgePoller:
    """Edge-triggered readiness for many sockets through one registration with ``loop``.

    ``add(fd, owner)`` calls ``owner.on_events(fd, mask)`` for each edge from then on (a
    socket still registered for an earlier owner changes hands, and its present state comes
    as a fresh edge); ``remove(fd)`` stops that for a socket that stays open (it goes to other hands), and
    ``forget(fd)`` for one about to be closed (closing takes it out of the set), and
    ``adopt(fd, owner)`` gives a registered socket a new owner without re-arming it (the new
    owner takes over what the old one knew). An error in one owner is reported to the loop's
    exception handler; the others still get their edges. ``dispatch()`` handles the edges
    there are now: the loop calls it when the set is readable, and a caller that has just
    started something which may already be done (a loopback connect) may call it at once.
    """

    def __init__(self, loop):
        self._loop = weakref.ref(loop)  # the loop holds us (our reader); we must not hold it
        self._epoll = select.epoll()
        self._owners = {}
        loop.add_reader(self._epoll.fileno(), self.dispatch)

    @property
    def loop(self):
        return self._loop()

    def add(self, fd, owner):
        events = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
        try:
            self._epoll.register(fd, events)
        except FileExistsError:  # handed over by an earlier owner: re-arming reports its state anew
            self._epoll.modify(fd, events)
        self._owners[fd] = owner

    def remove(self, fd):
        if self._owners.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def forget(self, fd):
        self._owners.pop(fd, None)

    def adopt(self, fd, owner):
        self._owners[fd] = owner

    def dispatch(self):
        for fd, mask in self._epoll.poll(0, POLLER_BATCH):
            owner = self._owners.get(fd)
            if owner is not None:
                try:
                    owner.on_events(fd, mask)
                except Exception as err:  # a bug in one owner: the rest of the batch still runs
                    self.loop.call_exception_handler({"message": "error in an edge handler", "exception": err})


class EdgeWatch:
    """One plain socket's readiness from ``poller``'s edges, for a step driven by callbacks.

    Registered once, for as long as the socket stays with its owners. ``readable`` and
    ``writable`` remember an edge until a system call says there is no more: EAGAIN, or a
    read shorter than asked. Nothing is missed by believing them, because
    the kernel signals every later arrival and every freed space with a new edge; so a drained
    socket is never asked again just to hear EAGAIN. The one exception is the end of the
    stream: it may have come with the bytes a short read took, and no edge follows it, so once
    an edge has said the peer hung up a short read no longer counts. A new watch believes
    both, so its owner tries first.

    ``receive(sock, size, callback)`` reads the socket that way: up to ``size`` bytes (b"" at
    its end), or None when it has none now, ``callback()`` then being due at the next arrival;
    other errors are the caller's.

    ``wait_read(callback)`` and ``wait_write(callback)`` call back once, at the next such edge
    (a hang-up or an error wakes both, and sets ``hung_up`` for good); ``cancel()`` drops what
    waits; ``remove()`` hands the socket to something that does not use the poller, and
    ``forget()`` comes before closing it.
    """

    __slots__ = ("_poller", "fd", "readable", "writable", "hung_up", "_on_read", "_on_write")

    def __init__(self, poller, fd):
        self._poller, self.fd = poller, fd
        self.readable = self.writable = True
        self.hung_up = False
        self._on_read = self._on_write = None
        poller.add(fd, self)

    def on_events(self, fd, mask):
        if mask & _HANGUP_EVENTS:
            self.hung_up = True
        if mask & _READ_EVENTS:
            self.readable = True
            callback = self._on_read
            if callback is not None:
                self._on_read = None
                callback()
        if mask & _WRITE_EVENTS:
            self.writable = True
            callback = self._on_write
            if callback is not None:
                self._on_write = None
                callback()

    def wait_read(self, callback):
        self.readable = False
        self._on_read = callback

    def wait_write(self, callback):
        self.writable = False
        self._on_write = callback

    def receive(self, sock, size, callback):
        if not self.readable:
            self.wait_read(callback)
            return None
        try:
            data = sock.recv(size)
        except BlockingIOError:
            self.wait_read(callback)
            return None
        if 0 < len(data) < size and not self.hung_up:
            self.readable = False
        return data

    def cancel(self):
        self._on_read = self._on_write = None

    def remove(self):
        self.cancel()
        self._poller.remove(self.fd)

    def forget(self):
        self.cancel()
        self._poller.forget(self.fd)


def still_open(sock):
    """Whether an idle connection can still carry a request: nothing to read, neither bytes nor
    the end of the stream (the last look a pooled upstream gets before it is reused)."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _grow_pipe(write_end):
    """A larger pipe moves bulk data in fewer system calls; small tunnels keep the default 64 KiB."""
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for this user: the default size works too


class PerLoop:
    """One object per event loop, ``make(loop)`` at its first ``get``, gone with the loop; the
    loop last asked for is answered without a lookup."""

    __slots__ = ("_made", "_make", "_last")

    def __init__(self, make):
        self._made, self._make = weakref.WeakKeyDictionary(), make
        self._last = (None, None)  # the loop last asked for and its object, as one value (threads may race)

    def get(self, loop):
        last = self._last
        if last[0] is loop:
            return last[1]
        found = self._made.get(loop)
        if found is None:
            found = self._made[loop] = self._make(loop)
        self._last = (loop, found)
        return found


_pollers = PerLoop(EdgePoller)


def poller_for(loop):
    """The EdgePoller of ``loop``, made on first use."""
    return _pollers.get(loop)


def is_tls(sock):
    return isinstance(sock, ssl.SSLSocket)


def error_text(err):
    """A relay's ``error`` for a socket's failure: the system's words for its errno, or
    OpenSSL's reason for a TLS one (whose errno is OpenSSL's error kind, not the system's)."""
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    return os.strerror(err.errno) if err.errno else str(err)


class _Direction:
    """One way through the tunnel: src socket → (user space, later a pipe) → dst socket."""

    __slots__ = ("relay", "src", "dst", "pipe_r", "pipe_w", "in_pipe", "pending", "eof", "done",
                 "src_ready", "dst_ready", "scheduled", "moved", "grown")

    def __init__(self, relay, src, dst, pending):
        self.relay = relay
        self.src, self.dst = src, dst
        self.pipe_r = self.pipe_w = None  # opened when the direction outgrows copying
        self.grown = False
        self.in_pipe = 0
        self.pending = pending  # user-space bytes to send before the pipe (first_bytes)
        self.eof = False
        self.done = False
        self.src_ready = False  # an edge said src has bytes (or its end) and no read said EAGAIN since
        self.dst_ready = True  # a fresh connection takes bytes; EAGAIN says otherwise
        self.scheduled = False  # a pump is due in a later loop iteration (the budget ran out)
        self.moved = 0

    def drain(self):
        """Move what waits (pending bytes, then the pipe) into dst; BlockingIOError when it is full."""
        while self.pending:
            sent = self.dst.send(self.pending)
            self.moved += sent
            self.pending = self.pending[sent:]
        while self.in_pipe:
            moved = os.splice(self.pipe_r, self.dst.fileno(), self.in_pipe, flags=SPLICE_FLAGS)
            self.in_pipe -= moved
            self.moved += moved

    def pump(self):
        """Move bytes until src has none, dst takes none, or the budget is spent."""
        relay = self.relay
        budget = relay.budget
        try:
            while not relay.closed:
                if self.pending or self.in_pipe:
                    if not self.dst_ready:
                        return
                    try:
                        self.drain()
                    except BlockingIOError:
                        self.dst_ready = False
                        return
                if self.eof:
                    self._maybe_finish()
                    return
                if not self.src_ready:
                    return
                if budget <= 0:
                    if not self.scheduled:
                        self.scheduled = True
                        relay._loop.call_soon(self._resume)
                    return
                try:
                    received = self._copy() if self.pipe_r is None and self.moved < relay.copy_limit else self._splice()
                except BlockingIOError:
                    self.src_ready = False
                    return
                if received == 0:
                    self.eof = True
                    continue
                budget -= received
                if not self.grown and self.pipe_w is not None and self.moved >= BULK:
                    self.grown = True
                    _grow_pipe(self.pipe_w)
        except OSError as err:
            relay._abort(err)

    def _resume(self):
        self.scheduled = False
        self.pump()

    def _copy(self):
        data = self.src.recv(COPY_CHUNK)
        self.pending = data  # drain() sends it on
        return len(data)

    def _splice(self):
        if self.pipe_r is None:
            self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        received = os.splice(self.src.fileno(), self.pipe_w, CHUNK, flags=SPLICE_FLAGS)
        self.in_pipe += received
        return received

    def _maybe_finish(self):
        if self.eof and not self.in_pipe and not self.pending and not self.done:
            if is_tls(self.dst):
                self.relay._read_before_close_notify(self)
                if self.relay.closed:  # (failed meanwhile)
                    return
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already; the other direction will notice
            self.relay._direction_done()

    def close_pipe(self):
        for fd in (self.pipe_r, self.pipe_w):
            if fd is not None:
                os.close(fd)
        self.pipe_r = self.pipe_w = None


class SpliceRelay:
    """Relays between ``client`` and ``upstream`` (connected, non-blocking sockets) on ``loop``.

    ``on_close(relay)`` is called once, after both sockets are closed. ``bytes_in`` counts
    bytes from the upstream, ``bytes_out`` bytes sent to it; ``error`` is set when a socket
    failed (None after two clean ends of stream or ``close()``).
    """

    budget = _BUDGET  # bytes a direction moves before it lets other connections run

    def __init__(self, loop, client, upstream, on_close, first_bytes=b""):
        self._loop = loop
        self.copy_limit = sys.maxsize if is_tls(client) or is_tls(upstream) else COPY_LIMIT
        self.client, self.upstream = client, upstream
        self._client_fd = client.fileno()
        self._on_close = on_close
        self._outbound = _Direction(self, client, upstream, bytes(first_bytes))
        self._inbound = _Direction(self, upstream, client, b"")
        self._poller = None
        self.error = None
        self.closed = False
        self.last_activity = time.monotonic()

    @property
    def bytes_out(self):
        return self._outbound.moved

    @property
    def bytes_in(self):
        return self._inbound.moved

    def start(self, upstream_watch=None):
        """Begin relaying; first_bytes are sent to the upstream before the client is read.

        ``upstream_watch``: the EdgeWatch the upstream was dialed with, still registered: the
        relay takes the socket over from it as it stands (what it knew of the socket's
        readability included) instead of registering it again."""
        self._poller = poller_for(self._loop)
        try:
            self._poller.add(self._client_fd, self)
            if upstream_watch is None:
                self._poller.add(self.upstream.fileno(), self)
            else:
                self._inbound.src_ready = upstream_watch.readable
                upstream_watch.cancel()
                self._poller.adopt(self.upstream.fileno(), self)
        except OSError as err:
            self._abort(err)
            return
        self._outbound.pump()  # first_bytes; the sockets' first edges come with the next events

    def close(self, reason=None):
        """Close both sockets now (shutdown, idle timeout); ``reason`` becomes ``error``."""
        if not self.closed:
            if reason is not None and self.error is None:
                self.error = reason
            self._close_all()

    def on_events(self, fd, mask):
        """An edge on one of the two sockets (see EdgePoller)."""
        if self.closed:
            return
        self.last_activity = time.monotonic()
        reading, writing = (self._outbound, self._inbound) if fd == self._client_fd else (self._inbound,
                                                                                          self._outbound)
        if mask & _READ_EVENTS:
            reading.src_ready = True
            reading.pump()
        if mask & _WRITE_EVENTS and not self.closed:
            writing.dst_ready = True
            writing.pump()

    def _read_before_close_notify(self, finished):
        """``finished`` is about to send close_notify to its TLS destination: first read what that
        peer has sent already (the edge may not have come yet), since OpenSSL's close_notify step
        reads the socket too, and would drop application data it found there."""
        reverse = self._inbound if finished is self._outbound else self._outbound
        if not reverse.eof:
            reverse.src_ready = True  # a read that finds nothing only says EAGAIN
            reverse.pump()

    def _direction_done(self):
        if self._outbound.done and self._inbound.done:
            self._close_all()

    def _abort(self, err):
        if self.error is None:
            self.error = error_text(err)
        for sock in (self.client, self.upstream):  # reset both peers: neither may think it got everything
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self._close_all()

    def _close_all(self):
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.upstream):
            if self._poller is not None:
                self._poller.forget(sock.fileno())
        for direction in (self._outbound, self._inbound):
            direction.close_pipe()
        for sock in (self.client, self.upstream):
            sock.close()
        self._on_close(self)
