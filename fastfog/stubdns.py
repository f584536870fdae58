"""A tiny authoritative DNS server over UDP, for fastfog's tests and ``fastfog bench``.

It answers A and AAAA questions from a table of names, NXDOMAIN for names it
does not know, SERVFAIL for names marked so, and never answers names marked
silent (to exercise timeouts). It counts the questions it gets per name, so a
test can see what the proxy's cache saved. It is not a resolver and never
forwards anything anywhere.
"""

import asyncio
import ipaddress
import struct
from collections import Counter

SERVFAIL = "servfail"
SILENT = "silent"
SILENT_A, SILENT_AAAA = "silent:A", "silent:AAAA"  # in a list of addresses: that type never answered
_TYPE_A, _TYPE_AAAA = 1, 28
_SILENT_TYPES = {SILENT_A: _TYPE_A, SILENT_AAAA: _TYPE_AAAA}


def _read_name(message, offset):
    labels = []
    while True:
        length = message[offset]
        offset += 1
        if length == 0:
            return ".".join(labels).lower(), offset
        if length & 0xC0:
            raise ValueError("compressed names are not expected in questions")
        labels.append(message[offset:offset + length].decode("ascii", "replace"))
        offset += length


class StubDNS(asyncio.DatagramProtocol):
    """Records: {name: list of addresses (SILENT_A or SILENT_AAAA among them: that question is never
    answered), or SERVFAIL, or SILENT}; every answer has ``ttl``."""

    def __init__(self, records, ttl=60):
        self.records = {name.lower().rstrip("."): value for name, value in records.items()}
        self.ttl = ttl
        self.questions = Counter()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            reply = self.answer(data)
        except (ValueError, IndexError, struct.error):
            return
        if reply is not None:
            self.transport.sendto(reply, addr)

    def answer(self, query):
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return None
        name, end = _read_name(query, 12)
        qtype, _ = struct.unpack("!HH", query[end:end + 4])
        self.questions[name] += 1
        question = query[12:end + 4]
        value = self.records.get(name)
        if value == SILENT:
            return None
        rcode, answers = 0, []
        if value is None:
            rcode = 3  # NXDOMAIN
        elif value == SERVFAIL:
            rcode = 2
        else:
            if any(_SILENT_TYPES.get(address) == qtype for address in value):
                return None
            for address in value:
                if address in _SILENT_TYPES:
                    continue
                ip = ipaddress.ip_address(address)
                if (ip.version, qtype) in ((4, _TYPE_A), (6, _TYPE_AAAA)):
                    answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, self.ttl, len(ip.packed)) + ip.packed)
        reply_flags = 0x8400 | (flags & 0x0100) | rcode  # response, authoritative, RD copied
        header = struct.pack("!HHHHHH", ident, reply_flags, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)


async def start(host, port, records, ttl=60):
    """Serve ``records`` on UDP ``host:port``; returns the protocol (``.transport.close()`` stops it)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(lambda: StubDNS(records, ttl), local_addr=(host, port))
    return protocol
