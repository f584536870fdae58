"""A tunnel's accounting from its relay to its close, in pure Python: the twin of
hot/conntrack.pxi (fastfog/conntrack.py describes both and adds the sweep, the drain and the
stats list).
"""

# The request fields a tunnel's close record repeats from its decision record, in its order.
CLOSE_FIELDS = ("id", "inbound_remote_addr", "proxy_type", "requested_host", "start_time", "trace_id", "role",
                "project", "outbound_local_addr", "outbound_remote_addr")
_REQUESTED_HOST, _PROJECT, _REMOTE = (CLOSE_FIELDS.index(name) for name in
                                      ("requested_host", "project", "outbound_remote_addr"))


class Tunnel:
    """An open CONNECT tunnel: its relay and what its close record reports.

    Kept small, since a proxy holds many idle tunnels: of its request's fields only the close
    record's values (a tuple; a field its path never set is "") and the SNI it saw; the whole
    fields and the Upstream only when webhook events will need them (``details``). The relay
    calls the tunnel when it is done."""

    __slots__ = ("relay", "values", "tls_sni", "started", "role", "active_at_termination", "details", "_conntrack")

    proxy_type = "connect"

    def __init__(self, conntrack, fields, started, upstream, keep_details):
        """``keep_details``: keep ``fields`` and ``upstream`` for the webhook events."""
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


class ConntrackCore:
    """The open tunnels (``tunnels``), each opened and closed here; ``on_close()`` is called
    each time one closes."""

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
