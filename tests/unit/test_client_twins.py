"""A client connection reading request heads (hotpaths.ClientConnection), compiled and pure
Python, held to the same behaviour over real TCP sockets on loopback: for generated streams of
requests (pipelined, trickled in pieces, cut short, malformed), both hand the proxy the same heads
in the same order and end the same way. The whole proxy around it is covered by the end-to-end
suite on both builds."""

import asyncio

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IMPLEMENTATIONS, feed, tcp_pair

from fastfog.reference.client import ClientConnection as ReferenceClientConnection

pytestmark = pytest.mark.netns  # loopback of the test namespace

CONNECTIONS = {"reference": ReferenceClientConnection}
if "core" in IMPLEMENTATIONS:
    CONNECTIONS["core"] = IMPLEMENTATIONS["core"].ClientConnection


class Config:
    read_header_timeout, idle_timeout = 0.5, 0.0


class Log:
    def __init__(self, events):
        self.events = events

    def record(self, level, msg, fields):
        self.events.append((level, msg, fields.get("error", "")))

    def info(self, msg, fields):
        self.record("info", msg, fields)

    def warning(self, msg, fields):
        self.record("warning", msg, fields)

    def error(self, msg, fields):
        self.record("error", msg, fields)


class Proxy:
    """What a client connection asks of the proxy; each request is answered at once and the
    connection reads on."""

    def __init__(self, loop, poller, events):
        self.loop, self.poller, self.events = loop, poller, events
        self.config, self.serving, self.connections, self.on_close = Config(), True, set(), None
        self.log = Log(events)

    def request(self, conn, head):
        self.events.append(("request", head.method, head.target, bytes(conn.buffer)))
        conn.send(b"answer %d\n" % len(self.events), conn.next_request)

    def spawn(self, coroutine):
        return self.loop.create_task(coroutine)

    async def send_final(self, sock, data):
        self.events.append(("final", data.split(b"\r\n", 1)[0]))
        await self.loop.sock_sendall(sock, data)


def read_heads(connection_class, impl, pieces):
    """Feed ``pieces`` to a client connection, one per loop turn (None: the client shuts its side
    down); the events and what the client received."""
    events = []

    async def scenario():
        loop = asyncio.get_running_loop()
        far, near = tcp_pair()
        far.setblocking(False)
        proxy = Proxy(loop, impl.poller_for(loop), events)
        conn = connection_class(proxy, near, near.getpeername())
        if pieces and pieces[0]:
            far.send(pieces[0])  # (the first read finds it, as after most accepts)
        conn.read_head()
        received = bytearray()
        await feed(far, pieces[1:], 0.002)
        for _ in range(100):  # until the connection closes, or 0.5 s more
            await asyncio.sleep(0.005)
            try:
                while chunk := far.recv(65536):
                    received.extend(chunk)
            except (BlockingIOError, OSError):
                pass
            if conn.closed:
                break
        events.append(("closed", conn.closed, conn in proxy.connections))
        conn.close()
        far.close()
        return bytes(received)

    received = uvloop.run(scenario())
    return events, received


REQUESTS = [b"CONNECT 203.0.113.1:443 HTTP/1.1\r\nHost: 203.0.113.1:443\r\n\r\n",
            b"GET http://203.0.113.1/hook HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n",
            b"GET /healthcheck HTTP/1.0\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nX: y\r\n\r\n"]
MALFORMED = [b"GET\r\n\r\n", b"GET http://h/ HTTP/1.1\r\nbad header\r\n\r\n", b"\x00\x01\r\n\r\n",
             b"GET http://h/ HTTP/1.1\r\nHost: h"]


@st.composite
def streams(draw):
    stream = b"".join(draw(st.lists(st.sampled_from(REQUESTS), max_size=4)))
    if draw(st.booleans()):
        stream += draw(st.sampled_from(MALFORMED))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    pieces = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    if draw(st.booleans()):
        pieces.append(None)
    return pieces


@pytest.mark.skipif(len(CONNECTIONS) < 2, reason="compiled core disabled by FASTFOG_NO_EXTENSIONS")
@settings(max_examples=40)
@given(streams())
def test_both_connections_hand_over_the_same_heads_and_end_the_same_way(pieces):
    results = {name: read_heads(connection_class, IMPLEMENTATIONS[name], pieces)
               for name, connection_class in CONNECTIONS.items()}
    assert results["core"] == results["reference"]


@pytest.mark.parametrize("name", sorted(CONNECTIONS))
def test_pipelined_heads_in_pieces_each_reach_the_proxy_once(name):
    stream = REQUESTS[1] + REQUESTS[0]
    events, received = read_heads(CONNECTIONS[name], IMPLEMENTATIONS[name], [stream[:5], stream[5:70], stream[70:],
                                                                           None])
    assert [event[:3] for event in events[:2]] == [("request", "GET", "http://203.0.113.1/hook"),
                                                   ("request", "CONNECT", "203.0.113.1:443")]
    assert received == b"answer 1\nanswer 2\n"
    assert events[2:] == [("closed", True, False)]


@pytest.mark.parametrize("name", sorted(CONNECTIONS))
def test_a_malformed_head_is_answered_400_and_logged(name):
    events, received = read_heads(CONNECTIONS[name], IMPLEMENTATIONS[name], [b"GET\r\n\r\n"])
    assert events[0][0] == "warning" and events[0][1] == "bad request"
    assert events[1] == ("final", b"HTTP/1.1 400 Bad Request")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize("name", sorted(CONNECTIONS))
def test_a_head_that_never_ends_times_out(name):
    events, received = read_heads(CONNECTIONS[name], IMPLEMENTATIONS[name], [b"GET http://h/ HTTP/1.1\r\n"])
    assert events == [("info", "client did not finish its request in time", ""), ("closed", True, False)]
