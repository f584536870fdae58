"""The stats socket: open tunnels as JSON on a Unix socket (``stats_socket_dir``, SPEC 4.3).

``<dir>/track-<pid>.sock`` answers any HTTP GET of ``/`` with a JSON array, one
object per open tunnel, in Smokescreen's shape: ``role``, ``rhost`` (the host
as requested), ``raddr`` (the address dialed), ``created``, ``bytesIn``,
``bytesOut``, ``secondsSinceLastActivity`` and ``proxyType``. The socket file
gets ``stats_socket_file_mode`` and is removed when fastfog exits.
"""

import asyncio
import json
import os
import time

from fastfog import logs


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
    if os.path.exists(path):
        os.unlink(path)

    async def answer(reader, writer):
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if target.split(b"?")[0] == b"/":
                status, body, kind = "200 OK", json.dumps(snapshot(proxy)).encode() + b"\n", "application/json"
            else:
                status, body, kind = "404 Not Found", b"only / is served here\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(answer, path)
    os.chmod(path, mode)
    return server, path


def stop(server, path):
    server.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
