"""Taking connections off a listener, in pure Python: the twin of fastfog/hot/accept.pxi.

``accept_batch(listener, limit, take)`` accepts up to ``limit`` waiting
connections and hands each to ``take(sock, address)`` as a non-blocking
socket (``address`` as ``socket.accept`` gives it). It returns how many it
took and the ``OSError`` that stopped it early, or None when the queue ran
dry or the limit was reached. The compiled twin accepts each connection
non-blocking from the start (``accept4``), which saves a system call per
connection; here ``setblocking`` makes it so.
"""

import _socket
import os
import socket


def accept_batch(listener, limit, take):
    accept, family = listener._accept, listener.family
    for index in range(limit):
        try:
            fd, address = accept()
        except BlockingIOError:
            return index, None
        except OSError as err:
            return index, err
        try:
            # The C socket type: socket.socket's Python-level __init__ and close cost more than
            # the rest of taking a connection.
            sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
        except OSError as err:  # gone already (it is checked with getsockname)
            os.close(fd)
            return index + 1, err
        sock.setblocking(False)
        take(sock, address)
    return limit, None
