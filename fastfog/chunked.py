"""Where a chunked message body ends, found while it streams past (RFC 9112 section 7.1).

fastfog forwards chunked bodies as they are, byte for byte; it only needs to
know where each one ends, to keep a connection's requests (or responses) in
step. The scanner walks the chunk-size lines, skips chunk data by arithmetic
and reads the trailer section up to its empty line. It is as strict as the
head parser: CRLF line ends, hexadecimal sizes, bounded line lengths.
"""

from fastfog.errors import HeadError

_HEX = frozenset(b"0123456789abcdefABCDEF")
MAX_LINE = 4096
MAX_TRAILER_LINES = 100
MAX_SIZE_DIGITS = 16

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedBody:
    """Feed it the bytes that follow a head; it says how many belong to the body."""

    __slots__ = ("_state", "_remaining", "_line", "_trailers")

    def __init__(self):
        self._state = _SIZE
        self._remaining = 0
        self._line = b""
        self._trailers = 0

    @property
    def done(self):
        return self._state == _DONE

    def feed(self, data, start=0):
        """How many bytes of ``data[start:]`` belong to the body (all of them, unless it ended)."""
        position, end = start, len(data)
        while position < end and self._state != _DONE:
            if self._state == _DATA:
                taken = min(self._remaining, end - position)
                position += taken
                self._remaining -= taken
                if self._remaining == 0:
                    self._state = _DATA_END
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._line += bytes(data[position:])
                if len(self._line) > MAX_LINE:
                    raise HeadError("chunked body line too long")
                return end - start
            line = self._line + bytes(data[position:newline + 1])
            self._line = b""
            position = newline + 1
            if len(line) > MAX_LINE:
                raise HeadError("chunked body line too long")
            if not line.endswith(b"\r\n"):
                raise HeadError("bare LF in chunked body")
            self._line_ended(line[:-2])
        return position - start

    def _line_ended(self, line):
        if self._state == _SIZE:
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not size or len(size) > MAX_SIZE_DIGITS or not _HEX.issuperset(size):
                raise HeadError("invalid chunk size")
            self._remaining = int(size, 16)
            self._state = _DATA if self._remaining else _TRAILER
        elif self._state == _DATA_END:
            if line:
                raise HeadError("chunk data longer than its size")
            self._state = _SIZE
        elif not line:
            self._state = _DONE
        else:
            self._trailers += 1
            if self._trailers > MAX_TRAILER_LINES or b":" not in line or line[:1] in (b" ", b"\t"):
                raise HeadError("invalid trailer section")
