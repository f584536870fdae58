"""Conntrack: the open tunnels of one worker, from the moment they are relayed to their close.

It keeps the set of open tunnels and, for each, what its close record will
report; it closes a tunnel's accounting once its relay is done (the tunnel
limit's count, the close record and metrics via records.py); it sweeps idle
tunnels (``idle_timeout``), drains them at shutdown (``exit_timeout``) and
lists them for the stats socket (stats.py), as Smokescreen's package of the
same name does.
"""

import asyncio
import operator
import time

from fastfog import logs


# The request fields a tunnel's close record repeats from its decision record, in its order.
CLOSE_FIELDS = ("id", "inbound_remote_addr", "proxy_type", "requested_host", "start_time", "trace_id", "role",
                "project", "outbound_local_addr", "outbound_remote_addr")
_REQUESTED_HOST, _PROJECT, _REMOTE = (CLOSE_FIELDS.index(name) for name in
                                      ("requested_host", "project", "outbound_remote_addr"))
_close_values = operator.itemgetter(*CLOSE_FIELDS)


class Tunnel:
    """An open CONNECT tunnel: its relay and what its close record reports.

    Kept small, since a proxy holds many idle tunnels: of its request's fields only the close
    record's values (a tuple) and the SNI it saw; the whole fields and the Upstream only when
    webhook events will need them (``details``). The relay calls the tunnel when it is done."""

    __slots__ = ("relay", "values", "tls_sni", "started", "role", "active_at_termination", "details", "_conntrack")

    proxy_type = "connect"

    def __init__(self, conntrack, fields, started, upstream, keep_details):
        """``keep_details``: keep ``fields`` and ``upstream`` for the webhook events."""
        try:
            self.values = _close_values(fields)
        except KeyError:  # a field the tunnel's path never set: written as ""
            self.values = tuple([fields.get(name, "") for name in CLOSE_FIELDS])
        self.tls_sni = fields.get("tls_sni")
        self.started, self.role = started, fields["role"]
        self.details = (fields, upstream) if keep_details else None
        self.relay = None
        self.active_at_termination = False
        self._conntrack = conntrack

    def __call__(self, relay):
        self._conntrack.closed(self)

    @property
    def requested_host(self):
        return self.values[_REQUESTED_HOST]

    @property
    def project(self):
        return self.values[_PROJECT]

    @property
    def outbound_remote_addr(self):
        return self.values[_REMOTE]


class Conntrack:
    """The open tunnels; ``on_close()`` is called each time one closes."""

    def __init__(self, limits, records, on_close):
        self.limits, self.records, self.on_close = limits, records, on_close
        self.tunnels = set()

    def __len__(self):
        return len(self.tunnels)

    def __iter__(self):
        return iter(list(self.tunnels))

    def opened(self, fields, started, upstream):
        """A tunnel begins (its relay is the caller's to set, with the tunnel as the relay's
        ``on_close``): counted against the tunnel limit."""
        tunnel = Tunnel(self, fields, started, upstream, self.records.webhooks is not None)
        self.tunnels.add(tunnel)
        self.limits.tunnel_opened(tunnel.role)
        return tunnel

    def closed(self, tunnel):
        """Its relay is done: its count, its close record and metrics."""
        self.tunnels.discard(tunnel)
        self.on_close()
        self.limits.tunnel_closed(tunnel.role)
        self.records.tunnel_closed(tunnel)

    def close_all(self, reason):
        """Force-close every open tunnel (the end of a graceful shutdown); each logs its close record."""
        for tunnel in list(self.tunnels):
            tunnel.active_at_termination = True
            tunnel.relay.close(reason)

    def idle(self, now, seconds):
        """The tunnels that moved no byte either way for ``seconds`` until ``now`` (monotonic)."""
        return [tunnel for tunnel in self.tunnels if now - tunnel.relay.last_activity >= seconds]

    async def sweep(self, idle_timeout):
        """Close tunnels idle for idle_timeout (checked a few times per timeout), until cancelled."""
        period = min(1.0, idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            for tunnel in self.idle(time.monotonic(), idle_timeout):
                tunnel.relay.close("idle timeout")

    async def drain(self, exchanges, config, log):
        """Wait for ``exchanges`` (forwarded requests) to finish and tunnels to close or go idle,
        at most exit_timeout; the caller closes what is left."""
        started = time.monotonic()
        idle_after = config.idle_timeout or config.exit_timeout
        while self.tunnels or exchanges:
            now = time.monotonic()
            if now - started >= config.exit_timeout:
                log.info("Timed out waiting for connections to become idle: closing all remaining connections.")
                return
            if not exchanges and len(self.idle(now, idle_after)) == len(self.tunnels):
                log.info("All connections are idle: closing all remaining connections.")
                return
            await asyncio.sleep(min(0.1, config.exit_timeout - (now - started)))

    def snapshot(self):
        """The open tunnels, as the stats socket reports them (Smokescreen's shape)."""
        now = time.monotonic()
        return [{
            "role": tunnel.role,
            "rhost": tunnel.requested_host,
            "raddr": tunnel.outbound_remote_addr,
            "created": logs.rfc3339(tunnel.started),
            "bytesIn": tunnel.relay.bytes_in,
            "bytesOut": tunnel.relay.bytes_out,
            "secondsSinceLastActivity": round(now - tunnel.relay.last_activity, 3),
            "proxyType": tunnel.proxy_type,
        } for tunnel in list(self.tunnels)]
