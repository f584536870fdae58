"""PROXY protocol v1 and v2 headers (``--proxy-protocol``), as a load balancer in front sends them.

``parse(data)`` looks at the first bytes of a connection:

- ``None``: not enough bytes yet to tell;
- ``(0, None)``: no header: the connection starts with its own bytes (served
  as is, as Smokescreen does: a balancer that skips the header for health
  checks keeps working);
- ``(length, address)``: a header of ``length`` bytes, carrying the client's
  ``(ip, port)``, or None when it names none (v1 ``UNKNOWN``, v2 ``LOCAL``,
  or a family other than TCP over IPv4/IPv6): the socket's peer stands.

A malformed header raises ValueError: the connection is closed. v2 TLVs are
skipped. The listener reads the header with MSG_PEEK and then takes exactly
its length, so the bytes after it (a TLS ClientHello, a request head) are
never touched.
"""

import ipaddress
import struct

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16
_V2_ADDRESSES = {0x11: (4, "!4s4sHH"), 0x21: (16, "!16s16sHH")}  # TCP over IPv4, IPv6


def parse(data):
    data = bytes(data[:V1_MAX if data[:1] == b"P" else len(data)])
    for signature, parser in ((V1_PREFIX, _v1), (V2_SIGNATURE, _v2)):
        shared = min(len(data), len(signature))
        if data[:shared] == signature[:shared]:
            return None if len(data) < len(signature) else parser(data)
    return 0, None


def _port(text):
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"bad PROXY header port {text!r}")
    return int(text)


def _v1(data):
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ValueError("PROXY v1 header without CRLF in 107 bytes")
        return None
    words = data[:end].split(b" ")
    if words[1:2] == [b"UNKNOWN"]:
        return end + 2, None
    if len(words) != 6 or words[1] not in (b"TCP4", b"TCP6"):
        raise ValueError("malformed PROXY v1 header")
    try:
        source = ipaddress.ip_address(words[2].decode("ascii"))
        destination = ipaddress.ip_address(words[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("bad PROXY v1 address") from None
    if source.version != destination.version or source.version != (4 if words[1] == b"TCP4" else 6):
        raise ValueError("PROXY v1 addresses do not match their family")
    source_port = _port(words[4].decode("ascii", "replace"))
    _port(words[5].decode("ascii", "replace"))
    return end + 2, (str(source), source_port)


def _v2(data):
    if len(data) < V2_HEADER:
        return None
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ValueError("unsupported PROXY v2 version or command")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own connection (health checks)
        return total, None
    layout = _V2_ADDRESSES.get(family)
    if layout is None:
        return total, None  # UNSPEC, UDP, unix sockets: nothing to use as a TCP client address
    size, fmt = layout
    if length < 2 * size + 4:
        raise ValueError("PROXY v2 address block too short")
    source, _, source_port, _ = struct.unpack(fmt, data[V2_HEADER:V2_HEADER + 2 * size + 4])
    return total, (str(ipaddress.ip_address(source)), source_port)
