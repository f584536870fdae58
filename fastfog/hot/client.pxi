# A client connection between requests, compiled. Twin, and the description of
# every step: fastfog/reference/client.py.
#
# The same steps in the same order, with the state in typed fields: a head is
# read, parsed and handed to the proxy without a Python frame of fastfog's own,
# and a plain socket's watch is called at C level.

@cython.final
cdef class ClientConnection:
    """A client socket between requests: reads heads with loop callbacks and starts each request
    (same API as fastfog.reference.client.ClientConnection, which documents it)."""
    cdef public object proxy, loop, sock, address, peer, peer_certificate, x509_fields, exchange, mitm
    cdef public int fd
    cdef public bytearray buffer
    cdef public bint closed, tls
    cdef Deadline _deadline
    cdef object _watch, _timeout
    cdef bint _timing

    def __init__(self, proxy, sock, address, peer_certificate=None, mitm=None):
        if not _imported:
            _import_python()
        self.mitm = mitm
        self.proxy = proxy
        self.loop = proxy.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.peer = _peer_text(address)
        self.tls = isinstance(sock, _SSLSocket)
        self.peer_certificate = peer_certificate
        self.x509_fields = _x509_fields(peer_certificate)
        self.buffer = bytearray()
        self._timeout = 0.0
        proxy.connections.add(self)

    def read_head(self, first=True):
        if self.closed:
            return
        proxy = self.proxy
        if not proxy.serving and not self.buffer:
            self.close()
            return
        config = proxy.config
        self._timeout = config.read_header_timeout if first or not config.idle_timeout else config.idle_timeout
        self._advance(len(self.buffer) > 0)

    @property
    def deadline(self):
        return self._get_deadline()

    cdef Deadline _get_deadline(self):
        if self._deadline is None:
            self._deadline = Deadline(self.loop)
        return self._deadline

    def next_request(self):
        self.loop.call_soon(self.read_head, False)

    def watch(self):
        watch = self._watch
        if watch is None:
            if self.tls:
                watch = self._watch = _LevelWatch(self.loop, self.fd)
            else:
                watch = self._watch = EdgeWatch(self.proxy.poller, self.fd)
        return watch

    def _on_readable(self):
        self._advance(False)

    cdef _unexpected(self, err):
        self.proxy.log.error("unexpected error", {"inbound_remote_addr": self.peer,
                                                  "error": f"{type(err).__name__}: {err}"})
        self._stop_waiting()
        self.finish(_responses.internal_error("1.1", f"{type(err).__name__}"))

    cdef _advance(self, bint parse):
        try:
            self._read(parse)
        except Exception as err:  # a bug: contain it to this one connection (connection.guarded)
            self._unexpected(err)

    cdef _read(self, bint parse):
        cdef bytearray buffer = self.buffer
        try:
            while True:
                if parse:
                    head = parse_request_head(buffer)
                    if head is not None:
                        self._stop_waiting()
                        del buffer[:(<_Head?>head).head_end]
                        self.proxy.request(self, head)
                        return
                watch = self._watch
                if watch is not None:
                    data = _watch_receive(watch, self.sock, _READ_SIZE, self._on_readable)
                else:  # no wait yet: most connections never need one
                    try:
                        data = self.sock.recv(_READ_SIZE)
                    except BlockingIOError:
                        data = None
                if data is None:
                    self._wait()
                    return
                if not data:
                    if buffer.strip():
                        raise HeadError("connection closed in the middle of a request head")
                    self.close()
                    return
                buffer += data
                parse = b"\n" in data or len(buffer) >= _MAX_HEAD_SIZE
        except HeadError as err:
            self._stop_waiting()
            self.proxy.log.warning("bad request", {"inbound_remote_addr": self.peer, "error": str(err)})
            self.finish(_responses.bad_request(str(err)))
        except OSError:
            self.close()

    cdef _wait(self):
        watch = self.watch()
        if type(watch) is EdgeWatch:
            (<EdgeWatch>watch).wait_read(self._on_readable)
        else:
            watch.wait_read(self._on_readable)
        if not self._timing:  # once per head: a client trickling bytes does not move it
            self._timing = True
            self._get_deadline().set(self._timeout, self._head_timed_out)

    def _head_timed_out(self):
        self._timing = False
        self.proxy.log.info("client did not finish its request in time", {"inbound_remote_addr": self.peer})
        self.close()

    cdef _stop_waiting(self):
        if self._timing:
            self._timing = False
            self._get_deadline().clear()
        if self._watch is not None:
            _watch_cancel(self._watch)

    def send(self, data, then):
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent == len(data):
            then()
        else:
            self.proxy.spawn(_send_rest_then(self, data[sent:], then))

    def finish(self, answer):
        self._drop_watch(False)
        self.proxy.spawn(_answer_and_close(self, answer))

    def detach(self):
        self._stop_waiting()
        self._cancel_deadline()
        self._drop_watch(False)
        self.proxy.connections.discard(self)

    def close(self):
        if not self.closed:
            self.closed = True
            self._stop_waiting()
            self._cancel_deadline()
            self._drop_watch(True)
            self.sock.close()
            proxy = self.proxy
            proxy.connections.discard(self)
            if proxy.on_close is not None:
                proxy.on_close()

    cdef _cancel_deadline(self):
        if self._deadline is not None:
            self._deadline.cancel()

    cdef _drop_watch(self, bint closing):
        watch, self._watch = self._watch, None
        if watch is not None:
            if closing:
                watch.forget()
            else:
                watch.remove()


async def _send_rest_then(ClientConnection conn, data, then):
    try:
        await _sockio_sendall(conn.loop, conn.sock, data)
    except OSError:
        conn.close()
        return
    then()


async def _answer_and_close(ClientConnection conn, answer):
    await conn.proxy.send_final(conn.sock, answer)
    conn.close()
