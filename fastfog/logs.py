"""Log records: Smokescreen's JSON lines (``level``, ``msg``, ``time`` and fields), or logfmt.

JSON records are formatted by a compiled hot path (fastfog/hot/record.pxi),
when emitted, and written once per event-loop iteration in one ``write``, so a burst of connections costs one system call, not one
per record. Field names and record names (CANONICAL-PROXY-DECISION,
CANONICAL-PROXY-CN-CLOSE) are Smokescreen's, so existing log pipelines keep
working.
"""

import json
import os
import select
import sys
import time

from fastfog import hotpaths

DECISION = "CANONICAL-PROXY-DECISION"
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
    """Buffered structured log on a file descriptor (standard error by default)."""

    def __init__(self, fmt="json", fd=None, loop=None, atomic_lines=False):
        """``atomic_lines``: several processes write to the same stream (``--workers``); each
        write is then whole lines of at most PIPE_BUF bytes, which a pipe never interleaves."""
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._format = hotpaths.json_line if fmt == "json" else self._logfmt
        self._pending = []
        self._loop = loop
        self._atomic = atomic_lines

    def attach(self, loop):
        """Batch writes on ``loop`` from now on (before that, each record is written at once)."""
        self._loop = loop

    @staticmethod
    def _logfmt(fields, level, msg, time):
        head = [f"time={time}", f"level={level}", f"msg={_logfmt_value(msg)}"]
        text = " ".join(head + [f"{key}={_logfmt_value(fields[key])}" for key in sorted(fields)
                                if key not in ("time", "level", "msg")])
        return (text + "\n").encode("utf-8", "replace")

    def emit(self, level, msg, fields=None):
        line = self._format(fields if fields else {}, level, msg, rfc3339(time.time()))
        if self._loop is None:
            self._write(line)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(line)

    def info(self, msg, fields=None):
        self.emit("info", msg, fields)

    def warning(self, msg, fields=None):
        self.emit("warning", msg, fields)

    def error(self, msg, fields=None):
        self.emit("error", msg, fields)

    def flush(self):
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        if not self._atomic:
            self._write(b"".join(lines))
            return
        batch, size = [], 0
        for line in lines:
            if batch and size + len(line) > select.PIPE_BUF:
                self._write(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        self._write(b"".join(batch))

    def _write(self, data):
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # a closed or broken log stream must never take the proxy down
            data = data[written:]
