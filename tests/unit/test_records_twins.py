"""The common path's records, metrics and webhook events (hotpaths.RecordsCore), compiled and pure
Python: for generated clients, heads, verdicts, upstreams and tunnels, both write the same records
(their ids and the clock's readings aside, which are checked for shape and order), count the same
metrics and send the same events. The end-to-end suite checks the records themselves, on both
builds, against Smokescreen's fields."""

import re
import time
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from support import IMPLEMENTATIONS

from fastfog.conntrack import CLOSE_FIELDS
from fastfog.reference.records import RecordsCore as ReferenceRecordsCore

CORES = {"reference": ReferenceRecordsCore}
if "core" in IMPLEMENTATIONS:
    CORES["core"] = IMPLEMENTATIONS["core"].RecordsCore
STAMP = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")
ID = re.compile(r"\A[0-9a-v]{20}\Z")  # (generated texts are shorter)
CLOCKED = ("id", "end_time", "last_activity", "duration")  # the id and the clock's readings


class Sink:
    """The log, the metrics and the webhooks, as one list of what they were given."""

    info_enabled = True

    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        return lambda *args: self.seen.append((name, *args))


class Head:
    def __init__(self, authority, trace_id, method="GET"):
        self.authority, self._trace_id, self.method = authority, trace_id, method

    def header(self, name):
        assert name == b"x-smokescreen-trace-id"
        return self._trace_id


texts = st.text(max_size=8)
decisions = st.builds(SimpleNamespace, reason=texts, allow=st.booleans(), enforce_would_deny=st.booleans(),
                      project=texts, result=st.sampled_from([None, "allow", "deny"]))
verdicts = st.builds(SimpleNamespace, role=texts, error=texts, decision=st.none() | decisions,
                     role_problem=st.booleans())
upstreams = st.builds(SimpleNamespace, decision=decisions, lookup_ms=st.integers(0, 50), connect_ms=st.integers(0, 50),
                      reused=st.booleans())
clients = st.builds(SimpleNamespace, peer=texts, x509_fields=st.none() | st.fixed_dictionaries(
    {"inbound_remote_x509_cn": texts}))


def without_clock(seen):
    """What a sink saw, with ids and clock readings checked and set aside."""
    plain = []
    for entry in seen:
        entry = list(entry)
        for index, part in enumerate(entry):
            if isinstance(part, dict):
                part = dict(part)
                for name in CLOCKED:
                    if name in part:
                        value = part.pop(name)
                        assert name == "id" or name == "duration" or STAMP.match(value), (name, value)
                        if name == "duration":
                            assert 0 <= value < 60
                entry[index] = part
            elif isinstance(part, str) and ID.match(part):  # an event's connection id
                entry[index] = "id"
            elif isinstance(part, float):  # a duration (ms or s) read from the clock
                assert 0 <= part < 60_000
                entry[index] = float
        plain.append(tuple(entry))
    return plain


def run(core_class, started, client, head, verdict, upstream, status, length, tunnel_details, hooks):
    sink = Sink()
    records = core_class(None, sink, sink)
    records.webhooks = sink if hooks else None
    fields = records.request_fields(client, "http", head, started)
    records.decided(fields, verdict)
    records.started(fields)
    records.forwarded(head, fields, upstream, started, status, length)
    relay = SimpleNamespace(bytes_in=10, bytes_out=20, last_activity=time.monotonic(), error=tunnel_details[0])
    tunnel = SimpleNamespace(values=tuple(fields.get(name, "") for name in CLOSE_FIELDS), relay=relay,
                             started=started, role=fields["role"], project=fields["project"], tls_sni=tunnel_details[1],
                             active_at_termination=tunnel_details[2],
                             details=(fields, upstream) if tunnel_details[3] else None)
    records.tunnel_closed(tunnel)
    return without_clock([("fields", fields), *sink.seen])


@given(client=clients, authority=texts, trace_id=st.none() | texts, verdict=verdicts, upstream=upstreams,
       status=st.integers(100, 599), length=st.none() | st.integers(0, 1 << 40),
       tunnel_details=st.tuples(st.none() | texts, st.none() | texts, st.booleans(), st.booleans()),
       hooks=st.booleans())
def test_both_write_the_same_records_counts_and_events(client, authority, trace_id, verdict, upstream, status, length,
                                                       tunnel_details, hooks):
    head = Head(authority, trace_id)
    started = time.time()
    seen = {name: run(core_class, started, client, head, verdict, upstream, status, length, tunnel_details, hooks)
            for name, core_class in CORES.items()}
    assert seen["core" if "core" in seen else "reference"] == seen["reference"]
    fields = seen["reference"][0][1]
    assert fields["trace_id"] == (trace_id or "") and fields["requested_host"] == authority
    assert ("observe", "proxy_duration_ms") in [entry[:2] for entry in seen["reference"]]


def test_a_record_below_the_log_level_is_not_built():
    for core_class in CORES.values():
        sink = Sink()
        sink.info_enabled = False
        records = core_class(None, sink, sink)
        upstream = SimpleNamespace(decision=SimpleNamespace(reason="r", allow=True, enforce_would_deny=False),
                                   lookup_ms=0, connect_ms=0)
        records.opened({"id": "x"}, upstream, time.time())
        assert [entry[0] for entry in sink.seen] == ["observe"]
