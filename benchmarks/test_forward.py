"""One keep-alive request forwarded through the proxy's whole path, in one process.

A webhook sender's request on a kept-alive client connection: the head read and
parsed, the decision (an IP literal, so no DNS), the address check, a pooled
upstream connection, the rewritten head up, a 1 KiB response down, the
decision record and metrics. Client, proxy and origin share one uvloop loop
over 127.0.0.1; the ``direct`` round (the same client and origin, no proxy) is
the fixed cost of the two ends, and the difference is what the proxy costs per
request. It shows what a change to the per-request path saves, without a second
process or the machine's other load in between.

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


class Origin:
    """Answers every complete request head on every connection with RESPONSE."""

    def __init__(self, loop):
        self.loop = loop
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self):
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        self.sockets.append(sock)
        self.loop.add_reader(sock.fileno(), self._answer, sock)

    def _answer(self, sock):
        data = sock.recv(65536)
        if not data:
            self.loop.remove_reader(sock.fileno())
            return
        sock.send(RESPONSE * data.count(b"\r\n\r\n"))

    def close(self):
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()


class Client:
    """A kept-alive client connection: handed to the proxy, or (without one) straight to the origin."""

    def __init__(self, loop, proxy, port):
        self.loop = loop
        target = f"http://127.0.0.1:{port}/hook"
        if proxy is None:
            self.sock, target = socket.create_connection(("127.0.0.1", port)), "/hook"
        else:
            self.sock, proxy_side = socket.socketpair(socket.AF_UNIX)
            proxy_side.setblocking(False)
            proxy.accept(proxy_side, ("127.0.0.1", 40000))
        self.sock.setblocking(False)
        self.request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        "User-Agent: webhook-sender\r\nAccept: */*\r\n\r\n").encode()
        self.received = bytearray()
        self.done = None
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self):
        self.received += self.sock.recv(65536)
        head_end = self.received.find(b"\r\n\r\n")
        if head_end >= 0 and len(self.received) - head_end - 4 >= len(BODY) and not self.done.done():
            self.done.set_result(None)

    def one_request(self):
        self.received.clear()
        self.done = self.loop.create_future()
        self.sock.send(self.request)
        self.loop.run_until_complete(self.done)
        return bytes(self.received)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


@pytest.fixture(params=["fastfog", "direct"])
def forwarding(request):
    """A client through the proxy, or (``direct``) the same client and origin alone: the
    difference between the two is what the proxy costs."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    origin = Origin(loop)
    null = os.open(os.devnull, os.O_WRONLY)
    config = load_config(None, {"allow_ranges": ["127.0.0.1/32"], "idle_timeout": "60s"})

    async def make_proxy():
        return Proxy(config, None, logs.Log(fd=null, loop=loop))

    proxy = loop.run_until_complete(make_proxy()) if request.param == "fastfog" else None
    client = Client(loop, proxy, origin.port)
    yield client
    client.close()
    if proxy is not None:
        proxy.pool.close()
    origin.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    asyncio.set_event_loop(None)
    os.close(null)


def test_keep_alive_request(benchmark, forwarding):
    benchmark.group = "forward: one kept-alive request, 1 KiB response"
    forwarding.one_request()  # the first dials; the rounds reuse the pooled connection
    answer = benchmark(forwarding.one_request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(BODY)
