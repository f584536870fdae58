"""A minimal HTTP/1.1 server on a Unix socket, for the stats and admin sockets.

One request per connection, answered with JSON and closed: what ``curl
--unix-socket`` and monitoring agents need, nothing more. Request heads go
through fastfog's own head parser; a request body is not read.
"""

import asyncio
import json
import os

from fastfog.hotpaths import HeadError, parse_request_head

MAX_HEAD = 16384
TIMEOUT = 5.0


def _answer(status, payload):
    body = json.dumps(payload, indent=1).encode() + b"\n"
    phrase = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              422: "Unprocessable Entity", 500: "Internal Server Error"}[status]
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


async def _read_head(reader):
    data = b""
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            raise HeadError("connection closed before a full request head")
        data += chunk
        head = parse_request_head(data)
        if head is not None:
            return head
        if len(data) > MAX_HEAD:
            raise HeadError("request head too long")


async def serve(path, mode, routes):
    """Listen on ``path`` (file mode ``mode``); ``routes``: {(method, path): handler}, each handler a
    function (sync or async) returning (status, JSON-able payload). Returns the server."""
    if os.path.exists(path):
        os.unlink(path)

    async def handle(reader, writer):
        try:
            try:
                head = await asyncio.wait_for(_read_head(reader), TIMEOUT)
            except HeadError as err:
                writer.write(_answer(400, {"error": str(err)}))
                return
            target = (head.path or head.target).split("?")[0]
            handler = routes.get((head.method, target))
            if handler is None:
                allowed = sorted(method for method, route in routes if route == target)
                writer.write(_answer(405, {"error": f"use {' or '.join(allowed)}"}) if allowed
                             else _answer(404, {"error": "no such path; try "
                                                         + ", ".join(sorted({r for _, r in routes}))}))
                return
            result = handler()
            if asyncio.iscoroutine(result):
                result = await result
            writer.write(_answer(*result))
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    # The file is created with the process umask; tighten it before anything else can connect.
    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path)
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    return server


def stop(server, path):
    server.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
