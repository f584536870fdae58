"""Token buckets and the counting behind the three limits, compiled and pure Python; Hypothesis
holds the two to the same answers over generated sequences of requests and tunnels."""

from types import MappingProxyType, SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from support import IMPLEMENTATIONS

from fastfog import limits


def config(rate=0.0, burst=None, requests=0, tunnels=0, roles=None):
    return SimpleNamespace(max_request_rate=rate, max_request_burst=burst, max_concurrent_requests=requests,
                           max_concurrent_connect_tunnels=tunnels, role_limits=MappingProxyType(roles or {}))


def test_bucket_refills_at_its_rate(impl):
    bucket = impl.TokenBucket(rate=2, burst=3)
    now = bucket.updated
    assert [bucket.take(now) for _ in range(4)] == [True, True, True, False]
    now += 0.5
    assert [bucket.take(now), bucket.take(now)] == [True, False]
    now += 60
    assert sum(bucket.take(now) for _ in range(10)) == 3  # never more than the burst
    slow = impl.TokenBucket(rate=0.001, burst=1)
    assert (slow.take(), slow.take()) == (True, False)  # the clock itself, when no time is given


def test_burst_defaults_to_twice_the_rate(impl):
    assert impl.Scope(5, None, 0, 0).bucket.burst == 10
    assert impl.Scope(0, 7, 0, 0).bucket is None


def test_requests_count_until_released(impl):
    proxy = impl.Limits(config(requests=2))
    assert proxy.admit("r", False) is None and proxy.admit("r", False) is None
    assert proxy.admit("r", False) is limits.OVERLOADED
    proxy.release("r")
    assert proxy.admit("r", True) is None


def test_tunnels_limit_only_connect(impl):
    proxy = impl.Limits(config(tunnels=1))
    proxy.tunnel_opened("r")
    assert proxy.admit("r", True) is limits.TOO_MANY_TUNNELS
    assert proxy.admit("r", False) is None
    proxy.tunnel_closed("r")
    assert proxy.admit("r", True) is None


def test_role_limits_stack_on_the_global_ones(impl):
    roles = {"webhooks": {"max_request_rate": None, "max_request_burst": None, "max_concurrent_requests": 1,
                          "max_concurrent_connect_tunnels": None}}
    proxy = impl.Limits(config(requests=3, roles=roles))
    assert proxy.admit("webhooks", False) is None
    assert proxy.admit("webhooks", False) is limits.OVERLOADED
    assert proxy.admit("other", False) is None and proxy.admit("other", False) is None
    assert proxy.admit("other", False) is limits.OVERLOADED  # the global limit, shared
    proxy.release("webhooks")
    assert proxy.roles["webhooks"].requests == 0 and proxy.proxy.requests == 2


def role_limits(requests=0, tunnels=0):
    return {"max_request_rate": 0.0, "max_request_burst": None, "max_concurrent_requests": requests,
            "max_concurrent_connect_tunnels": tunnels}


def test_a_reload_keeps_what_is_counted(impl):
    proxy = impl.Limits(config(requests=5, tunnels=5, roles={"a": role_limits(tunnels=1)}))
    assert proxy.admit("a", True) is None and proxy.admit("b", True) is None
    proxy.tunnel_opened("a")
    proxy.tunnel_opened("b")
    open_tunnels = [SimpleNamespace(role="a"), SimpleNamespace(role="b")]
    proxy.reconfigure(config(requests=2, tunnels=2, roles={"a": role_limits(tunnels=1),
                                                           "b": role_limits(tunnels=1)}), open_tunnels)
    assert (proxy.proxy.requests, proxy.proxy.tunnels, proxy.proxy.max_requests) == (2, 2, 2)
    assert proxy.roles["a"].tunnels == 1 and proxy.roles["b"].tunnels == 1  # b: counted from the open tunnels
    assert proxy.admit("c", False) is limits.OVERLOADED
    proxy.release("a")
    proxy.release("b")
    assert proxy.admit("b", True) is limits.TOO_MANY_TUNNELS
    proxy.reconfigure(config(), [])
    for _ in range(3):  # releases of requests admitted under other limits never go below zero
        proxy.release("b")
        proxy.tunnel_closed("a")
    assert (proxy.proxy.requests, proxy.proxy.tunnels) == (0, 0)


_roles = st.sampled_from(["a", "b", "c", ""])
_steps = st.lists(st.tuples(st.sampled_from(["admit", "admit-connect", "release", "opened", "closed"]), _roles),
                  max_size=40)
_caps = st.integers(0, 3)


def counts(proxy):
    return [(name, scope.requests, scope.tunnels) for name, scope in [("", proxy.proxy), *sorted(proxy.roles.items())]]


@given(steps=_steps, requests=_caps, tunnels=_caps, role_requests=_caps, role_tunnels=_caps)
def test_both_implementations_count_and_refuse_alike(steps, requests, tunnels, role_requests, role_tunnels):
    limited = config(requests=requests, tunnels=tunnels,
                     roles={"a": role_limits(role_requests, role_tunnels), "b": role_limits(tunnels=role_tunnels)})
    twins = [impl.Limits(limited) for impl in IMPLEMENTATIONS.values()]
    for step, role in steps:
        outcomes = []
        for proxy in twins:
            if step.startswith("admit"):
                answer = proxy.admit(role, step == "admit-connect")
            else:
                answer = {"release": proxy.release, "opened": proxy.tunnel_opened,
                          "closed": proxy.tunnel_closed}[step](role)
            outcomes.append((answer, counts(proxy)))
        assert all(outcome == outcomes[0] for outcome in outcomes)
        assert all(count >= 0 for _, *pair in outcomes[0][1] for count in pair)
