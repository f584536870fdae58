"""Relaying a tunnel between two asyncio transports (a TLS leg on either side), in pure Python.

When a leg is TLS, bytes must pass through OpenSSL in user space, so splice(2)
cannot help; this relay joins two transports with a pair of protocols instead:

- data from one side is written to the other as it arrives;
- flow control: when one side's transport asks its protocol to pause writing
  (its buffer passed the high-water mark), the other side stops reading until
  it resumes, so a slow receiver never makes the proxy buffer without bound;
- end of stream from one side is passed on with ``write_eof`` when the other
  transport can half-close (plain TCP) and the other direction keeps flowing;
  a TLS transport cannot, so there it becomes a close after the buffered bytes
  are written;
- a connection lost with an error (a reset) aborts the other side at once.

It has the attributes of the splice relay (bytes each way, last activity,
error, closed) so the proxy treats both alike. A side's protocol can be given
to a transport before the other side exists: what it receives meanwhile is
held and written once both are connected.
"""

import time


class _Side:
    """The protocol on one leg; ``peer`` is the other leg's."""

    __slots__ = ("relay", "name", "transport", "peer", "held", "eof", "wrote_eof", "lost", "moved", "paused_peer")

    def __init__(self, relay, name):
        self.relay = relay
        self.name = name
        self.transport = None
        self.peer = None
        self.held = []  # bytes for this side, waiting for its transport
        self.eof = False  # this side ended its stream
        self.wrote_eof = False  # this side was told the other ended its stream
        self.lost = False
        self.moved = 0  # bytes written to this side
        self.paused_peer = False

    # asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        for data in self.held:
            self._write(data)
        self.held = []
        if self.peer.eof:
            self._end_from_peer()

    def data_received(self, data):
        self.relay.last_activity = time.monotonic()
        self.peer.deliver(data)

    def eof_received(self):
        self.relay.last_activity = time.monotonic()
        self.eof = True
        self.peer._end_from_peer()
        # Keep the transport only while the other direction still flows into it.
        return self.relay.half_close_allowed(self) and not self.wrote_eof

    def connection_lost(self, exc):
        self.lost = True
        self.relay._side_lost(self, exc)

    def pause_writing(self):
        """This side's buffer is full: stop reading what would be written to it."""
        if self.peer.transport is not None and not self.peer.lost:
            self.paused_peer = True
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.paused_peer:
            self.paused_peer = False
            if self.peer.transport is not None and not self.peer.lost:
                self.peer.transport.resume_reading()

    # relay ------------------------------------------------------------------------------------

    def deliver(self, data):
        """Bytes for this side: written now, or held until it is connected."""
        if self.transport is None:
            self.held.append(bytes(data))
        else:
            self._write(data)

    def _write(self, data):
        if not self.lost:
            self.moved += len(data)
            self.transport.write(data)

    def _end_from_peer(self):
        """The peer ended its stream: half-close this side if it can, else close it after flushing."""
        if self.transport is None or self.lost:
            return
        if self.transport.can_write_eof() and not self.eof:
            self.wrote_eof = True
            self.transport.write_eof()
        else:  # TLS cannot half-close; and a side done both ways is done
            self.transport.close()


class BufferedRelay:
    """Relays between two transports; give ``client_protocol`` and ``upstream_protocol`` to them.

    ``on_close(relay)`` is called once, when both transports are gone. ``bytes_out`` counts
    bytes written to the upstream, ``bytes_in`` bytes written to the client.
    """

    def __init__(self, loop, on_close, to_upstream=b"", to_client=b""):
        self._loop = loop
        self._on_close = on_close
        self.client_protocol = _Side(self, "client")
        self.upstream_protocol = _Side(self, "upstream")
        self.client_protocol.peer = self.upstream_protocol
        self.upstream_protocol.peer = self.client_protocol
        if to_upstream:
            self.upstream_protocol.deliver(to_upstream)
        if to_client:
            self.client_protocol.deliver(to_client)
        self.error = None
        self.closed = False
        self.last_activity = time.monotonic()

    @property
    def bytes_out(self):
        return self.upstream_protocol.moved

    @property
    def bytes_in(self):
        return self.client_protocol.moved

    def attach(self, client_transport, upstream_transport):
        """Take over transports that already exist (their protocols are replaced)."""
        for side, transport in ((self.client_protocol, client_transport),
                                (self.upstream_protocol, upstream_transport)):
            if transport is None:
                continue
            if self.closed:  # the other leg is already gone
                transport.abort()
                continue
            transport.set_protocol(side)
            side.connection_made(transport)

    def close(self, reason=None):
        """Abort both legs now (shutdown, idle timeout); ``reason`` becomes ``error``."""
        if self.closed:
            return
        if reason is not None and self.error is None:
            self.error = reason
        for side in (self.client_protocol, self.upstream_protocol):
            if side.transport is not None and not side.lost:
                side.transport.abort()
        self._finish()

    def half_close_allowed(self, side):
        """What eof_received returns: keep the transport open when the peer got a half-close."""
        peer = side.peer
        return peer.transport is not None and peer.transport.can_write_eof() and not peer.lost

    def _side_lost(self, side, exc):
        if exc is not None and self.error is None:
            self.error = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        peer = side.peer
        if peer.transport is not None and not peer.lost:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()  # after what is buffered for it is written
        if side.lost and (peer.lost or peer.transport is None):
            self._finish()

    def _finish(self):
        if not self.closed:
            self.closed = True
            self._on_close(self)
