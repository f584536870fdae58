"""The server name (SNI) in the first bytes a client sends into a tunnel, in pure Python.

The twin of fastfog/hot/clienthello.pxi. ``client_hello_sni(data)`` reads a
TLS ClientHello without decrypting anything (there is nothing to decrypt yet):
TLS records of type handshake, reassembled when the ClientHello spans several
records or arrives in pieces, then the ``server_name`` extension. It answers
``(state, server_name)``:

- ``("more", None)``: the bytes so far are a valid beginning; wait for more;
- ``("not-tls", None)``: not a TLS handshake record (an HTTP request, SSH…);
- ``("malformed", None)``: a TLS record whose ClientHello is broken, or
  longer than ``max_size`` bytes;
- ``("hello", name)``: a complete ClientHello; ``name`` is its first
  host_name (lowercase ASCII as sent), or None when it has no SNI.

It reads lengths only within what they claim and what ``data`` holds, so any
byte string is safe.
"""

HANDSHAKE, CLIENT_HELLO, SERVER_NAME, HOST_NAME = 22, 1, 0, 0
MAX_RECORD = 16384 + 2048  # TLSPlaintext limit, with room for what some stacks send
MAX_HELLO = 65536


def _u16(data, at):
    return (data[at] << 8) | data[at + 1]


def client_hello_sni(data, max_size=MAX_HELLO):
    data = bytes(data)
    if not data:
        return "more", None
    if data[0] != HANDSHAKE:
        return "not-tls", None
    if len(data) >= 2 and data[1] != 3:
        return "not-tls", None
    message = bytearray()
    needed = -1  # handshake bytes wanted (header included), once the header is known
    at = 0
    while needed < 0 or len(message) < needed:
        if len(data) - at < 5:
            return "more", None
        if data[at] != HANDSHAKE or data[at + 1] != 3:
            return ("not-tls" if at == 0 else "malformed"), None
        length = _u16(data, at + 3)
        if length == 0 or length > MAX_RECORD:
            return "malformed", None
        if len(data) - at - 5 < length:
            # a partial record: its bytes count toward the header, but not beyond
            message += data[at + 5:]
            if needed < 0 and len(message) >= 4:
                if message[0] != CLIENT_HELLO:
                    return "malformed", None
                if 4 + ((message[1] << 16) | (message[2] << 8) | message[3]) > max_size:
                    return "malformed", None
            return "more", None
        message += data[at + 5:at + 5 + length]
        at += 5 + length
        if needed < 0 and len(message) >= 4:
            if message[0] != CLIENT_HELLO:
                return "malformed", None
            needed = 4 + ((message[1] << 16) | (message[2] << 8) | message[3])
            if needed > max_size:
                return "malformed", None
    return _parse_hello(bytes(message[4:needed]))


def _parse_hello(body):
    end = len(body)
    at = 2 + 32  # legacy_version, random
    if at + 1 > end or body[at] > 32:
        return "malformed", None
    at += 1 + body[at]  # session id
    if at + 2 > end:
        return "malformed", None
    suites = _u16(body, at)
    if suites < 2 or suites % 2:
        return "malformed", None
    at += 2 + suites
    if at + 1 > end:
        return "malformed", None
    methods = body[at]
    if methods < 1:
        return "malformed", None
    at += 1 + methods
    if at > end:
        return "malformed", None
    if at == end:
        return "hello", None  # no extensions at all
    if at + 2 > end:
        return "malformed", None
    extensions_end = at + 2 + _u16(body, at)
    if extensions_end != end:
        return "malformed", None
    at += 2
    name = None
    while at < extensions_end:
        if at + 4 > extensions_end:
            return "malformed", None
        kind, length = _u16(body, at), _u16(body, at + 2)
        at += 4
        if at + length > extensions_end:
            return "malformed", None
        if kind == SERVER_NAME and name is None:
            found = _server_name(body, at, at + length)
            if found is False:
                return "malformed", None
            name = found
        at += length
    return "hello", name


def _server_name(body, at, end):
    """The first host_name of a server_name extension; None if it lists none; False if broken."""
    if at + 2 > end or at + 2 + _u16(body, at) != end:
        return False
    at += 2
    found = None
    while at < end:
        if at + 3 > end:
            return False
        kind, length = body[at], _u16(body, at + 1)
        at += 3
        if at + length > end:
            return False
        if kind == HOST_NAME and found is None:
            raw = body[at:at + length]
            if not raw or any(byte < 0x21 or byte > 0x7E for byte in raw):
                return False
            found = raw.decode("ascii")
        at += length
    return found
