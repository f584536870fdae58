"""Metric names, labels, bounds and the two exporters' formats."""

import asyncio
import socket

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from fastfog import metrics
from fastfog.acl import Decision


def test_sanitising_role_labels():
    assert metrics.sanitise('a|b@c#d:e"f{g}h\\i') == "a_b_c_d_e_f_g_h_i"
    assert metrics.sanitise("tab\tnew\nline\x7f") == "tab_new_line_"
    assert metrics.sanitise("webhooks-prod.eu") == "webhooks-prod.eu"


@given(st.text())
def test_sanitised_values_are_safe_for_both_exporters(value):
    clean = metrics.sanitise(value)
    assert len(clean) == len(value)
    assert not set(clean) & set('|@#:"{}\\') and clean.isprintable()


def test_roles_per_metric_are_capped_with_an_overflow_value():
    counted = metrics.Metrics(max_roles=2)
    allow = Decision(True, "r", "allow", "p", False)
    for role in ("a", "b", "c", "d", "a"):
        counted.acl_decision(allow, role)
    roles = sorted(dict(labels)["role"] for (name, labels) in counted.counters if name == "acl.allow")
    assert roles == ["_overflow_", "a", "b"]
    assert counted.counters[("acl.allow", (("def_rule", "false"), ("project", "p"), ("role", "_overflow_")))].value == 2
    counted.connection_closed("z", "p", 1.0, 1, 1, False)  # another metric family has its own cap
    assert ("cn.close", (("project", "p"), ("role", "z"))) in counted.counters


def test_no_acl_no_acl_metric():
    counted = metrics.Metrics()
    counted.acl_decision(Decision(True, "Egress ACL is not configured"), "")
    assert not [name for name, _ in counted.counters if name.startswith("acl.")]


def test_fastfogs_own_counters_are_visible_from_the_start_and_smokescreens_once_used():
    counted = metrics.Metrics()
    assert {name for name, _ in counted.counters} == set(metrics.VISIBLE_FROM_START)
    assert {count.value for count in counted.counters.values()} == {0}
    assert "fastfog_log_dropped 0" in counted.prometheus_text()
    assert "resolver_attempts_total" not in counted.prometheus_text()


def test_prometheus_text():
    counted = metrics.Metrics()
    counted.incr("acl.allow", (("role", 'r"x'),))
    counted.incr("resolver.attempts_total")
    counted.observe("resolver.lookup_time", 3.5)
    counted.observe("cn.bytes_in", 300, (("role", "r"),))
    counted.gauge("requests.concurrent", lambda: 7)
    text = counted.prometheus_text()
    assert "# TYPE acl_allow counter\nacl_allow{role=\"r\\\"x\"} 1\n" in text
    assert "resolver_attempts_total 1\n" in text  # its own _total, none added
    assert 'resolver_lookup_time_timer_bucket{le="2.0"} 0\n' in text
    assert 'resolver_lookup_time_timer_bucket{le="5.0"} 1\n' in text
    assert 'resolver_lookup_time_timer_bucket{le="+Inf"} 1\nresolver_lookup_time_timer_sum 3.5\n' in text
    assert 'cn_bytes_in_bucket{role="r",le="256.0"} 0\ncn_bytes_in_bucket{role="r",le="1024.0"} 1\n' in text
    assert "# TYPE requests_concurrent gauge\nrequests_concurrent 7\n" in text


def test_snapshots_from_several_processes_merge():
    one, two = metrics.Metrics(), metrics.Metrics()
    for counted, value in ((one, 10), (two, 20000)):
        counted.incr("cn.close")
        counted.observe("proxy_duration_ms", value)
        counted.gauge("requests.concurrent", lambda: 2)
    merged = metrics.merge([one.snapshot(), two.snapshot()])
    assert merged["counters"][("cn.close", ())] == 2
    slots = merged["histograms"][("proxy_duration_ms", ())]
    assert (slots[-1], slots[-2]) == (2, 20010)
    assert merged["gauges"]["requests.concurrent"] == 4
    assert metrics.render_prometheus(merged).count("proxy_duration_ms_timer_count 2") == 1


def test_statsd_lines_are_batched_into_datagrams():
    async def scenario():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.setblocking(False)
            loop = asyncio.get_running_loop()
            sink = metrics.StatsdSink(loop, f"127.0.0.1:{listener.getsockname()[1]}")
            counted = metrics.Metrics(statsd=sink)
            for _ in range(200):
                counted.incr("acl.allow", (("role", "r"),))
            counted.observe("resolver.lookup_time", 2)
            assert sink.sent == 0  # nothing is sent while the callback runs
            await asyncio.sleep(0.05)
            datagrams = []
            while True:
                try:
                    datagrams.append(listener.recv(65536).decode())
                except BlockingIOError:
                    break
            sink.close()
        lines = [line for datagram in datagrams for line in datagram.split("\n")]
        assert lines.count("smokescreen.acl.allow:1|c|#role:r") == 200
        assert lines[-1] == "smokescreen.resolver.lookup_time:2|ms"
        assert 1 < len(datagrams) < 10 and all(len(datagram) <= metrics.DATAGRAM for datagram in datagrams)
    uvloop.run(scenario())


@pytest.mark.parametrize("address", ["127.0.0.1:9", "[::1]:9"])
def test_statsd_sends_never_block_or_raise(address):
    async def scenario():
        dropped = []
        sink = metrics.StatsdSink(asyncio.get_running_loop(), address, lambda: dropped.append(1))
        for _ in range(3):
            sink.add("x", 1, "c", ())
            sink.flush()
        sink.close()
        return sink.sent + sink.dropped
    assert uvloop.run(scenario()) == 3


def test_dns_cache_hits_are_the_attempts_less_the_misses():
    counted = metrics.Metrics()
    assert counted.snapshot()["counters"][("fastfog.dns.cache.hits", ())] == 0
    for _ in range(5):
        counted.incr("resolver.attempts_total")
    counted.incr("fastfog.dns.cache.misses")
    assert counted.snapshot()["counters"][("fastfog.dns.cache.hits", ())] == 4
    assert "fastfog_dns_cache_hits 4" in counted.prometheus_text()
