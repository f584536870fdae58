"""A deliberately plain blocking client for end-to-end tests."""

import socket
import time

from fastfog.reference import parse_response_head


def read_head(sock, limit=65536, already=b""):
    """Read a response head (``already``: bytes read before); returns (head, bytes after it)."""
    data = already
    while True:
        head = parse_response_head(data)
        if head is not None:
            return head, data[head.head_end:]
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {data!r}")
        data += chunk
        if len(data) > limit:
            raise ValueError("response head too long")


def read_until_closed(sock, already=b""):
    data = already
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def connect(proxy, target, headers=b"", first_bytes=b"", timeout=10):
    """Open a CONNECT tunnel: (socket, response head, bytes after the head)."""
    sock = socket.create_connection(proxy, timeout=timeout)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + headers + b"\r\n" + first_bytes
    sock.sendall(request)
    head, rest = read_head(sock)
    return sock, head, rest


def exchange(proxy, raw, timeout=10):
    """Send raw bytes, read until the proxy closes: the whole answer."""
    with socket.create_connection(proxy, timeout=timeout) as sock:
        sock.sendall(raw)
        return read_until_closed(sock)


def eventually(predicate, timeout=5):
    """True once ``predicate()`` is (servers in other threads count their connections a moment later)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
