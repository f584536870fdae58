"""Log records as bytes, and connection ids, in pure Python: the twins of fastfog/hot/record.pxi.

Every tunnel writes two records and takes one id, so both are on the hot path.

- ``json_line(fields, level, msg, time)``: one JSON object and a newline,
  UTF-8: keys sorted, compact separators (as Smokescreen's logrus prints
  them), ``level``/``msg``/``time`` taking precedence over fields of those
  names. Values that are not JSON (addresses, exceptions) are written as
  their ``str``; characters UTF-8 cannot carry (lone surrogates) become ``?``.
- ``IdSource().next()``: ids shaped like the xids Smokescreen logs, 20
  characters sortable by time: 12 bytes (4 of Unix time, 5 of per-process
  randomness, 3 of a counter) in lowercase base32hex.
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
