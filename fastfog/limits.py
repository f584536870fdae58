"""Rate, concurrency and tunnel limits, for the whole proxy and per role (SPEC 3.5, 5.6).

Checked as soon as a request's head and role are known, before DNS or any
upstream work, in Smokescreen's order: the request rate (a token bucket,
429), requests being processed (503; a CONNECT counts until its tunnel is
open or refused), then open CONNECT tunnels (429). ``role_limits`` applies
the same three limits to each named role, on top of the global ones.

``Limits(config)``: ``admit(role, connect)`` returns None when the request may
go on (it then counts until ``release(role)``), else its Refusal;
``tunnel_opened(role)`` and ``tunnel_closed(role)`` count open tunnels;
``reconfigure(config, open_tunnels)`` takes a reload's limits and keeps what
is being counted. ``Scope`` is one set of limits (global, or one role's) and
its counts; ``TokenBucket(rate, burst)`` gives ``rate`` tokens a second, at
most ``burst`` saved up. They are C arithmetic in the compiled core
(hot/limits.pxi), with the twin in reference/limits.py.
"""

from fastfog.hotpaths import Limits, Scope, TokenBucket
from fastfog.reasons import OVERLOADED, RATE_LIMITED, TOO_MANY_TUNNELS, Refusal

__all__ = ["OVERLOADED", "RATE_LIMITED", "TOO_MANY_TUNNELS", "Limits", "Refusal", "Scope", "TokenBucket"]
