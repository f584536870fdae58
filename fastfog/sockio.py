"""Awaiting raw non-blocking sockets, cheaply.

The event loop's ``sock_recv``/``sock_sendall``/``sock_connect`` register the
socket with the loop on every call and re-inspect its family and address (each
an enum conversion in the socket module). These try the system call first
and wait for readiness on the bare file descriptor only when it would block,
which is the uncommon case on a busy proxy: a client's request head has usually
arrived by the time it is accepted, and a small answer fits the send buffer.
"""

import errno
import os
import socket


def _wake(future):
    if not future.done():
        future.set_result(None)


async def _ready(loop, fd, add, remove):
    future = loop.create_future()
    add(fd, _wake, future)
    try:
        await future
    finally:
        remove(fd)


async def recv(loop, sock, size):
    """Up to ``size`` bytes, b"" at end of stream."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await _ready(loop, sock.fileno(), loop.add_reader, loop.remove_reader)


async def sendall(loop, sock, data):
    """All of ``data``, waiting while the send buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await _ready(loop, sock.fileno(), loop.add_writer, loop.remove_writer)


async def connect(loop, sock, address):
    """Connect a non-blocking socket; OSError (ConnectionRefusedError, …) when it fails."""
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EAGAIN):
        await _ready(loop, sock.fileno(), loop.add_writer, loop.remove_writer)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))
