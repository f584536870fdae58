"""Token buckets and the counting behind the three limits."""

from types import MappingProxyType, SimpleNamespace

from fastfog import limits


def config(rate=0.0, burst=None, requests=0, tunnels=0, roles=None):
    return SimpleNamespace(max_request_rate=rate, max_request_burst=burst, max_concurrent_requests=requests,
                           max_concurrent_connect_tunnels=tunnels, role_limits=MappingProxyType(roles or {}))


def test_bucket_refills_at_its_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    bucket = limits.TokenBucket(rate=2, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the burst


def test_burst_defaults_to_twice_the_rate():
    assert limits.Scope(5, None, 0, 0).bucket.burst == 10
    assert limits.Scope(0, 7, 0, 0).bucket is None


def test_requests_count_until_released():
    proxy = limits.Limits(config(requests=2))
    assert proxy.admit("r", False) is None and proxy.admit("r", False) is None
    assert proxy.admit("r", False) is limits.OVERLOADED
    proxy.release("r")
    assert proxy.admit("r", True) is None


def test_tunnels_limit_only_connect():
    proxy = limits.Limits(config(tunnels=1))
    proxy.tunnel_opened("r")
    assert proxy.admit("r", True) is limits.TOO_MANY_TUNNELS
    assert proxy.admit("r", False) is None
    proxy.tunnel_closed("r")
    assert proxy.admit("r", True) is None


def test_role_limits_stack_on_the_global_ones():
    roles = {"webhooks": {"max_request_rate": None, "max_request_burst": None, "max_concurrent_requests": 1,
                          "max_concurrent_connect_tunnels": None}}
    proxy = limits.Limits(config(requests=3, roles=roles))
    assert proxy.admit("webhooks", False) is None
    assert proxy.admit("webhooks", False) is limits.OVERLOADED
    assert proxy.admit("other", False) is None and proxy.admit("other", False) is None
    assert proxy.admit("other", False) is limits.OVERLOADED  # the global limit, shared
    proxy.release("webhooks")
    assert proxy.roles["webhooks"].requests == 0 and proxy.proxy.requests == 2


def role_limits(requests=0, tunnels=0):
    return {"max_request_rate": 0.0, "max_request_burst": None, "max_concurrent_requests": requests,
            "max_concurrent_connect_tunnels": tunnels}


def test_a_reload_keeps_what_is_counted():
    proxy = limits.Limits(config(requests=5, tunnels=5, roles={"a": role_limits(tunnels=1)}))
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
