"""Log records: Smokescreen's JSON shape, logfmt, timestamps and connection ids."""

import json
import os
import re
import time

from fastfog import logs


def capture(fmt, *records):
    read_end, write_end = os.pipe()
    log = logs.Log(fmt, fd=write_end)
    for level, msg, fields in records:
        log.emit(level, msg, fields)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        return reader.read().decode().splitlines()


def test_json_records_have_level_msg_time_and_fields():
    [line] = capture("json", ("warning", logs.DECISION, {"allow": False, "role": "r", "dns_lookup_time_ms": 0}))
    record = json.loads(line)
    assert (record["level"], record["msg"], record["allow"], record["role"]) == ("warning", logs.DECISION, False, "r")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", record["time"])
    assert list(record) == sorted(record)


def test_logfmt_quotes_what_needs_quoting():
    [line] = capture("logfmt", ("info", "CANONICAL-PROXY-CN-CLOSE", {"error": "", "bytes_in": 5, "reason": 'a "b" c'}))
    assert line.startswith("time=") and " level=info msg=CANONICAL-PROXY-CN-CLOSE " in line
    assert 'bytes_in=5 error="" reason="a \\"b\\" c"' in line


def test_connection_ids_are_unique_and_sortable():
    ids = logs.IdSource()
    first = [ids.next() for _ in range(1000)]
    assert len(set(first)) == 1000
    assert all(re.fullmatch(r"[0-9a-v]{20}", value) for value in first)
    time.sleep(1.1)
    assert ids.next()[:6] >= first[0][:6]


def test_a_broken_log_stream_never_raises():
    read_end, write_end = os.pipe()
    os.close(read_end)
    logs.Log(fd=write_end).info("after the reader went away")
    os.close(write_end)


def test_a_stalled_reader_never_blocks_the_loop_and_whole_records_resume():
    """A pipe nobody reads: records wait in a bounded backlog, the rest are dropped whole and
    counted, and once the reader is back every line it gets is a complete record, followed by
    one saying how many were dropped."""
    import asyncio
    import threading

    import uvloop

    read_end, write_end = os.pipe()
    loop = uvloop.new_event_loop()
    dropped = []
    log = logs.Log(fd=write_end, loop=loop, max_backlog=256 << 10)
    log.on_dropped = dropped.append
    assert os.get_blocking(write_end)  # the non-blocking description is the log's own

    async def burst():
        for number in range(5000):  # about 1.3 MB: far past the pipe's 64 KiB and the backlog
            log.info("record", {"n": number, "pad": "x" * 200})
        await asyncio.sleep(0.05)  # the loop goes on: nothing blocks while the pipe is full

    started = time.monotonic()
    loop.run_until_complete(burst())
    assert time.monotonic() - started < 5
    assert sum(dropped) > 0
    received = []
    reader = threading.Thread(target=lambda: received.append(os.read(read_end, 1 << 20)) or
                              [received.append(chunk) for chunk in iter(lambda: os.read(read_end, 1 << 20), b"")])
    reader.start()
    loop.run_until_complete(asyncio.sleep(0.5))  # the reader is back: the backlog drains
    log.attach(None)
    os.close(write_end)
    reader.join(5)
    loop.close()
    records = [json.loads(line) for line in b"".join(received).decode().splitlines()]  # every one whole
    numbers = [record["n"] for record in records if record["msg"] == "record"]
    assert numbers == sorted(numbers) and len(numbers) + sum(dropped) == 5000
    assert records[-1]["msg"] == "log records dropped: the log reader was too slow"
    assert records[-1]["dropped"] == sum(dropped)
