"""One short tunnel through the splice relay, compiled core vs pure-Python reference.

A webhook's tunnel: 200 bytes up, 1 KiB down, each side closes. A round is the
relay's whole life on a real event loop: start (the sockets join the relay's
epoll set), the edges, the half-closes, the close. Unix socket pairs stand in
for TCP so that a round measures the relay, not the kernel's handshakes.
"""

import socket

import pytest
import uvloop

REQUEST, REPLY = b"q" * 200, b"r" * 1024


@pytest.fixture
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def one_tunnel(impl, loop):
    client, client_side = socket.socketpair()
    upstream_side, origin = socket.socketpair()
    for sock in (client_side, upstream_side):
        sock.setblocking(False)
    closed = loop.create_future()
    impl.SpliceRelay(loop, client_side, upstream_side, closed.set_result).start()
    client.sendall(REQUEST)
    client.shutdown(socket.SHUT_WR)
    origin.sendall(REPLY)
    origin.shutdown(socket.SHUT_WR)
    relay = loop.run_until_complete(closed)
    up, down = origin.recv(4096), client.recv(4096)
    client.close()
    origin.close()
    return relay, up, down


def test_short_tunnel(benchmark, impl, loop):
    benchmark.group = "relay: one tunnel, 200 B up, 1 KiB down, both close"
    relay, up, down = benchmark(one_tunnel, impl, loop)
    assert (relay.bytes_out, relay.bytes_in, relay.error) == (len(REQUEST), len(REPLY), None)
    assert (up, down) == (REQUEST, REPLY)
