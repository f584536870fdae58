# Rate, concurrency and tunnel limits as C arithmetic. Twin: fastfog/reference/limits.py;
# fastfog/limits.py describes them. Every request is admitted and released here, and every
# tunnel counted open and closed, so each is a few comparisons on typed fields.

from fastfog.reasons import OVERLOADED, RATE_LIMITED, TOO_MANY_TUNNELS

# (_monotonic, the clock time.monotonic() reads, is relay.pxi's.)


@cython.final
cdef class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (same API as the twin's)."""
    cdef public double rate, burst, tokens, updated

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = _monotonic()

    def take(self, now=None):
        return self._take(_monotonic() if now is None else now)

    cdef bint _take(self, double now) noexcept:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@cython.final
cdef class Scope:
    """One set of limits (global, or one role's) and what it counts (same API as the twin's)."""
    cdef public TokenBucket bucket
    cdef public long long max_requests, max_tunnels, requests, tunnels

    def __init__(self, rate, burst, max_requests, max_tunnels):
        self.bucket = TokenBucket(rate, burst if burst is not None else int(rate * 2)) if rate else None
        self.max_requests = max_requests or 0
        self.max_tunnels = max_tunnels or 0


@cython.final
cdef class Limits:
    """The proxy's limits (same API as the twin's, fastfog.reference.limits.Limits)."""
    cdef public Scope proxy
    cdef public dict roles

    def __init__(self, config):
        self.proxy = Scope(config.max_request_rate, config.max_request_burst, config.max_concurrent_requests,
                           config.max_concurrent_connect_tunnels)
        self.roles = {role: Scope(limits["max_request_rate"], limits["max_request_burst"],
                                  limits["max_concurrent_requests"], limits["max_concurrent_connect_tunnels"])
                      for role, limits in config.role_limits.items()}

    def reconfigure(self, config, open_tunnels):
        cdef Limits fresh = Limits(config)
        cdef Scope scope, target
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

    cpdef admit(self, role, bint connect):
        cdef Scope first = self.proxy
        cdef Scope second = <Scope>self.roles.get(role) if self.roles else None
        cdef double now
        if first.bucket is not None or (second is not None and second.bucket is not None):
            now = _monotonic()
            if first.bucket is not None and not first.bucket._take(now):
                return RATE_LIMITED
            if second is not None and second.bucket is not None and not second.bucket._take(now):
                return RATE_LIMITED
        if first.max_requests and first.requests >= first.max_requests:
            return OVERLOADED
        if second is not None and second.max_requests and second.requests >= second.max_requests:
            return OVERLOADED
        if connect:
            if first.max_tunnels and first.tunnels >= first.max_tunnels:
                return TOO_MANY_TUNNELS
            if second is not None and second.max_tunnels and second.tunnels >= second.max_tunnels:
                return TOO_MANY_TUNNELS
        first.requests += 1
        if second is not None:
            second.requests += 1
        return None

    cpdef release(self, role):
        cdef Scope scope = self.proxy
        scope.requests = max(0, scope.requests - 1)
        if self.roles:
            scope = <Scope>self.roles.get(role)
            if scope is not None:
                scope.requests = max(0, scope.requests - 1)

    cpdef tunnel_opened(self, role):
        self.proxy.tunnels += 1
        if self.roles:
            scope = <Scope>self.roles.get(role)
            if scope is not None:
                scope.tunnels += 1

    cpdef tunnel_closed(self, role):
        cdef Scope scope = self.proxy
        scope.tunnels = max(0, scope.tunnels - 1)
        if self.roles:
            scope = <Scope>self.roles.get(role)
            if scope is not None:
                scope.tunnels = max(0, scope.tunnels - 1)
