# A tunnel's accounting from its relay to its close (same API as fastfog/reference/conntrack.py;
# fastfog/conntrack.py describes both): a tunnel is a small C object holding its close record's
# values, opened and closed without a Python frame of fastfog's own.

from fastfog.reference.conntrack import CLOSE_FIELDS as _close_fields

cdef tuple _TUNNEL_FIELDS = _close_fields  # the close record's fields, in its order
cdef Py_ssize_t _REQUESTED_HOST = _TUNNEL_FIELDS.index("requested_host")
cdef Py_ssize_t _PROJECT = _TUNNEL_FIELDS.index("project")
cdef Py_ssize_t _REMOTE = _TUNNEL_FIELDS.index("outbound_remote_addr")


@cython.final
cdef class Tunnel:
    """An open CONNECT tunnel: its relay and what its close record reports (see the twin)."""
    cdef public object relay
    cdef readonly tuple values
    cdef readonly object tls_sni
    cdef readonly double started
    cdef readonly object role
    cdef public bint active_at_termination
    cdef readonly object details
    cdef ConntrackCore _conntrack

    proxy_type = "connect"

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


cdef class ConntrackCore:
    """The open tunnels (``tunnels``), each opened and closed here (same API as the twin)."""
    cdef public object limits
    cdef public object records
    cdef public object on_close
    cdef readonly set tunnels

    def __init__(self, limits, records, on_close):
        self.limits, self.records, self.on_close = limits, records, on_close
        self.tunnels = set()

    def __len__(self):
        return len(self.tunnels)

    def __iter__(self):
        return iter(list(self.tunnels))

    cpdef Tunnel opened(self, dict fields, double started, object upstream):
        cdef Tunnel tunnel = Tunnel.__new__(Tunnel)
        tunnel.values = tuple([fields.get(name, "") for name in _TUNNEL_FIELDS])
        tunnel.tls_sni = fields.get("tls_sni")
        tunnel.started, tunnel.role = started, fields["role"]
        tunnel.details = (fields, upstream) if self.records.webhooks is not None else None
        tunnel._conntrack = self
        self.tunnels.add(tunnel)
        if type(self.limits) is Limits:
            (<Limits>self.limits).tunnel_opened(tunnel.role)
        else:
            self.limits.tunnel_opened(tunnel.role)
        return tunnel

    cpdef closed(self, Tunnel tunnel):
        self.tunnels.discard(tunnel)
        self.on_close()
        if type(self.limits) is Limits:
            (<Limits>self.limits).tunnel_closed(tunnel.role)
        else:
            self.limits.tunnel_closed(tunnel.role)
        self.records.tunnel_closed(tunnel)
