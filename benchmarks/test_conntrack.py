"""A tunnel's accounting in conntrack, opened then closed (its close record's own cost is
benchmarks/test_records.py's): the compiled ConntrackCore beside its twin."""

from types import MappingProxyType, SimpleNamespace

from fastfog.conntrack import CLOSE_FIELDS

FIELDS = {name: f"{name} value" for name in CLOSE_FIELDS} | {"role": "webhooks-prod", "tls_sni": "hooks.example",
                                                            "decision_reason": "host matched allowed domain in rule"}
CONFIG = SimpleNamespace(max_request_rate=0.0, max_request_burst=None, max_concurrent_requests=0,
                         max_concurrent_connect_tunnels=0, role_limits=MappingProxyType({}))


class NullRecords:
    """Takes close records and drops them."""

    webhooks = None

    def tunnel_closed(self, tunnel):
        pass


def test_a_tunnel_opened_and_closed(benchmark, impl):
    benchmark.group = "conntrack: a tunnel opened, then closed by its relay"
    track = impl.ConntrackCore(impl.Limits(CONFIG), NullRecords(), lambda: None)

    def one():
        tunnel = track.opened(FIELDS, 1.0, None)
        tunnel(None)

    benchmark(one)
    assert len(track) == 0
