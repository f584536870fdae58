"""Conntrack: open tunnels, their close records, the idle sweep's choice and the stats list; the
compiled core and its twin held to the same accounting."""

from types import MappingProxyType, SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from support import IMPLEMENTATIONS

from fastfog.conntrack import CLOSE_FIELDS, Conntrack

FIELDS = {"id": "c1", "inbound_remote_addr": "192.0.2.7:5555", "proxy_type": "connect",
          "requested_host": "api.example.com:443", "start_time": "2026-11-29T08:00:00Z", "trace_id": "t",
          "role": "billing", "project": "pay", "error": "", "outbound_local_addr": "198.51.100.1:4000",
          "outbound_remote_addr": "203.0.113.9:443", "decision_reason": "rule has allow and report mode"}


class Relay:
    def __init__(self, last_activity):
        self.bytes_in, self.bytes_out, self.error, self.last_activity = 10, 20, None, last_activity

    def close(self, reason):
        self.error = reason


class Records:
    webhooks = None

    def __init__(self):
        self.closed = []

    def tunnel_closed(self, tunnel):
        self.closed.append(dict(zip(CLOSE_FIELDS, tunnel.values, strict=True)))


def conntrack(core=Conntrack, impl=IMPLEMENTATIONS["reference"]):
    """(``core`` over ``impl``'s limits, the list its ``on_close`` appends to)."""
    config = SimpleNamespace(max_request_rate=0.0, max_request_burst=None, max_concurrent_requests=0,
                             max_concurrent_connect_tunnels=0, role_limits=MappingProxyType({"a": {
                                 "max_request_rate": 0.0, "max_request_burst": None, "max_concurrent_requests": 0,
                                 "max_concurrent_connect_tunnels": 0}}))
    freed = []
    return core(impl.Limits(config), Records(), lambda: freed.append(1)), freed


def test_a_tunnel_keeps_what_its_close_record_needs_and_counts_until_closed(impl):
    track, freed = conntrack(impl.ConntrackCore, impl)
    tunnel = track.opened({**FIELDS, "tls_sni": "api.example.com"}, 100.0, object())
    tunnel.relay = Relay(5.0)
    assert (len(track), track.limits.proxy.tunnels) == (1, 1)
    assert tunnel.details is None  # no webhooks: neither the fields nor the upstream are held
    assert (tunnel.requested_host, tunnel.project, tunnel.tls_sni) == ("api.example.com:443", "pay",
                                                                         "api.example.com")
    tunnel(tunnel.relay)  # the relay is done
    assert (len(track), track.limits.proxy.tunnels, freed) == (0, 0, [1])
    assert track.records.closed == [{name: FIELDS[name] for name in CLOSE_FIELDS}]


def test_with_webhooks_the_fields_and_upstream_stay_for_the_events(impl):
    track, _ = conntrack(impl.ConntrackCore, impl)
    track.records.webhooks = object()
    upstream = object()
    tunnel = track.opened(dict(FIELDS), 100.0, upstream)
    assert tunnel.details[1] is upstream and tunnel.details[0]["decision_reason"]


def test_idle_tunnels_are_chosen_and_shutdown_closes_all():
    track, _ = conntrack()
    busy, idle = track.opened(dict(FIELDS), 1.0, None), track.opened(dict(FIELDS), 1.0, None)
    busy.relay, idle.relay = Relay(95.0), Relay(80.0)
    assert track.idle(100.0, 10.0) == [idle]
    listed = track.snapshot()
    assert len(listed) == 2 and {(row["rhost"], row["raddr"], row["proxyType"]) for row in listed} == {
        ("api.example.com:443", "203.0.113.9:443", "connect")}
    track.close_all("shutting down")
    assert busy.active_at_termination and idle.relay.error == "shutting down"


def test_a_close_field_the_path_never_set_is_written_empty(impl):
    track, _ = conntrack(impl.ConntrackCore, impl)
    fields = {name: value for name, value in FIELDS.items() if name != "outbound_local_addr"}
    tunnel = track.opened(fields, 100.0, object())
    tunnel.relay = Relay(5.0)
    tunnel(tunnel.relay)
    assert track.records.closed[0]["outbound_local_addr"] == "" and track.records.closed[0]["role"] == "billing"


field_values = st.text(alphabet="abc.:1", max_size=6)
requests = st.fixed_dictionaries({"role": field_values}, optional={
    **{name: field_values for name in CLOSE_FIELDS if name != "role"}, "tls_sni": field_values,
    "decision_reason": field_values})
steps = st.lists(st.tuples(st.sampled_from(["open", "close"]), requests, st.integers(0, 7)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(steps=steps, webhooks=st.booleans())
def test_both_implementations_keep_the_same_accounts(steps, webhooks):
    def play(impl):
        track, freed = conntrack(impl.ConntrackCore, impl)
        if webhooks:
            track.records.webhooks = object()
        seen, opened = [], []
        for started, (step, fields, pick) in enumerate(steps):
            if step == "open":
                tunnel = track.opened(fields, float(started), "upstream")
                tunnel.relay = Relay(0.0)
                opened.append(tunnel)
                seen.append((tunnel.values, tunnel.tls_sni, tunnel.role, tunnel.started, tunnel.details,
                             tunnel.requested_host, tunnel.project, tunnel.outbound_remote_addr, tunnel.proxy_type))
            elif opened:
                tunnel = opened.pop(pick % len(opened))
                tunnel(tunnel.relay)
            roles = {role: (scope.tunnels, scope.requests) for role, scope in track.limits.roles.items()}
            seen.append((len(track), track.limits.proxy.tunnels, roles, len(freed)))
        return seen, track.records.closed

    [expected, *others] = [play(impl) for impl in IMPLEMENTATIONS.values()]
    assert all(other == expected for other in others)
