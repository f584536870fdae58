"""One forwarded HTTP request over a dialed upstream, driven by loop callbacks: the twin of
fastfog/hot/exchange.pxi, which ``fastfog.hotpaths.Exchange`` is in the compiled build.

The request head (rewritten by ``forward``) and its body go up, then the
response head and body come down, each body streamed in the pieces it
arrives in and never buffered whole. Both directions are the same small
pump: send what is pending, read more from the source, ask the framing how
much belongs to the message, until the framing says it ended. A send that
would block stops reading the other side until the socket drains, so a slow
receiver never makes the proxy buffer without bound.

Both sockets wait through their watches (``hotpaths.EdgeWatch``: registered
once with the proxy's edge poller, the upstream's for as long as it is
open). A watch remembers whether its socket may have bytes or room, so no
system call is made just to hear EAGAIN: a small response that arrives in one
segment costs one send and one receive on each side, one wait, and no task,
future or loop registration.

``read_timeout`` bounds sending the request (the client's body included),
``write_timeout`` receiving and relaying the response. Then the connection
goes back to reading heads, or closes; a pooled connection that the server
had closed before answering is reported to ``stale`` so that the caller can
send a body-less request again on a new one.
"""


from fastfog import forward, responses
from fastfog.connection import READ_SIZE, guarded
from fastfog.errors import HeadError
from fastfog.reference.forwardhead import client_response, upstream_request
from fastfog.reference.httphead import parse_response_head


def take(body, buffer):
    """The part of ``buffer`` that belongs to ``body`` (removed from the buffer, fed to the body)."""
    if not buffer:
        return b""
    taken = body.feed(buffer)
    data = bytes(buffer[:taken])
    del buffer[:taken]
    return data


class Exchange:
    """A request and its response between a client connection and an upstream socket."""

    __slots__ = ("proxy", "conn", "head", "fields", "upstream", "started", "stale", "_client_watch", "_phase",
                 "_upward", "_source", "_destination", "_source_watch", "_destination_watch", "_buffer", "_body",
                 "_pending", "_then", "_response", "_keep_alive", "_sent_up", "_answered", "_interim", "_ended")

    def __init__(self, proxy, conn, head, fields, upstream, started, stale):
        """``upstream``: a connection.Upstream; ``started``: the request's time.time();
        ``stale()``: the pooled upstream closed before answering a request that can go again."""
        self.proxy, self.conn, self.head, self.fields, self.upstream = proxy, conn, head, fields, upstream
        self.started, self.stale = started, stale
        self._client_watch = conn.watch()
        self._phase = ""
        self._response = None
        self._keep_alive = False
        self._sent_up = self._answered = self._interim = self._ended = False
        self._pending = None

    # --- the request -------------------------------------------------------------------------

    @guarded
    def start(self):
        proxy, conn = self.proxy, self.conn
        proxy.exchanges.add(self)
        conn.exchange = self
        self._arm(proxy.config.read_timeout, "reading the request")
        body = forward.request_body(self.head)
        try:
            first = upstream_request(self.head, self.upstream.add_headers) + take(body, conn.buffer)
        except HeadError as err:
            self._bad_request(err)
            return
        if not body.done and forward.expects_continue(self.head):
            self._send_continue()
        self._move(True, conn.buffer, body, first, self._request_sent)

    def _send_continue(self):
        """The client waits for ``100 Continue`` before its body: the request is allowed, say so.
        25 bytes nearly always fit; if they do not, the client sends its body after its own wait."""
        try:
            self.conn.sock.send(forward.CONTINUE)
        except OSError:  # full (the client will not wait forever) or gone (reading its body says so)
            pass

    def _request_sent(self):
        self._arm(self.proxy.config.write_timeout, "writing the response")
        self._buffer = bytearray()
        self._read_response()

    # --- the response ------------------------------------------------------------------------

    def _read_response(self):
        """Read the next response head; pass interim 1xx heads on; then stream the final response."""
        upstream, watch, buffer = self.upstream.sock, self.upstream.watch, self._buffer
        while True:
            if buffer:
                try:
                    head = parse_response_head(buffer)
                except HeadError as err:
                    self._broken(str(err))
                    return
                if head is not None:
                    break
            try:
                data = watch.receive(upstream, READ_SIZE, self._response_ready)
            except ConnectionResetError:
                data = b""
            except OSError as err:
                self._broken(err.strerror or str(err))
                return
            if data is None:  # the watch calls back when more comes
                return
            if not data:
                if buffer:
                    self._broken("connection closed in the middle of a response head")
                elif self._interim:
                    self._broken("connection closed before a final response")
                else:
                    self._no_response()
                return
            buffer += data
        del buffer[:head.head_end]
        request = self.head
        if head.status < 200 and head.status != 101:
            self._interim = True
            self._move(False, buffer, forward.LengthBody(0), client_response(head, False, request.version),
                       self._read_response)
            return
        if head.status == 101:
            self._broken("protocol upgrades are not forwarded")
            return
        body = forward.response_body(head, request.method)
        # The upstream connection always ends with this response (we asked it to); the client's
        # may go on, unless the body is delimited by that close or the proxy is shutting down.
        self._keep_alive = request.keep_alive and not isinstance(body, forward.UntilClose) and self.proxy.serving
        self._response = head
        try:
            # The head and what of the body already arrived go out in one send (often all of it).
            first = client_response(head, not self._keep_alive, request.version) + take(body, buffer)
        except HeadError as err:
            self._broken(str(err))
            return
        self._move(False, buffer, body, first, self._response_sent)

    # What the loop calls when the upstream has bytes: an unexpected error ends only this exchange
    # (see connection.guarded). Steps already inside such an entry call _read_response itself.
    _response_ready = guarded(_read_response)

    def _response_sent(self):
        proxy, upstream, response, fields = self.proxy, self.upstream, self._response, self.fields
        reusable = (upstream.poolable and self.head.version != "1.0" and response.keep_alive and not self._buffer
                    and not isinstance(self._body, forward.UntilClose))
        self._end()
        if reusable:
            proxy.pool.give(upstream.address, upstream.port, upstream.sock, upstream.watch, upstream.names)
        else:
            upstream.close()
        proxy.records.forwarded(self.head, fields, upstream, self.started, response.status, response.content_length)
        if self._keep_alive and not self.conn.closed:
            self.conn.next_request()
        else:
            self.conn.close()

    # --- moving a message's bytes --------------------------------------------------------------

    def _move(self, upward, buffer, body, first, then):
        """Send ``first``, then the rest of ``body`` (``buffer`` first), then ``then()``: from the
        client to the upstream when ``upward``, else back."""
        client, upstream = (self.conn.sock, self._client_watch), (self.upstream.sock, self.upstream.watch)
        (self._source, self._source_watch), (self._destination, self._destination_watch) = (
            (client, upstream) if upward else (upstream, client))
        self._upward = upward
        self._buffer, self._body, self._pending, self._then = buffer, body, first, then
        self._pump()

    def _pump(self):
        source, destination, buffer, body = self._source, self._destination, self._buffer, self._body
        upward = self._upward
        while True:
            pending = self._pending
            if pending:
                if not self._destination_watch.writable:
                    self._destination_watch.wait_write(self._pump_ready)
                    return
                try:
                    sent = destination.send(pending)
                except BlockingIOError:
                    self._destination_watch.wait_write(self._pump_ready)
                    return
                except OSError as err:
                    self._send_failed(upward, err)
                    return
                if upward:
                    self._sent_up = True
                else:
                    self._answered = True
                if sent < len(pending):  # full, or a TLS socket that took one record: try again
                    self._pending = memoryview(pending)[sent:]
                    continue
                self._pending = None
            if body.done:
                self._then()
                return
            try:
                data = self._source_watch.receive(source, READ_SIZE, self._pump_ready)
            except OSError:
                data = b""
            if data is None:  # the watch calls back when more comes
                return
            if not data:
                if isinstance(body, forward.UntilClose):
                    self._then()
                elif upward:
                    self._client_gone()
                else:
                    self._broken("connection closed in the middle of a body")
                return
            try:
                if buffer:  # bytes past the last message's end: rare; keep them in order
                    buffer += data
                    self._pending = take(body, buffer)
                else:
                    taken = body.feed(data)
                    self._pending = data if taken == len(data) else data[:taken]
                    if taken < len(data):
                        buffer += data[taken:]
            except HeadError as err:  # chunked framing that can never be valid
                if upward:
                    self._bad_request(err)
                else:
                    self._broken(str(err))
                return

    _pump_ready = guarded(_pump)  # the loop's entry, as _response_ready

    # --- endings ---------------------------------------------------------------------------

    def _arm(self, seconds, phase):
        self._phase = phase
        self.conn.deadline.set(seconds, self._timed_out)

    def _end(self, release=True):
        """Stop waiting and timing, stop counting against the limits (unless the request goes on
        over another connection: ``release`` False); the caller says what is next."""
        self._ended = True
        self._client_watch.cancel()
        self.upstream.watch.cancel()
        self.conn.deadline.clear()
        if release:
            self.proxy.limits.release(self.upstream.role)
        self.proxy.exchanges.discard(self)
        self.conn.exchange = None

    def _timed_out(self):
        self.proxy.log.warning("forwarded request timed out", {**self.fields, "error": f"{self._phase} took too long"})
        self.abort()

    def abort(self):
        """Close both sides now (a timeout, or the end of a graceful shutdown)."""
        if not self._ended:
            self._end()
            self.upstream.close()
            self.conn.close()

    def _send_failed(self, upward, err):
        if not upward:
            self._client_gone()
        elif not self._sent_up and isinstance(err, ConnectionError):
            self._no_response()  # a pooled connection the server had closed: safe to send again
        else:
            self._fail(502, f"Failed to send request to remote host: {err.strerror or err}")

    def _client_gone(self):
        """The client closed or reset mid-exchange: nothing to answer, nothing to retry."""
        self.abort()

    def _no_response(self):
        """The upstream closed without a byte of response."""
        head = self.head
        if self.upstream.reused and not head.content_length and not head.chunked:
            self._end(release=False)  # still admitted: the request goes on over a new connection
            self.upstream.close()
            self.stale()
            return
        self._broken("connection closed before a response")

    def _broken(self, reason):
        self._fail(502, f"Failed to read response from remote host: {reason}")

    def _fail(self, status, message):
        """A logged 502 (or 500) when the client has had no byte of the response yet; otherwise
        (a body cut short) the client sees the connection close."""
        upstream = self.upstream
        if not self._ended:
            self._end()
            upstream.close()
        if self._answered or self.conn.closed:
            self.proxy.log.error("forwarded request failed in the middle of its response",
                                 {**self.fields, "error": message})
            self.conn.close()
            return
        self.conn.finish(self.proxy.records.failed(self.head, self.fields, upstream.decision, upstream.lookup_ms,
                                                   status, message, True))

    def _bad_request(self, err):
        """The client's own body framing can never be valid."""
        self._end()
        self.upstream.close()
        self.proxy.log.warning("bad request", {**self.fields, "error": str(err)})
        self.conn.finish(responses.bad_request(str(err)))

    def _unexpected(self, err):
        """A bug (see connection.guarded): contained to this request."""
        if self._ended:  # past the exchange: the client connection's state is unknown
            self.proxy.log.error("unexpected error", {**self.fields, "error": f"{type(err).__name__}: {err}"})
            self.conn.close()
            return
        self._fail(500, f"{type(err).__name__}: {err}")
