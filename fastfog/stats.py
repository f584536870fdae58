"""The stats socket: open tunnels as JSON on a Unix socket (``stats_socket_dir``, SPEC 4.3).

``<dir>/track-<pid>.sock`` answers any HTTP GET of ``/`` with a JSON array, one
object per open tunnel, in Smokescreen's shape: ``role``, ``rhost`` (the host
as requested), ``raddr`` (the address dialed), ``created``, ``bytesIn``,
``bytesOut``, ``secondsSinceLastActivity`` and ``proxyType`` (conntrack.py makes
the list). The socket file
gets ``stats_socket_file_mode`` and is removed when fastfog exits.
"""

import os

from fastfog import unixhttp


async def start(proxy, directory, mode):
    """Serve the stats socket; returns (server, path)."""
    path = os.path.join(directory, f"track-{os.getpid()}.sock")
    server = await unixhttp.serve(path, mode, {("GET", "/"): lambda: (200, proxy.conntrack.snapshot())})
    return server, path


stop = unixhttp.stop
