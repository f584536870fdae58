"""The stats socket: open tunnels as JSON on a Unix socket (``stats_socket_dir``, SPEC 4.3).

``<dir>/track-<pid>.sock`` answers any HTTP GET of ``/`` with a JSON array, one
object per open tunnel, in Smokescreen's shape: ``role``, ``rhost`` (the host
as requested), ``raddr`` (the address dialed), ``created``, ``bytesIn``,
``bytesOut``, ``secondsSinceLastActivity`` and ``proxyType``. The socket file
gets ``stats_socket_file_mode`` and is removed when fastfog exits.
"""

import os
import time

from fastfog import logs, unixhttp


def snapshot(proxy):
    """The open tunnels, as the stats socket reports them."""
    now = time.monotonic()
    return [{
        "role": tunnel.role,
        "rhost": tunnel.fields["requested_host"],
        "raddr": tunnel.fields.get("outbound_remote_addr", ""),
        "created": logs.rfc3339(tunnel.started),
        "bytesIn": tunnel.relay.bytes_in,
        "bytesOut": tunnel.relay.bytes_out,
        "secondsSinceLastActivity": round(now - tunnel.relay.last_activity, 3),
        "proxyType": tunnel.proxy_type,
    } for tunnel in list(proxy.tunnels)]


async def start(proxy, directory, mode):
    """Serve the stats socket; returns (server, path)."""
    path = os.path.join(directory, f"track-{os.getpid()}.sock")
    server = await unixhttp.serve(path, mode, {("GET", "/"): lambda: (200, snapshot(proxy))})
    return server, path


stop = unixhttp.stop
