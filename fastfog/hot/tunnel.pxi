# A CONNECT from its head to its relay, compiled. Twin: open_tunnel in
# fastfog/reference/opening.py, whose whole path is Proxy.tunnel_opened.
#
# The common tunnel (dialed directly, not intercepted, no SNI check, a plain
# client) is answered and relayed here with Proxy.tunnel_opened's and
# Proxy._relay's calls, in their order. Whether a tunnel is common is known
# before anything is done for it; every other one, and every request that got
# no upstream, goes to Proxy.tunnel_opened as it is.

def open_tunnel(proxy, conn, head):
    """Decide, dial and open the tunnel of the CONNECT ``head`` on ``conn``."""
    cdef double started = _now()  # one reading: the record's start_time and the tunnel's duration
    fields = proxy.records.request_fields(conn, "connect", head, started)
    open_upstream(proxy, conn, head, fields, True, False, _TunnelOpened(proxy, conn, head, fields, started))


@cython.final
cdef class _TunnelOpened:
    """The lane's ``done`` for a CONNECT."""
    cdef object proxy, conn, head, fields
    cdef double started

    def __init__(self, proxy, conn, head, fields, double started):
        if _forward is None:
            _import_transport()
        self.proxy, self.conn, self.head, self.fields, self.started = proxy, conn, head, fields, started

    def __call__(self, upstream, answer, close):
        proxy, conn, fields = self.proxy, self.conn, self.fields
        if (upstream is None or upstream.via is not None or upstream.decision.mitm is not None
                or proxy.config.sni_check != "off" or conn.tls):
            proxy.tunnel_opened(conn, self.head, fields, self.started, upstream, answer, close)
            return
        proxy.limits.release(upstream.role)
        try:
            conn.sock.send(_CONNECT_ESTABLISHED)  # 19 bytes: a fresh socket always takes them
        except OSError:
            upstream.close()
            conn.close()
            return
        conn.detach()
        records = proxy.records
        records.opened(fields, upstream, self.started)
        records.started(fields)
        tunnel = proxy.conntrack.opened(fields, self.started, upstream)
        relay = tunnel.relay = SpliceRelay(proxy.loop, conn.sock, upstream.sock, tunnel, bytes(conn.buffer))
        relay.start(upstream.watch)
        upstream.watch = None  # the relay's now
