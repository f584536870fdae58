"""The control channel between the --workers supervisor and a worker, over a real socket pair."""

import asyncio
import os
import socket

import uvloop

from fastfog.control import WorkerRole, answer_supervisor, read_message, send_message
from fastfog.supervisor import Worker


def test_requests_are_answered_in_turn_and_a_late_answer_is_never_taken_for_the_next():
    async def scenario():
        supervisor_end, worker_end = socket.socketpair()
        lost = asyncio.Event()
        calls = []

        def slow_status():
            calls.append("status")
            return {"open_tunnels": 3}

        worker = Worker(0)
        worker.reader, worker.writer = await asyncio.open_unix_connection(sock=supervisor_end)
        answering = asyncio.create_task(answer_supervisor(WorkerRole(0, 4750, os.dup(worker_end.fileno())),
                                                          {"status": slow_status, "broken": lambda: 1 / 0},
                                                          lost.set))
        worker_end.close()
        assert await worker.ask("status") == {"ok": True, "value": {"open_tunnels": 3}, "id": 1}
        broken = await worker.ask("broken")
        assert (broken["ok"], broken["error"]) == (False, "ZeroDivisionError: division by zero")
        assert (await worker.ask("nothing"))["error"] == "unknown request"
        # An answer that arrives after its question gave up is skipped, not taken for the next one.
        await send_message(worker.writer, {"op": "status", "id": 99})  # answered with id 99
        await asyncio.sleep(0.1)
        assert (await worker.ask("status"))["id"] == worker.asked
        worker.writer.close()
        await asyncio.wait_for(lost.wait(), 5)  # the worker hears that the supervisor is gone
        await answering
        assert calls == ["status", "status", "status"]

    uvloop.run(asyncio.wait_for(scenario(), 20))


def test_a_closed_channel_reads_as_the_end():
    async def scenario():
        one, other = socket.socketpair()
        reader, _ = await asyncio.open_unix_connection(sock=one)
        other.close()
        assert await read_message(reader) is None

    uvloop.run(asyncio.wait_for(scenario(), 20))
