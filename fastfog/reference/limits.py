"""Rate, concurrency and tunnel limits, in pure Python: the twin of fastfog/hot/limits.pxi.

fastfog.limits describes them; the refusals they answer with are in fastfog.reasons.
"""

import time

from fastfog.reasons import OVERLOADED, RATE_LIMITED, TOO_MANY_TUNNELS


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a request takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self, now=None):
        """Take a token, if one is saved up by ``now`` (time.monotonic() when None)."""
        if now is None:
            now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Scope:
    """One set of limits (global, or one role's) and what it counts."""

    __slots__ = ("bucket", "max_requests", "max_tunnels", "requests", "tunnels")

    def __init__(self, rate, burst, max_requests, max_tunnels):
        self.bucket = TokenBucket(rate, burst if burst is not None else int(rate * 2)) if rate else None
        self.max_requests = max_requests or 0
        self.max_tunnels = max_tunnels or 0
        self.requests = 0
        self.tunnels = 0


class Limits:
    """The proxy's limits; ``admit`` says whether a request may go on, ``release`` ends it."""

    def __init__(self, config):
        self.proxy = Scope(config.max_request_rate, config.max_request_burst, config.max_concurrent_requests,
                           config.max_concurrent_connect_tunnels)
        self.roles = {role: Scope(limits["max_request_rate"], limits["max_request_burst"],
                                  limits["max_concurrent_requests"], limits["max_concurrent_connect_tunnels"])
                      for role, limits in config.role_limits.items()}

    def reconfigure(self, config, open_tunnels):
        """New limits from a reload. What is being counted goes on being counted: requests and
        tunnels in progress keep their places, and a role newly given limits starts with its open
        tunnels (its requests in progress are not known per role, so they start at 0)."""
        fresh = Limits(config)
        for name, scope in [("", self.proxy)] + list(self.roles.items()):
            target = fresh.proxy if name == "" else fresh.roles.get(name)
            if target is not None:
                target.requests, target.tunnels = scope.requests, scope.tunnels
                if scope.bucket is not None and target.bucket is not None:
                    target.bucket.tokens = min(scope.bucket.tokens, target.bucket.burst)
        for name, scope in fresh.roles.items():
            if name not in self.roles:
                scope.tunnels = sum(1 for tunnel in open_tunnels if tunnel.role == name)
        self.proxy, self.roles = fresh.proxy, fresh.roles

    def admit(self, role, connect):
        """None when the request may go on (it then counts until ``release``), else the Refusal."""
        scopes = (self.proxy,) if role not in self.roles else (self.proxy, self.roles[role])
        for scope in scopes:
            if scope.bucket is not None and not scope.bucket.take():
                return RATE_LIMITED
        for scope in scopes:
            if scope.max_requests and scope.requests >= scope.max_requests:
                return OVERLOADED
        if connect:
            for scope in scopes:
                if scope.max_tunnels and scope.tunnels >= scope.max_tunnels:
                    return TOO_MANY_TUNNELS
        for scope in scopes:
            scope.requests += 1
        return None

    def release(self, role):
        """A request admitted for ``role`` is no longer being processed. (Never below zero: one
        admitted before a reload gave its role limits was not counted there.)"""
        self.proxy.requests = max(0, self.proxy.requests - 1)
        if role in self.roles:
            scope = self.roles[role]
            scope.requests = max(0, scope.requests - 1)

    def tunnel_opened(self, role):
        self.proxy.tunnels += 1
        if role in self.roles:
            self.roles[role].tunnels += 1

    def tunnel_closed(self, role):
        self.proxy.tunnels = max(0, self.proxy.tunnels - 1)
        if role in self.roles:
            scope = self.roles[role]
            scope.tunnels = max(0, scope.tunnels - 1)
