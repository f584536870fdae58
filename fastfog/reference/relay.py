"""Relaying a tunnel between two plaintext TCP sockets with splice(2), in pure Python.

Most tunnels a webhook sender opens carry a few kilobytes each way, so each
direction starts by copying: one recv, sent on at once, through user space.
Once a direction has moved COPY_LIMIT bytes it is bulk: it takes a
non-blocking pipe of its own and from then on bytes go socket → pipe → socket
inside the kernel, never entering user space. Small tunnels never pay for the
pipes; large ones pay once. Each direction is driven by the event loop's
reader and writer callbacks on the raw sockets:

- readable source: copy it (or splice it into the pipe, then the pipe) into the destination;
- destination full (EAGAIN with bytes left in the pipe): stop reading the source
  and wait for the destination to become writable; the pipe's capacity bounds
  what one direction can hold, however slow its receiver;
- end of stream from a source: once its pipe is drained, shut the destination
  down for writing (a half-close travels through; the other direction keeps
  flowing); when both directions have ended, everything is closed;
- an error on either socket (reset, broken pipe) closes both at once.

The relay counts bytes each way and remembers when it last moved any, for the
close record and idle checks. ``first_bytes`` (what the client sent after its
request head, in the same read) goes to the upstream before anything else.
"""

import fcntl
import os
import socket
import struct
import time

SPLICE_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
CHUNK = 1 << 20
PIPE_SIZE = 1 << 20  # a direction that has moved BULK bytes gets a pipe this large
BULK = 1 << 20
_F_SETPIPE_SZ = 1031
_BUDGET = 16 << 20  # bytes moved per callback before yielding to other connections
COPY_LIMIT = 64 << 10  # bytes a direction copies before it switches to splice
COPY_CHUNK = 64 << 10
_LINGER_RESET = struct.pack("ii", 1, 0)


def _grow_pipe(write_end):
    """A larger pipe moves bulk data in fewer system calls; small tunnels keep the default 64 KiB."""
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for this user: the default size works too


class _Direction:
    """One way through the tunnel: src socket → (user space, later a pipe) → dst socket."""

    __slots__ = ("relay", "src", "dst", "pipe_r", "pipe_w", "in_pipe", "pending", "eof", "done",
                 "reading", "writing", "moved", "grown")

    def __init__(self, relay, src, dst, pending):
        self.relay = relay
        self.src, self.dst = src, dst
        self.pipe_r = self.pipe_w = None  # opened when the direction outgrows copying
        self.grown = False
        self.in_pipe = 0
        self.pending = pending  # user-space bytes to send before the pipe (first_bytes)
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False
        self.moved = 0

    def drain(self):
        """Move what waits (pending bytes, then the pipe) into dst. False when dst is full."""
        while self.pending:
            sent = self.dst.send(self.pending)
            self.moved += sent
            self.pending = self.pending[sent:]
        while self.in_pipe:
            moved = os.splice(self.pipe_r, self.dst.fileno(), self.in_pipe, flags=SPLICE_FLAGS)
            self.in_pipe -= moved
            self.moved += moved
        return True

    def on_readable(self):
        relay = self.relay
        budget = _BUDGET
        try:
            while budget > 0:
                try:
                    received = self._copy() if self.pipe_r is None and self.moved < relay.copy_limit else self._splice()
                except BlockingIOError:
                    break
                if received == 0:
                    self.eof = True
                    relay._stop_reading(self)
                    break
                budget -= received
                if not self.grown and self.pipe_w is not None and self.moved >= BULK:
                    self.grown = True
                    _grow_pipe(self.pipe_w)
                try:
                    self.drain()
                except BlockingIOError:
                    relay._stop_reading(self)
                    relay._start_writing(self)
                    break
            relay.last_activity = time.monotonic()
            self._maybe_finish()
        except OSError as err:
            relay._abort(err)

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

    def on_writable(self):
        relay = self.relay
        try:
            try:
                self.drain()
            except BlockingIOError:
                return
            relay._stop_writing(self)
            relay.last_activity = time.monotonic()
            if not self.eof:
                relay._start_reading(self)
            self._maybe_finish()
        except OSError as err:
            relay._abort(err)

    def _maybe_finish(self):
        if self.eof and not self.in_pipe and not self.pending and not self.done:
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

    copy_limit = COPY_LIMIT

    def __init__(self, loop, client, upstream, on_close, first_bytes=b""):
        self._loop = loop
        self.client, self.upstream = client, upstream
        self._on_close = on_close
        self._outbound = _Direction(self, client, upstream, bytes(first_bytes))
        self._inbound = _Direction(self, upstream, client, b"")
        self.error = None
        self.closed = False
        self.last_activity = time.monotonic()

    @property
    def bytes_out(self):
        return self._outbound.moved

    @property
    def bytes_in(self):
        return self._inbound.moved

    def start(self):
        """Begin relaying; first_bytes are sent to the upstream before the client is read."""
        if self._outbound.pending:
            try:
                self._outbound.drain()
            except BlockingIOError:
                self._start_writing(self._outbound)
            except OSError as err:
                self._abort(err)
                return
        if not self._outbound.writing:
            self._start_reading(self._outbound)
        self._start_reading(self._inbound)

    def close(self, reason=None):
        """Close both sockets now (shutdown, idle timeout); ``reason`` becomes ``error``."""
        if not self.closed:
            if reason is not None and self.error is None:
                self.error = reason
            self._close_all()

    # --- loop registration: one reader and one writer callback per socket at most ---

    def _start_reading(self, direction):
        if not direction.reading and not self.closed:
            direction.reading = True
            self._loop.add_reader(direction.src.fileno(), direction.on_readable)

    def _stop_reading(self, direction):
        if direction.reading:
            direction.reading = False
            self._loop.remove_reader(direction.src.fileno())

    def _start_writing(self, direction):
        if not direction.writing and not self.closed:
            direction.writing = True
            self._loop.add_writer(direction.dst.fileno(), direction.on_writable)

    def _stop_writing(self, direction):
        if direction.writing:
            direction.writing = False
            self._loop.remove_writer(direction.dst.fileno())

    def _direction_done(self):
        if self._outbound.done and self._inbound.done:
            self._close_all()

    def _abort(self, err):
        if self.error is None:
            self.error = os.strerror(err.errno) if err.errno else str(err)
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
        for direction in (self._outbound, self._inbound):
            self._stop_reading(direction)
            self._stop_writing(direction)
            direction.close_pipe()
        for sock in (self.client, self.upstream):
            sock.close()
        self._on_close(self)
