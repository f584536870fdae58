"""What a tunnel's two records cost to assemble (fields, clocks, counts), besides formatting them
(benchmarks/test_logging.py): the compiled RecordsCore beside its twin."""

import time
from types import SimpleNamespace

import pytest

from fastfog import hotpaths
from fastfog.conntrack import CLOSE_FIELDS
from fastfog.metrics import Metrics
from fastfog.reference.records import RecordsCore as ReferenceRecordsCore

CORES = {"reference": ReferenceRecordsCore}
if hotpaths.COMPILED:
    CORES["core"] = hotpaths.RecordsCore


class NullLog:
    """Takes records and drops them: their formatting is measured on its own."""

    info_enabled = True

    def info(self, msg, fields):
        pass


def records_for(name):
    return CORES[name](None, NullLog(), Metrics())


@pytest.mark.parametrize("name", sorted(CORES))
def test_a_tunnels_fields_and_decision_record(benchmark, name):
    benchmark.group = "records: a CONNECT's fields, verdict and decision record"
    records = records_for(name)
    client = SimpleNamespace(peer="10.20.30.40:51234", x509_fields={"inbound_remote_x509_cn": "webhooks-prod"})
    head = SimpleNamespace(authority="hooks.partner-payments.example.com:443", header=lambda name: None)
    decision = SimpleNamespace(reason="host matched allowed domain in rule", allow=True, enforce_would_deny=False,
                               project="payments", result="allow", default_rule=False)
    verdict = SimpleNamespace(role="webhooks-prod", error="", decision=decision, role_problem=False)
    upstream = SimpleNamespace(decision=decision, lookup_ms=0, connect_ms=1)

    def one():
        started = time.time()
        fields = records.request_fields(client, "connect", head, started)
        records.decided(fields, verdict)
        records.opened(fields, upstream, started)

    benchmark(one)


@pytest.mark.parametrize("name", sorted(CORES))
def test_a_tunnels_close_record(benchmark, name):
    benchmark.group = "records: a tunnel's close record and metrics"
    records = records_for(name)
    relay = SimpleNamespace(bytes_in=1024, bytes_out=200, last_activity=time.monotonic(), error=None)
    tunnel = SimpleNamespace(values=tuple("x" for _ in CLOSE_FIELDS), relay=relay, started=time.time(), role="r",
                             project="p", tls_sni=None, active_at_termination=False, details=None)
    benchmark(records.tunnel_closed, tunnel)
