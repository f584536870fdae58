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
