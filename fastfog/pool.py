"""Idle upstream connections for forwarded HTTP requests, kept for reuse.

A forwarded request is decided, resolved and classified on its own like any
other; only once it has picked an address does it look here for an idle
connection to exactly that address and port, so reuse never widens what a
request may reach. A connection comes back after a response whose framing
left it clean (a known length or chunked body, no ``Connection: close``).

Bounded like Go's transport, which Smokescreen's ``transport_max_idle_conns``
and ``transport_max_idle_conns_per_host`` configure (0 means the default
here); an idle connection is dropped after ``idle_timeout`` (90 s when that is
0, as Go's transport), noticed when it is taken. One the server closes (or
sends anything to) while idle is dropped as soon as its watch says so, as Go's
transport does: it neither lingers half-closed nor holds a file descriptor;
and a last look when it is taken catches what arrived since.

``UpstreamPool(max_idle, max_idle_per_host, idle_seconds)``: ``take(address,
port)`` gives (socket, watch, names) of an idle connection that still looks
open, or None; ``give(address, port, sock, watch, names)`` keeps one, or
closes it when the pool is full; ``close()`` closes them all. Compiled in
hot/pool.pxi, with the twin in reference/pool.py.
"""

from fastfog.hotpaths import UpstreamPool
from fastfog.reference.pool import DEFAULT_IDLE_SECONDS, DEFAULT_MAX_IDLE, DEFAULT_MAX_IDLE_PER_HOST

__all__ = ["DEFAULT_IDLE_SECONDS", "DEFAULT_MAX_IDLE", "DEFAULT_MAX_IDLE_PER_HOST", "UpstreamPool"]
