"""The splice relay, compiled and pure Python, over real TCP sockets on loopback."""

import asyncio
import hashlib
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import RelayTunnel, both_ways, check_streams_through_every_relay, open_pipes, tcp_pair
from support import run_watched as run

pytestmark = pytest.mark.netns  # loopback of the test namespace


class Tunnel(RelayTunnel):
    """client ⇄ [relay: client_side, upstream_side] ⇄ origin, all plain TCP."""

    def __init__(self, impl, loop, first_bytes=b""):
        super().__init__(impl, loop, *tcp_pair(), first_bytes)

    async def send(self, sock, data):
        await self.loop.sock_sendall(sock, data)

    def end(self, sock):
        sock.shutdown(socket.SHUT_WR)

    async def read_all(self, sock):
        data = b""
        while True:
            try:
                chunk = await self.loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk


def test_both_directions_counts_and_first_bytes(impl):
    async def scenario():
        tunnel = Tunnel(impl, asyncio.get_running_loop(), first_bytes=b"early ")
        tunnel.relay.start()
        loop = tunnel.loop
        await loop.sock_sendall(tunnel.client, b"request")
        received = b""
        while len(received) < 13:
            received += await loop.sock_recv(tunnel.origin, 100)
        assert received == b"early request"
        await loop.sock_sendall(tunnel.origin, b"response")
        assert await loop.sock_recv(tunnel.client, 100) == b"response"
        tunnel.client.shutdown(socket.SHUT_WR)
        tunnel.origin.shutdown(socket.SHUT_WR)
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error, relay.closed) == (13, 8, None, True)
        tunnel.close()
    run(scenario())


@pytest.mark.parametrize("origin_spoke_first", [False, True])
def test_the_relay_takes_a_dialed_socket_over_from_its_watch(impl, origin_spoke_first):
    """The upstream stays registered from its dial on: what its watch knew (an edge that
    brought bytes nobody has read yet) carries over, so the relay neither registers the socket
    again nor misses those bytes."""
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        upstream_fd = tunnel.relay.upstream.fileno()
        watch = impl.EdgeWatch(impl.poller_for(loop), upstream_fd)
        watch.readable = False  # as a dial makes it: nothing can have arrived yet
        dialed = loop.create_future()
        watch.wait_write(lambda: dialed.set_result(None))
        await dialed
        if origin_spoke_first:
            tunnel.origin.sendall(b"banner")
            for _ in range(200):  # the edge reaches the watch before the relay starts
                if watch.readable:
                    break
                await asyncio.sleep(0.005)
            assert watch.readable
        tunnel.relay.start(watch)
        if origin_spoke_first:
            assert await loop.sock_recv(tunnel.client, 100) == b"banner"
        await loop.sock_sendall(tunnel.client, b"ping")
        assert await loop.sock_recv(tunnel.origin, 100) == b"ping"
        await loop.sock_sendall(tunnel.origin, b"pong")
        assert await loop.sock_recv(tunnel.client, 100) == b"pong"
        tunnel.client.shutdown(socket.SHUT_WR)
        tunnel.origin.shutdown(socket.SHUT_WR)
        relay = await tunnel.closed
        assert (relay.bytes_in, relay.error) == (10 if origin_spoke_first else 4, None)
        tunnel.close()
    run(scenario())


def test_small_tunnels_copy_and_bulk_directions_switch_to_pipes(impl):
    """A webhook-sized exchange never opens a pipe; a direction that moves more takes one, only
    that direction, and the bytes stay intact across the switch."""
    async def scenario():
        loop = asyncio.get_running_loop()
        baseline = open_pipes()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        await loop.sock_sendall(tunnel.client, b"q" * 200)
        received = b""
        while len(received) < 200:
            received += await loop.sock_recv(tunnel.origin, 1000)
        await loop.sock_sendall(tunnel.origin, b"r" * 1024)
        reply = b""
        while len(reply) < 1024:
            reply += await loop.sock_recv(tunnel.client, 2000)
        assert open_pipes() == baseline
        bulk = os.urandom(1 << 20)
        sending = loop.create_task(loop.sock_sendall(tunnel.origin, bulk))
        downloaded = b""
        while len(downloaded) < len(bulk):
            downloaded += await loop.sock_recv(tunnel.client, 1 << 16)
        await sending
        assert downloaded == bulk
        assert open_pipes() == baseline + 2  # one pipe, two ends: the inbound direction's
        tunnel.client.shutdown(socket.SHUT_WR)
        tunnel.origin.shutdown(socket.SHUT_WR)
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error) == (200, 1024 + len(bulk), None)
        assert open_pipes() == baseline
        tunnel.close()
    run(scenario())


def test_half_close_each_way_independently(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        await loop.sock_sendall(tunnel.client, b"question")
        tunnel.client.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.origin) == (b"question", "eof")
        for part in (b"answer ", b"after ", b"half-close"):
            await loop.sock_sendall(tunnel.origin, part)
        assert not tunnel.closed.done()
        tunnel.origin.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.client) == (b"answer after half-close", "eof")
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error) == (8, 23, None)
        tunnel.close()
    run(scenario())


def test_reset_on_one_side_closes_both(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        await loop.sock_sendall(tunnel.client, b"x")
        assert await loop.sock_recv(tunnel.origin, 10) == b"x"
        tunnel.origin.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tunnel.origin.close()
        relay = await tunnel.closed
        assert relay.error == "Connection reset by peer"
        data, how = await tunnel.read_all(tunnel.client)
        assert (data, how) == (b"", "reset")
        tunnel.client.close()
    run(scenario())


def test_forced_close(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        tunnel.relay.close("shutting down")
        tunnel.relay.close("twice is harmless")
        relay = await tunnel.closed
        assert (relay.error, relay.closed) == ("shutting down", True)
        assert await tunnel.read_all(tunnel.client) == (b"", "eof")
        tunnel.close()
    run(scenario())


def test_slow_receiver_bounds_what_is_held(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        chunk, sent = b"z" * 65536, 0
        for _ in range(4096):  # up to 256 MiB offered; the origin reads nothing
            try:
                sent += tunnel.client.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                try:
                    sent += tunnel.client.send(chunk)
                except BlockingIOError:
                    break
        # Kernel socket buffers (autotuned, several MiB each) and one pipe: bounded, whatever is offered.
        assert sent < 64 << 20
        assert tunnel.relay.bytes_out <= sent
        tunnel.relay.close()
        await tunnel.closed
        tunnel.close()
    run(scenario())


def test_bulk_both_ways_intact(impl):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.start()
        up, down = os.urandom(8 << 20), os.urandom(6 << 20)
        at_origin, at_client = await both_ways(tunnel, [up], [down])
        assert hashlib.sha256(at_origin[0]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(at_client[0]).digest() == hashlib.sha256(down).digest()
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in) == (len(up), len(down))
        tunnel.close()
    run(scenario())


def test_a_direction_that_spends_its_budget_goes_on_without_a_new_edge(impl):
    """Edges say "new bytes"; bytes left unread when the budget runs out must still move."""
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(impl, loop)
        tunnel.relay.budget = 16 << 10
        tunnel.relay.start()
        data = os.urandom(1 << 20)
        await loop.sock_sendall(tunnel.client, data)  # all buffered by now, then nothing more
        tunnel.client.shutdown(socket.SHUT_WR)
        received, end = await tunnel.read_all(tunnel.origin)
        assert (len(received), end) == (len(data), "eof") and received == data
        tunnel.origin.shutdown(socket.SHUT_WR)
        relay = await tunnel.closed
        assert relay.bytes_out == len(data)
        tunnel.close()
    run(scenario())


chunks = st.lists(st.binary(min_size=1, max_size=3000), max_size=12)


@settings(max_examples=25, deadline=None)
@given(first=st.binary(max_size=500), outbound=chunks, inbound=chunks)
def test_every_implementation_delivers_the_same_streams(first, outbound, inbound):
    check_streams_through_every_relay(Tunnel, first, outbound, inbound)
