"""Helpers shared by the tests."""

import asyncio
import os
import socket

import pytest
import uvloop

from fastfog import hotpaths
from fastfog.errors import HeadError

IMPLEMENTATIONS = hotpaths.implementations()

needs_core = pytest.mark.skipif(
    "core" not in IMPLEMENTATIONS, reason="compiled core disabled by FASTFOG_NO_EXTENSIONS"
)

REQUEST_FIELDS = ("method", "target", "version", "headers", "head_end", "form", "scheme", "host",
                  "port", "authority", "path", "content_length", "chunked", "keep_alive")
RESPONSE_FIELDS = ("version", "status", "reason", "headers", "head_end", "content_length",
                   "chunked", "keep_alive")


def outcome(parse, data, **limits):
    """What a head parser makes of ``data``: ("head", fields), ("incomplete",) or ("error", reason)."""
    try:
        head = parse(data, **limits)
    except HeadError as err:
        return ("error", str(err))
    if head is None:
        return ("incomplete",)
    fields = REQUEST_FIELDS if hasattr(head, "method") else RESPONSE_FIELDS
    return ("head", {name: getattr(head, name) for name in fields})


def tcp_pair():
    """Two connected, non-blocking TCP sockets on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        sock.setblocking(False)
    return a, b


async def feed(sock, pieces, pause):
    """Send ``pieces`` on ``sock``, ``pause`` seconds apart (None: shut the sending side down),
    until the peer is gone."""
    for piece in pieces:
        await asyncio.sleep(pause)
        try:
            if piece is None:
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.send(piece)
        except OSError:  # (the peer may be done with the socket already)
            return


def client_hello(server_name):
    """The first bytes Python's ssl module sends as a TLS client for ``server_name`` (None: no SNI)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a client handshake finished without a server")


def run_watched(coroutine):
    """Run ``coroutine`` (20 s at most); an error reported to the loop's exception handler (and
    survived) fails the test too."""
    reported = []

    async def watched():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        return await asyncio.wait_for(coroutine, 20)

    result = uvloop.run(watched())
    assert reported == []
    return result


def open_pipes():
    """How many pipes this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return count


class RelayTunnel:
    """client ⇄ [relay: client_side, upstream_side] ⇄ origin, for the relay tests: ``client_side``
    is the proxy's end of the client's connection; the upstream is a loopback TCP pair."""

    def __init__(self, impl, loop, client, client_side, first_bytes=b""):
        self.client, self.loop = client, loop
        upstream_side, self.origin = tcp_pair()
        self.closed = loop.create_future()
        self.relay = impl.SpliceRelay(loop, client_side, upstream_side,
                                      lambda relay: self.closed.set_result(relay), first_bytes)

    def close(self):
        self.client.close()
        self.origin.close()


async def both_ways(tunnel, outbound, inbound):
    """Send the ``outbound`` parts from the tunnel's client and the ``inbound`` ones from its
    origin at once, each side ending after its last, while both read to their end:
    (what the origin read, what the client read), each as (bytes, how it ended)."""
    async def send(sock, parts):
        for part in parts:
            await tunnel.send(sock, part)
            await asyncio.sleep(0)
        tunnel.end(sock)

    results = await asyncio.gather(send(tunnel.client, outbound), send(tunnel.origin, inbound),
                                   tunnel.read_all(tunnel.origin), tunnel.read_all(tunnel.client))
    return results[2], results[3]


def check_streams_through_every_relay(make_tunnel, first, outbound, inbound):
    """Each implementation's relay, in the tunnel ``make_tunnel(impl, loop, first_bytes)`` makes
    (with ``client``, ``origin``, ``relay``, ``closed``, ``send``, ``end``, ``read_all`` and
    ``close``), carries ``outbound`` parts one way and ``inbound`` the other, each side ending
    after its last, and delivers both streams whole, counted, without an error."""
    async def scenario(impl):
        loop = asyncio.get_running_loop()
        tunnel = make_tunnel(impl, loop, first)
        tunnel.relay.start()
        at_origin, at_client = await both_ways(tunnel, outbound, inbound)
        relay = await tunnel.closed
        tunnel.close()
        return at_origin, at_client, relay.bytes_out, relay.bytes_in, relay.error

    expected = (first + b"".join(outbound), "eof"), (b"".join(inbound), "eof")
    for impl in IMPLEMENTATIONS.values():
        got = run_watched(scenario(impl))
        assert got[:2] == expected
        assert got[2:] == (len(expected[0][0]), len(expected[1][0]), None)
