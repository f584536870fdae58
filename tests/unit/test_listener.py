"""The proxy's listening socket, and what its loop does with errors nothing caught."""

import json
import os
import select
import socket

from fastfog.logs import Log
from fastfog.server import open_listener, unexpected_error_reporter


def test_a_connection_is_handed_over_once_its_first_bytes_are_in():
    """TCP_DEFER_ACCEPT: accept() never returns a connection whose first read would have to wait;
    TCP_NODELAY: set once on the listener, every accepted connection has it."""
    with open_listener("127.0.0.1", 0) as listener, \
            socket.create_connection(listener.getsockname(), timeout=5) as client:
        assert not select.select([listener], [], [], 0.3)[0]  # connected, but silent so far
        client.sendall(b"CONNECT ")
        assert select.select([listener], [], [], 5)[0]
        accepted, _ = listener.accept()
        with accepted:
            accepted.setblocking(False)
            assert accepted.recv(100) == b"CONNECT "
            # Inherited from the listener: small answers never wait for the client's ACK.
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_an_error_a_callback_lets_escape_becomes_one_log_record():
    read_end, write_end = os.pipe()
    log = Log(fd=write_end)
    report = unexpected_error_reporter(log)
    report(None, {"message": "error in an edge handler", "exception": ZeroDivisionError("division by zero")})
    report(None, {"message": "Task was destroyed but it is pending!"})
    os.close(write_end)
    with os.fdopen(read_end, "rb") as lines:
        records = [json.loads(line) for line in lines]
    assert [(record["msg"], record["error"]) for record in records] == [
        ("unexpected error", "ZeroDivisionError: division by zero"),
        ("unexpected error", "Task was destroyed but it is pending!")]
