"""The cost of the two canonical records every tunnel writes, to compare with a tunnel's whole cost."""

import os

import pytest

from fastfog import logs

DECISION = {
    "id": "d4qsdn0ocgl5m1pd2v1g", "inbound_remote_addr": "10.20.30.40:51234", "proxy_type": "connect",
    "requested_host": "hooks.partner-payments.example.com:443", "start_time": "2026-11-22T00:00:00.123456Z",
    "trace_id": "6f1c2b0e-8d2a-4c71-9a5e-3f0b7d9e2c41", "role": "webhooks-prod", "project": "payments",
    "decision_reason": "host matched allowed domain in rule", "allow": True, "enforce_would_deny": False,
    "dns_lookup_time_ms": 0, "outbound_local_addr": "10.0.0.5:40000", "outbound_remote_addr": "203.0.113.7:443",
    "conn_establish_time_ms": 1,
}


@pytest.fixture
def log():
    with open(os.devnull, "wb") as sink:
        yield logs.Log(fd=sink.fileno())


def test_json_line(benchmark, impl):
    benchmark.group = "log: format one CANONICAL-PROXY-DECISION record as JSON"
    line = benchmark(impl.json_line, DECISION, "info", logs.DECISION, "2026-11-22T00:00:00.123456789Z")
    assert line.endswith(b"}\n")


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_decision_record(benchmark, log, fmt):
    """The whole emit: timestamp, formatting (the running implementation's) and buffering."""
    if fmt == "logfmt":
        log._format = log._logfmt
    benchmark.group = "log: emit one CANONICAL-PROXY-DECISION record"
    benchmark(log.info, logs.DECISION, DECISION)


def test_connection_ids(benchmark, impl):
    benchmark.group = "log: connection id"
    ids = impl.IdSource()
    assert len(benchmark(ids.next)) == 20


def test_timestamp(benchmark, impl):
    benchmark.group = "log: RFC 3339 timestamp"
    assert benchmark(impl.rfc3339, 1763769600.123456).endswith("Z")
