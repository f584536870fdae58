"""Log records as bytes, and connection ids, in pure Python: the twins of fastfog/hot/record.pxi.

Every tunnel writes two records and takes one id, so both are on the hot path.

- ``json_line(fields, level, msg, time)``: one JSON object and a newline,
  UTF-8: keys sorted, compact separators (as Smokescreen's logrus prints
  them), ``level``/``msg``/``time`` taking precedence over fields of those
  names. Values that are not JSON (addresses, exceptions) are written as
  their ``str``; characters UTF-8 cannot carry (lone surrogates) become ``?``.
- ``rfc3339(timestamp)``: Unix time as Go's time.RFC3339Nano prints it, UTC,
  nanoseconds without trailing zeros (years 1970 to 9999).
- ``IdSource().next()``: ids shaped like the xids Smokescreen logs, 20
  characters sortable by time: 12 bytes (4 of Unix time, 5 of per-process
  randomness, 3 of a counter) in lowercase base32hex.
- ``RecordBatch(format, schedule)``: a log's records between two writes, each
  formatted as it is emitted (``format(fields, level, msg, time)``, stamped
  with ``rfc3339(time.time())``) and kept as a line; the first of a batch calls
  ``schedule()`` (which arranges the write); ``take()`` hands the lines over.
"""

import base64
import json
import os
import time

_encoder = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))


def json_value(value):
    """One value as the record encoder writes it (str)."""
    return _encoder.encode(value)


def json_line(fields, level, msg, time):
    record = dict(fields)
    record["level"], record["msg"], record["time"] = level, msg, time
    return (_encoder.encode(record) + "\n").encode("utf-8", "replace")


_second_cache = [None, ""]


def rfc3339(timestamp):
    seconds = int(timestamp)
    nanos = int(round((timestamp - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    if _second_cache[0] != seconds:  # one strftime per second, not per record
        _second_cache[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    text = _second_cache[1]
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


class IdSource:
    """``machine`` (5 bytes) and ``counter`` are random unless given (tests)."""

    def __init__(self, machine=None, counter=None):
        self._machine = os.urandom(5) if machine is None else bytes(machine)
        if len(self._machine) != 5:
            raise ValueError("machine must be 5 bytes")
        self._counter = (int.from_bytes(os.urandom(3), "big") if counter is None else counter) & 0xFFFFFF

    def next(self):
        self._counter = (self._counter + 1) & 0xFFFFFF
        raw = int(time.time()).to_bytes(4, "big") + self._machine + self._counter.to_bytes(3, "big")
        return base64.b32hexencode(raw)[:20].decode("ascii").lower()


class RecordBatch:
    __slots__ = ("lines", "_format", "_schedule")

    def __init__(self, format, schedule):
        self.lines = []
        self._format, self._schedule = format, schedule

    def add(self, level, msg, fields=None):
        line = self._format(fields if fields else {}, level, msg, rfc3339(time.time()))
        if not self.lines:
            self._schedule()
        self.lines.append(line)

    def info(self, msg, fields=None):
        self.add("info", msg, fields)

    def warning(self, msg, fields=None):
        self.add("warning", msg, fields)

    def error(self, msg, fields=None):
        self.add("error", msg, fields)

    def take(self):
        lines, self.lines = self.lines, []
        return lines
