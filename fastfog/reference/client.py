"""A client connection between requests, in pure Python: the twin of fastfog/hot/client.pxi,
which ``fastfog.hotpaths.ClientConnection`` is in the compiled build.

It reads request heads with loop callbacks (``read_header_timeout`` for the
first, ``idle_timeout`` between kept-alive requests) and hands each to the
proxy: CONNECT, forwarding, or an answer of its own. The read is tried before
anything waits, so most connections never make a watch or a timer.
"""

import ssl

from fastfog import responses, sockio
from fastfog.connection import MAX_HEAD_SIZE, READ_SIZE, guarded, peer_text, x509_fields
from fastfog.reference.deadline import Deadline
from fastfog.errors import HeadError
from fastfog.reference.httphead import parse_request_head
from fastfog.reference.relay import EdgeWatch


class ClientConnection:
    """A client socket between requests: reads heads with loop callbacks and starts each request."""

    __slots__ = ("proxy", "loop", "sock", "fd", "address", "peer", "buffer", "_deadline", "_timing", "_timeout",
                 "_watch", "closed", "tls", "peer_certificate", "x509_fields", "exchange", "mitm")

    def __init__(self, proxy, sock, address, peer_certificate=None, mitm=None):
        """``sock``: a plain socket, or a ClientTLSSocket whose handshake is done (``tls``), with the
        client's certificate as getpeercert() gives it, if it sent one. ``mitm``: the intercepted
        tunnel (a mitm.Interception) whose requests this connection reads, if it is one."""
        self.mitm = mitm
        self.proxy = proxy
        self.loop = proxy.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.peer = peer_text(address)  # as every record of the connection writes it
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.peer_certificate = peer_certificate
        self.x509_fields = x509_fields(peer_certificate)
        self.buffer = bytearray()
        self._deadline = None  # made at the first wait: most CONNECT clients never wait
        self._timing = False  # the wait for this head is timed already
        self._timeout = 0.0
        self._watch = None  # made at the first wait: most CONNECT clients never wait for a head
        self.closed = False
        self.exchange = None  # the forwarded request in flight (hotpaths.Exchange), if any
        proxy.connections.add(self)

    def read_head(self, first=True):
        """Wait for a request head: the first for at most read_header_timeout, a later one on a
        kept-alive connection for at most idle_timeout (when set). The timer starts only when
        the head is not there already."""
        if self.closed:
            return
        if not self.proxy.serving and not self.buffer:
            self.close()
            return
        config = self.proxy.config
        self._timeout = config.read_header_timeout if first or not config.idle_timeout else config.idle_timeout
        self._advance(bool(self.buffer))

    @property
    def deadline(self):
        """The connection's timer (a hotpaths.Deadline): the head's, then the exchange's phases
        (hotpaths.Exchange); made on first use."""
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = Deadline(self.loop)
        return deadline

    def next_request(self):
        """After an answer on a kept-alive connection: read the next head from a fresh stack, so a
        client that pipelines many requests never deepens the recursion."""
        self.loop.call_soon(self.read_head, False)

    def watch(self):
        """The socket's readiness (an EdgeWatch, or a LevelWatch over TLS), shared with the
        exchange in flight; made on first use."""
        watch = self._watch
        if watch is None:
            if self.tls:
                watch = self._watch = sockio.LevelWatch(self.loop, self.fd)
            else:
                watch = self._watch = EdgeWatch(self.proxy.poller, self.fd)
        return watch

    def _on_readable(self):
        self._advance(False)

    def _unexpected(self, err):
        self.proxy.log.error("unexpected error", {"inbound_remote_addr": self.peer,
                                                  "error": f"{type(err).__name__}: {err}"})
        self._stop_waiting()
        self.finish(responses.internal_error("1.1", f"{type(err).__name__}"))

    @guarded
    def _advance(self, parse):
        """Parse the buffer when a line may have ended; read what is waiting; else wait."""
        try:
            while True:
                if parse:
                    head = parse_request_head(self.buffer)
                    if head is not None:
                        self._stop_waiting()
                        del self.buffer[:head.head_end]
                        self.proxy.request(self, head)
                        return
                watch = self._watch
                if watch is not None:
                    data = watch.receive(self.sock, READ_SIZE, self._on_readable)
                else:  # no wait yet: most connections never need one
                    try:
                        data = self.sock.recv(READ_SIZE)
                    except BlockingIOError:
                        data = None
                if data is None:
                    self._wait()
                    return
                if not data:
                    if self.buffer.strip():
                        raise HeadError("connection closed in the middle of a request head")
                    self.close()
                    return
                self.buffer += data
                # Heads are re-parsed only when a line has ended: a client trickling bytes
                # costs one parse per line, never one per byte.
                parse = b"\n" in data or len(self.buffer) >= MAX_HEAD_SIZE
        except HeadError as err:
            self._stop_waiting()
            self.proxy.log.warning("bad request", {"inbound_remote_addr": self.peer,
                                                   "error": str(err)})
            self.finish(responses.bad_request(str(err)))
        except OSError:
            self.close()

    def _wait(self):
        self.watch().wait_read(self._on_readable)
        if not self._timing:  # once per head: a client trickling bytes does not move it
            self._timing = True
            self.deadline.set(self._timeout, self._head_timed_out)

    def _head_timed_out(self):
        self._timing = False
        self.proxy.log.info("client did not finish its request in time",
                            {"inbound_remote_addr": self.peer})
        self.close()

    def _stop_waiting(self):
        if self._timing:
            self._timing = False
            self.deadline.clear()
        if self._watch is not None:
            self._watch.cancel()

    def send(self, data, then):
        """Send ``data``, then call ``then()``: at once when it fits the send buffer (it nearly always does)."""
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
            self.proxy.spawn(self._send_rest(data[sent:], then))

    async def _send_rest(self, data, then):
        try:
            await sockio.sendall(self.loop, self.sock, data)
        except OSError:
            self.close()
            return
        then()

    def finish(self, answer):
        """A last answer, then close without losing it (see Proxy.send_final)."""
        self._drop_watch(False)
        self.proxy.spawn(self._finish(answer))

    async def _finish(self, answer):
        await self.proxy.send_final(self.sock, answer)
        self.close()

    def detach(self):
        """The socket now belongs to a tunnel: stop tracking it as a connection."""
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

    def _cancel_deadline(self):
        if self._deadline is not None:
            self._deadline.cancel()

    def _drop_watch(self, closing):
        """The socket goes to other hands (or is about to close): take it off the poller."""
        watch, self._watch = self._watch, None
        if watch is not None:
            if closing:
                watch.forget()
            else:
                watch.remove()
