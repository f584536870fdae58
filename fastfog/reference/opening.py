"""A request's way to its upstream, in pure Python: the twin of fastfog/hot/opening.pxi.

The compiled core carries the common request (admitted, dialed directly, its
host an IP literal or a cached name) through a lane of its own, and hands
every other one to ``connection.Opening`` with admission's verdict. Here there
is no separate lane: Opening serves every request, and is the behaviour the
compiled lane is held to by the end-to-end suite, which runs on both builds.
"""


def open_upstream(proxy, conn, head, fields, connect, reuse, done):
    """Decide, resolve, classify and dial for one request, then ``done(upstream, answer, close)``
    (see connection.Opening, whose arguments these are)."""
    from fastfog.connection import Opening  # (connection.py imports fastfog.hotpaths, which imports this)

    Opening(proxy, conn, head, fields, connect, done, reuse).start()
