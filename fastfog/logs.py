"""Log records: Smokescreen's JSON lines (``level``, ``msg``, ``time`` and fields), or logfmt.

JSON records are formatted by a compiled hot path (fastfog/hot/record.pxi),
when emitted, and written once per event-loop iteration in one ``write``, so a
burst of connections costs one system call, not one per record. Field names
and record names (CANONICAL-PROXY-DECISION, CANONICAL-PROXY-CN-CLOSE) are
Smokescreen's, so existing log pipelines keep working.
"""

import collections
import functools
import itertools
import json
import os
import select
import socket
import stat
import sys
import time

from fastfog import hotpaths

LEVELS = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3}
DECISION = "CANONICAL-PROXY-DECISION"


def _ignore(msg, fields=None):
    """A record below the log level: nothing is formatted or written."""
CONNECTION_CLOSE = "CANONICAL-PROXY-CN-CLOSE"

# Compiled hot paths, described in fastfog.reference.record.
IdSource = hotpaths.IdSource
rfc3339 = hotpaths.rfc3339


def _logfmt_value(value):
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text)


class Log:
    """Buffered structured log on a file descriptor (standard error by default).

    Logging never holds traffic up. Once attached to a loop, records are written once per loop
    iteration without blocking: a pipe is reopened non-blocking (its own file description, so
    whoever shares it is unaffected) and a socket is sent to with MSG_DONTWAIT. What the reader
    is not ready for waits in a backlog of at most ``max_backlog`` bytes, written as soon as the
    descriptor has room; past that, whole records are dropped, counted (``on_dropped(n)``, the
    ``fastfog.log.dropped`` metric) and reported by one record once the reader has caught up.
    A record is never cut: what reaches the reader is whole lines. Regular files and terminals
    are written as they always were.
    """

    DEFAULT_BACKLOG = 4 << 20

    def __init__(self, fmt="json", fd=None, loop=None, atomic_lines=False, max_backlog=DEFAULT_BACKLOG,
                 level="info"):
        """``atomic_lines``: several processes write to the same stream (``--workers``); each
        write is then whole lines of at most PIPE_BUF bytes, which a pipe never interleaves.
        ``level``: the least severe records written (debug, info, warn, error); the others are
        dropped before they are formatted, and ``info_enabled`` lets a caller skip building one."""
        threshold = LEVELS[level]
        self.info_enabled = threshold <= LEVELS["info"]
        self._levels = tuple(name for name in ("info", "warning", "error") if LEVELS[name] >= threshold)
        for name in ("info", "warning", "error"):
            if name not in self._levels:
                setattr(self, name, _ignore)
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._format = hotpaths.json_line if fmt == "json" else self._logfmt
        self._batch = hotpaths.RecordBatch(self._format, self._schedule_flush)
        self._loop = None
        self._atomic = atomic_lines
        self._writer = None  # the non-blocking way to write, made when attached
        self._backlog = collections.deque()  # whole lines (the first may be partly written)
        self._backlog_size = 0
        self.max_backlog = max_backlog
        self.dropped = 0  # records dropped since the last report
        self.on_dropped = None
        if loop is not None:
            self.attach(loop)

    def attach(self, loop):
        """Batch and write without blocking on ``loop`` from now on; None: each record at once,
        blocking (before the loop runs, or once it is gone)."""
        if self._writer is not None and self._waiting:
            self._loop.remove_writer(self._writer.fd)
        self._loop = loop
        self._waiting = False
        for name in self._levels:  # batched on the loop (formatted in C for JSON), or written at once
            if loop is None:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, getattr(self._batch, name))
        if loop is None:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._drain_blocking()
        elif self._writer is None:
            self._writer = _NonBlockingWriter.for_fd(self._fd)

    @staticmethod
    def _logfmt(fields, level, msg, time):
        head = [f"time={time}", f"level={level}", f"msg={_logfmt_value(msg)}"]
        text = " ".join(head + [f"{key}={_logfmt_value(fields[key])}" for key in sorted(fields)
                                if key not in ("time", "level", "msg")])
        return (text + "\n").encode("utf-8", "replace")

    def emit(self, level, msg, fields=None):
        if self._loop is None:
            _write_all(self._fd, self._format(fields if fields else {}, level, msg, rfc3339(time.time())))
            return
        self._batch.add(level, msg, fields)

    def _schedule_flush(self):
        self._loop.call_soon(self.flush)

    def info(self, msg, fields=None):
        self.emit("info", msg, fields)

    def warning(self, msg, fields=None):
        self.emit("warning", msg, fields)

    def error(self, msg, fields=None):
        self.emit("error", msg, fields)

    def flush(self):
        lines = self._batch.take()
        if not lines:
            return
        if self._writer is None:
            for batch in self._batches(lines):
                _write_all(self._fd, batch)
            return
        cut = False
        if not self._backlog and not self._atomic:  # the common case: one write takes them all
            data = b"".join(lines)
            try:
                written = self._writer.write(data)
            except BlockingIOError:
                written = 0
            except OSError:  # a closed or broken log stream must never take the proxy down
                return
            if written == len(data):
                return
            while written >= len(lines[0]):
                written -= len(lines.pop(0))
            if written:  # a record partly out: the rest of it goes first, whatever the bound
                self._backlog.append(lines.pop(0)[written:])
                self._backlog_size += len(self._backlog[0])
                cut = True
        for line in lines:
            if self._backlog_size + len(line) > self.max_backlog:
                self.dropped += 1
                if self.on_dropped is not None:
                    self.on_dropped(1)
                continue
            self._backlog.append(line)
            self._backlog_size += len(line)
        if cut:
            self._wait_for_room()
        else:
            self._drain()

    def _batches(self, lines):
        """``lines`` joined into writes: one, or whole lines of at most PIPE_BUF bytes each."""
        if not self._atomic:
            yield b"".join(lines)
            return
        batch, size = [], 0
        for line in lines:
            if batch and size + len(line) > select.PIPE_BUF:
                yield b"".join(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            yield b"".join(batch)

    def _drain(self):
        """Write the backlog until the descriptor has no room; then wait for room."""
        backlog, writer = self._backlog, self._writer
        while backlog:
            try:  # the backlog's first write: up to 256 lines (at most PIPE_BUF bytes when shared)
                written = writer.write(next(self._batches(itertools.islice(backlog, 256))))
            except BlockingIOError:
                self._wait_for_room()
                return
            except OSError:  # a closed or broken log stream must never take the proxy down
                backlog.clear()
                self._backlog_size = 0
                break
            self._backlog_size -= written
            while backlog and written >= len(backlog[0]):
                written -= len(backlog.popleft())
            if written:  # part of a line went out: the rest of it goes first
                backlog[0] = backlog[0][written:]
                if not writer.blocking:
                    self._wait_for_room()
                    return
        if self._waiting:
            self._loop.remove_writer(writer.fd)
            self._waiting = False
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.warning("log records dropped: the log reader was too slow", {"dropped": dropped})

    def _wait_for_room(self):
        if not self._waiting:
            self._waiting = True
            self._loop.add_writer(self._writer.fd, self._drain)

    def _drain_blocking(self):
        """Detached from the loop: what is left goes out now, waiting if it must."""
        lines = [*self._backlog, *self._batch.take()]
        self._backlog.clear()
        self._backlog_size = 0
        for batch in self._batches(lines):
            _write_all(self._fd, batch)


class _NonBlockingWriter:
    """How the log writes to its descriptor without ever blocking the loop (see Log)."""

    __slots__ = ("fd", "write", "blocking", "_own")

    def __init__(self, fd, write, blocking, own=None):
        """``own``: what was opened for this writer (closed with it)."""
        self.fd, self.write, self.blocking, self._own = fd, write, blocking, own

    def close(self):
        if isinstance(self._own, int):
            os.close(self._own)
        elif self._own is not None:
            self._own.close()
        self._own = None

    @classmethod
    def for_fd(cls, fd):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        if stat.S_ISFIFO(mode):
            try:  # a description of our own: O_NONBLOCK on a shared one would reach other processes
                own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                own = None
            if own is not None:
                return cls(own, functools.partial(os.write, own), False, own)
        elif stat.S_ISSOCK(mode):  # journald, a container runtime's log socket
            sock = socket.socket(fileno=os.dup(fd))
            return cls(sock.fileno(), lambda data: sock.send(data, socket.MSG_DONTWAIT), False, sock)
        return cls(fd, functools.partial(os.write, fd), True)  # files and terminals: as always


def _write_all(fd, data):
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return  # a closed or broken log stream must never take the proxy down
        data = data[written:]
