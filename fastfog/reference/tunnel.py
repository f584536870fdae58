"""A CONNECT's way to its tunnel, in pure Python: the twin of fastfog/hot/tunnel.pxi.

The compiled core carries the common CONNECT (admitted, dialed directly, its
host an IP literal or a cached name) through a lane of its own, and hands
every other one to ``Proxy.open_tunnel``. Here there is no separate lane:
``Proxy.open_tunnel`` (Opening, in connection.py) serves every CONNECT, and is
the behaviour the compiled lane is held to by the end-to-end suite, which runs
on both builds.
"""


def open_tunnel(proxy, conn, head, fields, started):
    """Open the tunnel a CONNECT asks for, or answer it."""
    proxy.open_tunnel(conn, head, fields, started)
