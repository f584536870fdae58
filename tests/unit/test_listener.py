"""The proxy's listening socket."""

import select
import socket

from fastfog.server import open_listener


def test_a_connection_is_handed_over_once_its_first_bytes_are_in():
    """TCP_DEFER_ACCEPT: accept() never returns a connection whose first read would have to wait."""
    with open_listener("127.0.0.1", 0) as listener, \
            socket.create_connection(listener.getsockname(), timeout=5) as client:
        assert not select.select([listener], [], [], 0.3)[0]  # connected, but silent so far
        client.sendall(b"CONNECT ")
        assert select.select([listener], [], [], 5)[0]
        accepted, _ = listener.accept()
        with accepted:
            accepted.setblocking(False)
            assert accepted.recv(100) == b"CONNECT "
