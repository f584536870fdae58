# Relaying a tunnel between two asyncio transports (a TLS leg on either side).
#
# The same machine as fastfog/reference/buffered.py, whose docstring describes
# it: the protocol callbacks are C methods, so each chunk costs one call into C
# and the transport's own write.

cdef class _BufferedSide:
    """The protocol on one leg of a BufferedRelay."""
    cdef BufferedRelay relay
    cdef readonly str name
    cdef public object transport
    cdef _BufferedSide peer
    cdef list held
    cdef bint eof
    cdef bint wrote_eof
    cdef bint lost
    cdef long long moved
    cdef bint paused_peer

    def __init__(self, BufferedRelay relay, str name):
        self.relay = relay
        self.name = name
        self.held = []

    def connection_made(self, transport):
        self.transport = transport
        for data in self.held:
            self.write(data)
        self.held = []
        if self.peer.eof:
            self.end_from_peer()

    def data_received(self, data):
        self.relay.last_activity = _monotonic()
        self.peer.deliver(data)

    def eof_received(self):
        self.relay.last_activity = _monotonic()
        self.eof = True
        self.peer.end_from_peer()
        return self.relay.half_close_allowed(self) and not self.wrote_eof

    def connection_lost(self, exc):
        self.lost = True
        self.relay.side_lost(self, exc)

    def pause_writing(self):
        if self.peer.transport is not None and not self.peer.lost:
            self.paused_peer = True
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.paused_peer:
            self.paused_peer = False
            if self.peer.transport is not None and not self.peer.lost:
                self.peer.transport.resume_reading()

    cdef void deliver(self, data):
        if self.transport is None:
            self.held.append(bytes(data))
        else:
            self.write(data)

    cdef void write(self, data):
        if not self.lost:
            self.moved += len(data)
            self.transport.write(data)

    cdef void end_from_peer(self):
        if self.transport is None or self.lost:
            return
        if self.transport.can_write_eof() and not self.eof:
            self.wrote_eof = True
            self.transport.write_eof()
        else:
            self.transport.close()


cdef class BufferedRelay:
    """Relays between two transports; give client_protocol and upstream_protocol to them.

    Same API as fastfog.reference.buffered.BufferedRelay.
    """
    cdef object _loop
    cdef object _on_close
    cdef readonly _BufferedSide client_protocol
    cdef readonly _BufferedSide upstream_protocol
    cdef public object error
    cdef readonly bint closed
    cdef public double last_activity

    def __init__(self, loop, on_close, to_upstream=b"", to_client=b""):
        self._loop = loop
        self._on_close = on_close
        self.client_protocol = _BufferedSide(self, "client")
        self.upstream_protocol = _BufferedSide(self, "upstream")
        self.client_protocol.peer = self.upstream_protocol
        self.upstream_protocol.peer = self.client_protocol
        if to_upstream:
            self.upstream_protocol.deliver(to_upstream)
        if to_client:
            self.client_protocol.deliver(to_client)
        self.last_activity = _monotonic()

    @property
    def bytes_out(self):
        return self.upstream_protocol.moved

    @property
    def bytes_in(self):
        return self.client_protocol.moved

    def attach(self, client_transport, upstream_transport):
        """Take over transports that already exist (their protocols are replaced)."""
        cdef _BufferedSide side
        for side, transport in ((self.client_protocol, client_transport),
                                (self.upstream_protocol, upstream_transport)):
            if transport is None:
                continue
            if self.closed:
                transport.abort()
                continue
            transport.set_protocol(side)
            side.connection_made(transport)

    def close(self, reason=None):
        """Abort both legs now (shutdown, idle timeout); ``reason`` becomes ``error``."""
        cdef _BufferedSide side
        if self.closed:
            return
        if reason is not None and self.error is None:
            self.error = reason
        for side in (self.client_protocol, self.upstream_protocol):
            if side.transport is not None and not side.lost:
                side.transport.abort()
        self.finish()

    cpdef bint half_close_allowed(self, _BufferedSide side):
        cdef _BufferedSide peer = side.peer
        return peer.transport is not None and peer.transport.can_write_eof() and not peer.lost

    cdef void side_lost(self, _BufferedSide side, exc):
        cdef _BufferedSide peer = side.peer
        if exc is not None and self.error is None:
            self.error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if peer.transport is not None and not peer.lost:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if side.lost and (peer.lost or peer.transport is None):
            self.finish()

    cdef void finish(self):
        if not self.closed:
            self.closed = True
            self._on_close(self)
