# One forwarded request's exchange with its upstream, compiled. Twin, and the
# description of every step: fastfog/reference/exchange.py.
#
# The same steps in the same order, with the state in typed fields: a body
# delimited by a length is counted here in C (the framing's other kinds,
# chunked and until-close, are forward.py's objects), the watches of plain
# sockets are called at C level, and the step that follows a message's bytes
# is a number rather than a bound method. Calls into Python remain for what is
# the rest of the proxy's: the records, the pool, the limits, the deadline.

cdef enum:  # a body's framing
    _BY_LENGTH  # Content-Length, or none: counted in _remaining
    _BY_CHUNKS  # forward's ChunkedBody, in _chunks
    _UNTIL_CLOSE

cdef enum:  # what follows the bytes of a message
    _THEN_REQUEST_SENT
    _THEN_READ_RESPONSE
    _THEN_RESPONSE_SENT


@cython.final
cdef class Exchange:
    """A request and its response between a client connection and an upstream socket (same API
    as fastfog.reference.exchange.Exchange, which documents it)."""
    cdef object proxy, conn, head, fields, upstream, started, stale
    cdef object _client_watch, _source, _destination, _source_watch, _destination_watch
    cdef str _phase
    cdef bytearray _buffer
    cdef int _framing
    cdef long long _remaining
    cdef object _chunks
    cdef object _pending  # bytes or a memoryview of them, or None
    cdef int _then
    cdef object _response
    cdef bint _upward, _keep_alive, _sent_up, _answered, _interim, _ended

    def __init__(self, proxy, conn, head, fields, upstream, started, stale):
        if not _imported:
            _import_python()
        self.proxy, self.conn, self.head, self.fields, self.upstream = proxy, conn, head, fields, upstream
        self.started, self.stale = started, stale
        self._client_watch = conn.watch()
        self._phase = ""

    # --- the request -------------------------------------------------------------------------

    def start(self):
        try:
            self._start()
        except Exception as err:  # a bug: contain it to this one request (connection.guarded)
            self._unexpected(err)

    cdef _start(self):
        proxy, conn, head = self.proxy, self.conn, self.head
        proxy.exchanges.add(self)
        conn.exchange = self
        self._arm(proxy.config.read_timeout, "reading the request")
        self._frame(_forward.request_body(head))
        cdef bytearray buffer = conn.buffer
        try:
            first = upstream_request(head, self.upstream.add_headers) + self._take(buffer)
        except HeadError as err:
            self._bad_request(err)
            return
        if not self._body_done() and _forward.expects_continue(head):
            try:  # see the twin's _send_continue
                conn.sock.send(_forward.CONTINUE)
            except OSError:
                pass
        self._move(True, buffer, first, _THEN_REQUEST_SENT)

    cdef _request_sent(self):
        self._arm(self.proxy.config.write_timeout, "writing the response")
        self._buffer = bytearray()
        self._read_response()

    # --- the response ------------------------------------------------------------------------

    def _response_ready(self):
        try:
            self._read_response()
        except Exception as err:
            self._unexpected(err)

    cdef _read_response(self):
        upstream = self.upstream
        sock, watch = upstream.sock, upstream.watch
        cdef bytearray buffer = self._buffer
        while True:
            if buffer:
                try:
                    response = parse_response_head(buffer)
                except HeadError as err:
                    self._broken(str(err))
                    return
                if response is not None:
                    break
            try:
                data = _watch_receive(watch, sock, _READ_SIZE, self._response_ready)
            except ConnectionResetError:
                data = b""
            except OSError as err:
                self._broken(err.strerror or str(err))
                return
            if data is None:
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
        cdef ResponseHead head = <ResponseHead?>response
        del buffer[:head.head_end]
        request = self.head
        if head.status < 200 and head.status != 101:
            self._interim = True
            self._framing, self._remaining = _BY_LENGTH, 0
            self._move(False, buffer, client_response(head, False, request.version), _THEN_READ_RESPONSE)
            return
        if head.status == 101:
            self._broken("protocol upgrades are not forwarded")
            return
        self._frame(_forward.response_body(head, request.method))
        self._keep_alive = request.keep_alive and self._framing != _UNTIL_CLOSE and self.proxy.serving
        self._response = head
        try:
            first = client_response(head, not self._keep_alive, request.version) + self._take(buffer)
        except HeadError as err:
            self._broken(str(err))
            return
        self._move(False, buffer, first, _THEN_RESPONSE_SENT)

    cdef _response_sent(self):
        proxy, upstream, conn = self.proxy, self.upstream, self.conn
        cdef ResponseHead response = <ResponseHead>self._response
        reusable = (upstream.poolable and self.head.version != "1.0" and response.keep_alive and not self._buffer
                    and self._framing != _UNTIL_CLOSE)
        self._end(True)
        if reusable:
            proxy.pool.give(upstream.address, upstream.port, upstream.sock, upstream.watch, upstream.names)
        else:
            upstream.close()
        proxy.records.forwarded(self.head, self.fields, upstream, self.started, response.status,
                                response.content_length)
        if self._keep_alive and not conn.closed:
            conn.next_request()
        else:
            conn.close()

    # --- a body's framing ----------------------------------------------------------------------

    cdef _frame(self, body):
        """Take the framing forward.py chose: a length is counted here, the others are its objects."""
        if type(body) is _LengthBody:
            self._framing, self._remaining, self._chunks = _BY_LENGTH, body.remaining, None
        elif type(body) is _UntilClose:
            self._framing, self._chunks = _UNTIL_CLOSE, None
        else:
            self._framing, self._chunks = _BY_CHUNKS, body

    cdef inline bint _body_done(self) except -1:
        if self._framing == _BY_LENGTH:
            return self._remaining == 0
        if self._framing == _UNTIL_CLOSE:
            return False
        return bool(self._chunks.done)

    cdef Py_ssize_t _feed(self, data) except -1:
        """How many of ``data``'s bytes belong to the body (all, unless it ends among them)."""
        cdef Py_ssize_t size = len(data)
        if self._framing == _BY_LENGTH:
            if size > self._remaining:
                size = <Py_ssize_t>self._remaining
            self._remaining -= size
            return size
        if self._framing == _UNTIL_CLOSE:
            return size
        return self._chunks.feed(data)

    cdef bytes _take(self, bytearray buffer):
        """The part of ``buffer`` that belongs to the body (removed from the buffer)."""
        if not buffer:
            return b""
        cdef Py_ssize_t taken = self._feed(buffer)
        data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buffer), taken)
        del buffer[:taken]
        return data

    # --- moving a message's bytes --------------------------------------------------------------

    cdef _move(self, bint upward, bytearray buffer, first, int then):
        client_sock, client_watch = self.conn.sock, self._client_watch
        upstream = self.upstream
        if upward:
            self._source, self._source_watch = client_sock, client_watch
            self._destination, self._destination_watch = upstream.sock, upstream.watch
        else:
            self._source, self._source_watch = upstream.sock, upstream.watch
            self._destination, self._destination_watch = client_sock, client_watch
        self._upward = upward
        self._buffer, self._pending, self._then = buffer, first, then
        self._pump()

    def _pump_ready(self):
        try:
            self._pump()
        except Exception as err:
            self._unexpected(err)

    cdef _pump(self):
        source, destination = self._source, self._destination
        cdef bytearray buffer = self._buffer
        cdef bint upward = self._upward
        cdef Py_ssize_t sent, taken, size
        while True:
            pending = self._pending
            if pending is not None and len(pending):
                if not _watch_writable(self._destination_watch):
                    _watch_wait_write(self._destination_watch, self._pump_ready)
                    return
                try:
                    sent = destination.send(pending)
                except BlockingIOError:
                    _watch_wait_write(self._destination_watch, self._pump_ready)
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
            if self._body_done():
                self._next()
                return
            try:
                data = _watch_receive(self._source_watch, source, _READ_SIZE, self._pump_ready)
            except OSError:
                data = b""
            if data is None:
                return
            if not data:
                if self._framing == _UNTIL_CLOSE:
                    self._next()
                elif upward:
                    self.abort()  # the client closed or reset mid-exchange
                else:
                    self._broken("connection closed in the middle of a body")
                return
            try:
                if buffer:  # bytes past the last message's end: rare; keep them in order
                    buffer += data
                    self._pending = self._take(buffer)
                else:
                    size = len(data)
                    taken = self._feed(data)
                    self._pending = data if taken == size else data[:taken]
                    if taken < size:
                        buffer += data[taken:]
            except HeadError as err:  # chunked framing that can never be valid
                if upward:
                    self._bad_request(err)
                else:
                    self._broken(str(err))
                return

    cdef _next(self):
        cdef int then = self._then
        if then == _THEN_REQUEST_SENT:
            self._request_sent()
        elif then == _THEN_READ_RESPONSE:
            self._read_response()
        else:
            self._response_sent()

    # --- endings ---------------------------------------------------------------------------

    cdef _arm(self, seconds, str phase):
        self._phase = phase
        self.conn.deadline.set(seconds, self._timed_out)

    cdef _end(self, bint release):
        self._ended = True
        _watch_cancel(self._client_watch)
        _watch_cancel(self.upstream.watch)
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
            self._end(True)
            self.upstream.close()
            self.conn.close()

    cdef _send_failed(self, bint upward, err):
        if not upward:
            self.abort()  # the client is gone
        elif not self._sent_up and isinstance(err, ConnectionError):
            self._no_response()
        else:
            self._fail(502, f"Failed to send request to remote host: {err.strerror or err}")

    cdef _no_response(self):
        head = self.head
        if self.upstream.reused and not head.content_length and not head.chunked:
            self._end(False)  # still admitted: the request goes on over a new connection
            self.upstream.close()
            self.stale()
            return
        self._broken("connection closed before a response")

    cdef _broken(self, str reason):
        self._fail(502, f"Failed to read response from remote host: {reason}")

    cdef _fail(self, int status, str message):
        upstream, conn = self.upstream, self.conn
        if not self._ended:
            self._end(True)
            upstream.close()
        if self._answered or conn.closed:
            self.proxy.log.error("forwarded request failed in the middle of its response",
                                 {**self.fields, "error": message})
            conn.close()
            return
        conn.finish(self.proxy.records.failed(self.head, self.fields, upstream.decision, upstream.lookup_ms,
                                              status, message, True))

    cdef _bad_request(self, err):
        self._end(True)
        self.upstream.close()
        self.proxy.log.warning("bad request", {**self.fields, "error": str(err)})
        self.conn.finish(_responses.bad_request(str(err)))

    cdef _unexpected(self, err):
        if self._ended:  # past the exchange: the client connection's state is unknown
            self.proxy.log.error("unexpected error", {**self.fields, "error": f"{type(err).__name__}: {err}"})
            self.conn.close()
            return
        self._fail(500, f"{type(err).__name__}: {err}")
