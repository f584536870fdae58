"""The proxy's whole path for one request, in one process.

- forward: a webhook sender's request on a kept-alive client connection: the
  head read and parsed, the decision (an IP literal, so no DNS), the address
  check, a pooled upstream connection, the rewritten head up, a 1 KiB response
  down, the decision record and metrics.
- connect: a webhook's tunnel: CONNECT with 200 bytes after the head, a new
  upstream connection, the 1 KiB answer, both ends closing, the close record.

Client, proxy and origin share one uvloop loop over 127.0.0.1; the ``direct``
round (the same client and origin, no proxy) is the fixed cost of the two ends,
and the difference is what the proxy costs. It shows what a change to the
per-connection path saves, without a second process or the machine's other
load in between.

Only the implementation this process imports runs (``FASTFOG_NO_EXTENSIONS=1``
selects the reference): the proxy takes its hot paths at import time.
"""

import asyncio
import os
import socket

import pytest
import uvloop

from fastfog import logs
from fastfog.config import load_config
from fastfog.proxy import Proxy

BODY = b"b" * 1024
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + BODY
TUNNEL_REQUEST = b"q" * 200  # what a webhook sends through its tunnel; the origin answers BODY and closes


class Origin:
    """Serves each connection on the loop: an HTTP origin answering every complete request
    head with RESPONSE, or (``tunnel``) one answering TUNNEL_REQUEST with BODY, then closing."""

    def __init__(self, loop, tunnel):
        self.loop, self.tunnel = loop, tunnel
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.received = {}  # open socket -> bytes it sent so far
        loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self):
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        self.received[sock] = b""
        self.loop.add_reader(sock.fileno(), self._readable, sock)

    def _readable(self, sock):
        data = sock.recv(65536)
        if not data:
            self._close(sock)
        elif not self.tunnel:
            sock.send(RESPONSE * data.count(b"\r\n\r\n"))
        else:
            self.received[sock] += data
            if len(self.received[sock]) >= len(TUNNEL_REQUEST):
                sock.send(BODY)
                self._close(sock)

    def _close(self, sock):
        self.loop.remove_reader(sock.fileno())
        del self.received[sock]
        sock.close()

    def close(self):
        for sock in list(self.received):
            self._close(sock)
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()


class Client:
    """A client on the loop: it sends, then reads until its answer is whole."""

    def __init__(self, loop, sock):
        self.loop, self.sock = loop, sock
        sock.setblocking(False)
        self.received = bytearray()
        self.done = None
        self.complete = None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        data = self.sock.recv(65536)
        self.received += data
        if not self.done.done() and self.complete(self.received, data):
            self.done.set_result(None)

    def send_and_read(self, data, complete):
        """Send ``data`` (if any); return what came back once ``complete(received, last read)`` says so."""
        self.received.clear()
        self.complete = complete
        self.done = self.loop.create_future()
        if data:
            self.sock.send(data)
        self.loop.run_until_complete(self.done)
        return bytes(self.received)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def through_proxy(proxy, first=b""):
    """A client socket whose other end the proxy has just accepted, with ``first`` already sent
    (as the proxy's listener hands over connections: once their first bytes are in)."""
    mine, proxy_side = socket.socketpair(socket.AF_UNIX)
    mine.send(first)
    proxy_side.setblocking(False)
    proxy.accept(proxy_side, ("127.0.0.1", 40000))
    return mine


def response_complete(received, _):
    head_end = received.find(b"\r\n\r\n")
    return head_end >= 0 and len(received) - head_end - 4 >= len(BODY)


def closed(_, last):
    return not last


class Setup:
    """A loop with an origin and, unless ``direct``, a proxy in front of it."""

    def __init__(self, direct, tunnel):
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.origin = Origin(self.loop, tunnel)
        self.null = os.open(os.devnull, os.O_WRONLY)
        config = load_config(None, {"allow_ranges": ["127.0.0.1/32"], "idle_timeout": "60s"})

        async def make_proxy():
            return Proxy(config, None, logs.Log(fd=self.null, loop=self.loop))

        self.proxy = None if direct else self.loop.run_until_complete(make_proxy())

    def close(self):
        if self.proxy is not None:
            self.proxy.pool.close()
        self.origin.close()
        self.loop.run_until_complete(asyncio.sleep(0.01))
        self.loop.close()
        asyncio.set_event_loop(None)
        os.close(self.null)


@pytest.fixture(params=["fastfog", "direct"])
def setup(request):
    """Through the proxy, or (``direct``) the same client and origin alone: the difference
    between the two is what the proxy costs."""
    return request.param == "direct"


def test_keep_alive_request(benchmark, setup):
    benchmark.group = "forward: one kept-alive request, 1 KiB response"
    ends = Setup(setup, tunnel=False)
    port = ends.origin.port
    if ends.proxy is None:
        client, target = Client(ends.loop, socket.create_connection(("127.0.0.1", port))), "/hook"
    else:
        client, target = Client(ends.loop, through_proxy(ends.proxy)), f"http://127.0.0.1:{port}/hook"
    request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "User-Agent: webhook-sender\r\nAccept: */*\r\n\r\n").encode()
    client.send_and_read(request, response_complete)  # the first dials; the rounds reuse the pooled connection
    answer = benchmark(client.send_and_read, request, response_complete)
    client.close()
    ends.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(BODY)


def test_short_tunnel(benchmark, setup):
    benchmark.group = "connect: one tunnel, 200 B up, 1 KiB down, both close"
    ends = Setup(setup, tunnel=True)
    port = ends.origin.port
    head = f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def one_tunnel():
        if ends.proxy is None:
            client = Client(ends.loop, socket.create_connection(("127.0.0.1", port)))
            answer = client.send_and_read(TUNNEL_REQUEST, closed)
        else:
            client = Client(ends.loop, through_proxy(ends.proxy, head + TUNNEL_REQUEST))
            answer = client.send_and_read(b"", closed)
        client.close()
        return answer

    answer = benchmark(one_tunnel)
    ends.loop.run_until_complete(asyncio.sleep(0.01))  # the last tunnel's close
    tunnels_left = 0 if ends.proxy is None else len(ends.proxy.conntrack)
    ends.close()
    assert answer == (BODY if setup else b"HTTP/1.0 200 OK\r\n\r\n" + BODY) and tunnels_left == 0
