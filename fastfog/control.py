"""The control channel between the ``--workers`` supervisor and each worker (see supervisor.py).

A Unix socket pair per worker carries length-prefixed pickles: both ends are
fastfog's own processes. The supervisor asks (``{"op": "metrics"}``, "status",
"reload"); the worker answers each request in turn. A worker learns its part
from ``FASTFOG_WORKER`` (index, port, control file descriptor) and stops by
itself when the channel closes (the supervisor is gone).
"""

import asyncio
import os
import pickle
import socket
import struct

ENVIRONMENT = "FASTFOG_WORKER"
_LENGTH = struct.Struct("!I")


class WorkerRole:
    """What ``FASTFOG_WORKER`` tells a worker process."""

    def __init__(self, index, port, control_fd):
        self.index, self.port, self.control_fd = index, port, control_fd

    @classmethod
    def from_environment(cls):
        value = os.environ.get(ENVIRONMENT)
        if not value:
            return None
        index, port, fd = (int(part) for part in value.split(":"))
        return cls(index, port, fd)


async def send_message(writer, message):
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(data)) + data)
    await writer.drain()


async def read_message(reader):
    """The next message, or None at end of stream."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        return pickle.loads(await reader.readexactly(_LENGTH.unpack(header)[0]))
    except asyncio.IncompleteReadError:
        return None


async def answer_supervisor(role, answers, on_lost):
    """Worker side: answer each request ``{"op": name, "id": n}`` with ``answers[name]()`` (awaited
    when it is a coroutine; and its ``id``); ``on_lost()`` when the supervisor closes the channel."""
    control = socket.socket(fileno=role.control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control)
    try:
        while True:
            request = await read_message(reader)
            if request is None:
                break
            handler = answers.get(request.get("op"))
            try:
                if handler is None:
                    reply = {"ok": False, "error": "unknown request"}
                else:
                    value = handler()
                    if asyncio.iscoroutine(value):
                        value = await value
                    reply = {"ok": True, "value": value}
            except Exception as err:  # a bug in one answer must not end the channel
                reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            reply["id"] = request.get("id")
            await send_message(writer, reply)
    except OSError:
        pass
    finally:
        writer.close()
    on_lost()
