"""The origin servers ``fastfog bench`` measures against, on uvloop protocols.

- ``reply`` (the ``connect`` workload): reads a request of a known size,
  answers a fixed reply and closes, as a webhook receiver does.
- ``http`` (the ``http`` workload): HTTP/1.1 keep-alive, the same
  1 KiB response to every GET.
- ``serve_bulk`` (the ``bulk`` workload): sends N bytes while it counts the
  bytes it receives, in blocking threads, then closes.

They do as little per byte and per connection as Python allows, so that the
proxy, not the origin, is what a run measures.
"""

import asyncio
import socket
import threading
import time

REQUEST_SIZE = 200
REPLY_SIZE = 1024
CHUNK = 256 * 1024


class _Reply(asyncio.Protocol):
    __slots__ = ("transport", "received", "request_size", "reply")

    def __init__(self, request_size, reply):
        self.request_size, self.reply, self.received = request_size, reply, 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        if self.received >= self.request_size:
            self.transport.write(self.reply)
            self.transport.close()

    def eof_received(self):
        return False


def http_response(body_size):
    body = b"x" * body_size
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class _Http(asyncio.Protocol):
    """Answers each complete GET head (no request bodies in this workload)."""

    __slots__ = ("transport", "pending", "response")

    def __init__(self, response):
        self.response, self.pending = response, b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        data = self.pending + data if self.pending else data
        heads = data.count(b"\r\n\r\n")
        if heads:
            self.transport.write(self.response * heads)
        self.pending = data[data.rfind(b"\r\n\r\n") + 4:] if heads else data


def move_bulk(sock, size):
    """Send ``size`` bytes while receiving until EOF (two threads; the GIL is released in both
    system calls, so this runs at the kernel's speed). Bytes received and when each direction
    finished, relative to the start."""
    started = time.perf_counter()
    finished = {}

    def upload():
        chunk = memoryview(bytes(CHUNK))
        sent = 0
        try:
            while sent < size:
                sent += sock.send(chunk[:min(CHUNK, size - sent)])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finished["sent"] = time.perf_counter() - started

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    buffer = memoryview(bytearray(CHUNK))
    received = 0
    try:
        while True:
            count = sock.recv_into(buffer)
            if not count:
                break
            received += count
    except OSError:
        pass
    finished["received"] = time.perf_counter() - started
    sender.join()
    return received, finished["sent"], finished["received"]


def serve_bulk(listener, size):
    """The ``bulk`` origin: for each connection, ``size`` bytes down while reading everything up."""
    def handle(sock):
        with sock:
            move_bulk(sock, size)

    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


async def start(kind, host, port, *, request_size=REQUEST_SIZE, reply_size=REPLY_SIZE, bulk_size=0):
    """Start an origin of ``kind`` (reply, http) on host:port; the asyncio server."""
    loop = asyncio.get_running_loop()
    if kind == "reply":
        reply = b"r" * reply_size
        factory = lambda: _Reply(request_size, reply)  # noqa: E731
    elif kind == "http":
        response = http_response(reply_size)
        factory = lambda: _Http(response)  # noqa: E731
    else:
        raise ValueError(f"unknown origin kind {kind!r}")
    return await loop.create_server(factory, host, port, backlog=4096, reuse_address=True, reuse_port=True)
