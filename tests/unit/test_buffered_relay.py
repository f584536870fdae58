"""The buffered relay (transports, TLS legs), compiled and pure Python, over real sockets."""

import asyncio
import os
import socket
import ssl
import struct

import pytest
import trustme
import uvloop
from support import tcp_pair

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def tls():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("proxy.test").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def read_all(loop, sock):
    data = b""
    while True:
        try:
            chunk = await loop.sock_recv(sock, 65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


async def open_relay(impl, to_upstream=b"", to_client=b""):
    """client ⇄ [relay transports] ⇄ origin, all plaintext TCP."""
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    relay = impl.BufferedRelay(loop, closed.set_result, to_upstream, to_client)
    client, client_side = tcp_pair()
    upstream_side, origin = tcp_pair()
    await loop.connect_accepted_socket(lambda: relay.client_protocol, client_side)
    await loop.connect_accepted_socket(lambda: relay.upstream_protocol, upstream_side)
    return relay, closed, client, origin


def run(coroutine):
    return uvloop.run(asyncio.wait_for(coroutine, 20))


def test_both_ways_with_held_bytes_and_half_close(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        relay, closed, client, origin = await open_relay(impl, to_upstream=b"early ", to_client=b"welcome ")
        await loop.sock_sendall(client, b"request")
        client.shutdown(socket.SHUT_WR)
        assert await read_all(loop, origin) == (b"early request", "eof")
        await loop.sock_sendall(origin, b"answer after the half-close")
        origin.shutdown(socket.SHUT_WR)
        assert await read_all(loop, client) == (b"welcome answer after the half-close", "eof")
        await closed
        assert (relay.bytes_out, relay.bytes_in, relay.error, relay.closed) == (13, 35, None, True)
        client.close()
        origin.close()
    run(scenario())


def test_reset_aborts_the_other_side(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        relay, closed, client, origin = await open_relay(impl)
        await loop.sock_sendall(client, b"x")
        assert await loop.sock_recv(origin, 10) == b"x"
        origin.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        origin.close()
        await closed
        assert relay.error == "Connection reset by peer"
        assert (await read_all(loop, client))[1] in ("reset", "eof")
        client.close()
    run(scenario())


def test_a_receiver_that_never_reads_stops_the_sender(impl):
    async def scenario():
        relay, closed, client, origin = await open_relay(impl)
        chunk, sent = b"z" * 65536, 0
        for _ in range(4096):  # up to 256 MiB offered; the origin reads nothing
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                try:
                    sent += client.send(chunk)
                except BlockingIOError:
                    break
        assert sent < 64 << 20  # kernel socket buffers (autotuned) and the transport's: bounded
        relay.close("test over")
        await closed
        assert relay.error == "test over"
        client.close()
        origin.close()
    run(scenario())


def test_tls_client_leg(impl, tls):
    """A TLS client leg: its end of stream becomes a close (TLS cannot half-close) after delivery."""
    server_context, client_context = tls

    async def scenario():
        loop = asyncio.get_running_loop()
        closed = loop.create_future()
        relay = impl.BufferedRelay(loop, closed.set_result)
        client_raw, client_side = tcp_pair()
        upstream_side, origin = tcp_pair()
        accepted = loop.create_task(loop.connect_accepted_socket(
            lambda: relay.client_protocol, client_side, ssl=server_context))
        reader, writer = await asyncio.open_connection(sock=client_raw, ssl=client_context,
                                                       server_hostname="proxy.test")
        await accepted
        await loop.connect_accepted_socket(lambda: relay.upstream_protocol, upstream_side)
        payload = os.urandom(1 << 20)
        writer.write(payload)
        await writer.drain()
        received = b""
        while len(received) < len(payload):
            received += await loop.sock_recv(origin, 65536)
        assert received == payload
        await loop.sock_sendall(origin, b"through TLS")
        assert await reader.readexactly(11) == b"through TLS"
        origin.shutdown(socket.SHUT_WR)
        assert await reader.read() == b""
        writer.close()
        await closed
        assert (relay.bytes_out, relay.bytes_in) == (len(payload), 11)
        origin.close()
    run(scenario())


def test_attach_takes_over_existing_transports(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        closed = loop.create_future()
        relay = impl.BufferedRelay(loop, closed.set_result, to_upstream=b"first")
        client, client_side = tcp_pair()
        upstream_side, origin = tcp_pair()
        placeholder = asyncio.Protocol
        client_transport, _ = await loop.connect_accepted_socket(placeholder, client_side)
        upstream_transport, _ = await loop.connect_accepted_socket(placeholder, upstream_side)
        relay.attach(client_transport, upstream_transport)
        assert await loop.sock_recv(origin, 100) == b"first"
        await loop.sock_sendall(origin, b"back")
        assert await loop.sock_recv(client, 100) == b"back"
        relay.close()
        await closed
        client.close()
        origin.close()
    run(scenario())
