"""What the proxy does with each request (the path in DESIGN.md).

The proxy owns raw, non-blocking sockets from accept on, so a CONNECT tunnel
between two plaintext sockets can be relayed with splice(2). ``admission``
decides (with ``acl`` and ``classify``); the loop callbacks of ``connection``
read heads and open upstreams; this module dispatches each request, answers,
hands tunnels to their relays (``conntrack`` tracks them) and starts forwarded
exchanges; ``records`` writes what each of them leaves behind.
"""

import asyncio
import base64
import socket
import ssl
import time
from urllib.parse import unquote

from fastfog import responses, sockio
from fastfog.acl import (
    Decision,
)
from fastfog.classify import AddressPolicy
from fastfog.conntrack import Conntrack
from fastfog.connection import (
    READ_SIZE,
    Handshake,
    Opening,
    ProxyHeader,
    peer_text,
)
from fastfog.hotpaths import (
    BufferedRelay,
    ClientConnection,
    Deadline,
    Exchange,
    HeadError,
    SpliceRelay,
    open_upstream,
    parse_response_head,
    poller_for,
)
from fastfog.keepalive import KeepAlive
from fastfog.limits import Limits
from fastfog.admission import Admission
from fastfog.mitm import InterceptedHead, Interception, logged_headers, origin_context
from fastfog.metrics import Metrics
from fastfog.pool import UpstreamPool
from fastfog.records import Records
from fastfog import reasons
from fastfog.reasons import CODE_SNI
from fastfog.snicheck import SniCheck, sni_matches
from fastfog.tls import ClientTLSSocket, OriginHandshake, SocketTransport

LINGER_SECONDS = 1.0  # how long a closing connection discards what its client still sends
LINGER_BYTES = 1 << 20


class UpstreamBroken(Exception):
    """An upstream proxy answered our CONNECT with something that is not HTTP, or went away."""


class _ProxyAnswer:
    """Reads an upstream proxy's answer to our CONNECT over a TLS transport: (head, bytes after it)."""

    def __init__(self, loop):
        self.answer = loop.create_future()
        self.buffer = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        try:
            head = parse_response_head(self.buffer)
        except HeadError as err:
            self._fail(UpstreamBroken(f"not an HTTP answer: {err}"))
            return
        if head is not None and not self.answer.done():
            self.transport.pause_reading()
            self.answer.set_result((head, bytes(self.buffer[head.head_end:])))

    def eof_received(self):
        self._fail(UpstreamBroken("closed before answering"))

    def connection_lost(self, exc):
        self._fail(UpstreamBroken(f"connection lost: {exc}" if exc else "closed before answering"))

    def _fail(self, error):
        if not self.answer.done():
            self.answer.set_exception(error)


class _TaskDeadline:
    """Cancels the current task after ``delay`` seconds (0: never), on the connection deadlines'
    timer structure (hotpaths.Deadline); ``expired`` tells that cancel apart."""

    __slots__ = ("_deadline", "_task", "expired")

    def __init__(self, loop, delay):
        self._task = asyncio.current_task()
        self.expired = False
        self._deadline = Deadline(loop)
        self._deadline.set(delay, self._expire)

    def _expire(self):
        self.expired = True
        self._task.cancel()

    def clear(self, cancelled=False):
        """Stop the timer; after catching our own cancel, un-cancel the task (Python 3.11+)."""
        self._deadline.cancel()
        if cancelled and self.expired and hasattr(self._task, "uncancel"):
            self._task.uncancel()


class Proxy:
    """Serves client connections for one worker: its config, resolver and log."""

    def __init__(self, config, resolver, log, listen_port=None, own_addresses=()):
        self.resolver = resolver
        self.log = log
        self._listen_port, self._own_addresses = listen_port, own_addresses
        self.limits = Limits(config)
        self.metrics = Metrics()
        self.records = Records(config, log, self.metrics)
        self._configure(config)
        self.conntrack = Conntrack(self.limits, self.records, self._connection_closed)
        self.connections = set()  # client connections reading heads or opening an upstream
        self.handlers = set()  # coroutines started for connections (final answers, chaining)
        self.exchanges = set()  # forwarded requests in flight (exchange.Exchange)
        self.serving = True
        self.loop = asyncio.get_running_loop()
        self.poller = poller_for(self.loop)  # edges for dials and splice relays (see hot/relay.pxi)
        self.keepalive = KeepAlive(config.tcp_keepalive)  # for upstream sockets (restart-only)
        self.pool = UpstreamPool(config.transport_max_idle_conns, config.transport_max_idle_conns_per_host,
                                 config.idle_timeout)
        self.metrics.gauge("requests.concurrent", lambda: self.limits.proxy.requests)
        self.metrics.gauge("fastfog.dns.cache.entries", lambda: resolver.cache_entries)
        self.metrics.gauge("fastfog.dns.cache.bytes", lambda: resolver.cache_bytes)
        self._upstream_proxy_tls = None  # made on first use: most deployments never chain
        self._origin_tls = None  # likewise, for intercepted requests (see origin_tls)
        self.on_close = None  # called once a connection closes, when set (see server.Acceptor)

    def _configure(self, config):
        """``tls``: the config's ServerTLS when clients connect over TLS; each new connection
        takes the current one, so a reload never touches an open connection's."""
        self.config = config
        self.tls = config.server_tls
        self.mitm = config.mitm  # fastfog.mitm.MitmAuthority, or None
        self.policy = AddressPolicy(config.allow_ranges, config.deny_ranges, config.allow_addresses,
                                    config.deny_addresses, config.unsafe_allow_private_ranges, self._listen_port,
                                    self._own_addresses)
        self.admission = Admission(config, self.limits, self.log)
        self.records.config = config

    def reconfigure(self, config):
        """A reload: new requests use ``config`` (validated by the caller); what is open goes on."""
        self._configure(config)
        self.limits.reconfigure(config, self.conntrack)

    # --- accepting and dispatching ------------------------------------------------------------

    def accept(self, sock, address):
        """Take a freshly accepted, non-blocking client socket (TCP_NODELAY comes from the listener)."""
        if self.config.support_proxy_protocol:
            ProxyHeader(self, sock, address, self._accepted).start()
        else:
            self._accepted(sock, address)

    def _accepted(self, sock, address):
        """A client socket ready for its TLS handshake (on the TLS listener) or its first request."""
        hooks = self.records.webhooks
        if hooks is not None:
            hooks.neighbor(address)
        if self.tls is not None:
            Handshake(self, sock, address).start()
        else:
            ClientConnection(self, sock, address).read_head()

    def spawn(self, coroutine):
        """Run a coroutine for a connection; shutdown cancels what is still running."""
        task = self.loop.create_task(coroutine)
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)
        return task

    def close_connections(self):
        """Shutdown: close connections that are between requests or still opening; a forwarded
        request in flight finishes (see drain), then its connection closes."""
        for conn in list(self.connections):
            if getattr(conn, "exchange", None) is None:
                conn.close()
        for task in list(self.handlers):
            task.cancel()

    def abort_exchanges(self):
        """The end of a graceful shutdown: close what is still forwarding."""
        for exchange in list(self.exchanges):
            exchange.abort()

    def request(self, conn, head):
        """A complete request head on ``conn``."""
        if conn.mitm is not None:
            self._forward_intercepted(conn, head)
        elif head.form == "authority":
            self._connect(conn, head)
        elif head.form == "absolute":
            self._forward(conn, head)
        else:
            self._answer_locally(conn, head)

    def _answer_locally(self, conn, head):
        """Requests for the proxy itself: the health check, and Smokescreen's 500 for anything else."""
        version = head.version if head.version == "1.0" else "1.1"
        if head.form == "origin" and head.method == "GET" and head.path == "/healthcheck":
            keep_alive = head.keep_alive and self.serving and not head.content_length and not head.chunked
            conn.send(responses.healthcheck(version, self.serving),
                      conn.next_request if keep_alive else conn.close)
            return
        conn.finish(responses.not_a_proxy_request(version))

    async def send_final(self, sock, data):
        """Send a last answer, then let the caller close without losing it.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the answer before the client reads it. So: shut down writing, discard what the client
        still sends for a moment, then close.
        """
        try:
            await sockio.sendall(self.loop, sock, data)
            sock.shutdown(socket.SHUT_WR)
            deadline = _TaskDeadline(self.loop, LINGER_SECONDS)
            try:
                discarded = 0
                while discarded < LINGER_BYTES:
                    chunk = await sockio.recv(self.loop, sock, READ_SIZE)
                    if not chunk:
                        break
                    discarded += len(chunk)
            except asyncio.CancelledError:
                deadline.clear(cancelled=True)
                if not deadline.expired:
                    raise
            finally:
                deadline.clear()
        except OSError:
            pass

    # --- CONNECT -------------------------------------------------------------------------

    def _connect(self, conn, head):
        started = time.time()  # one reading: the record's start_time and the tunnel's duration
        fields = self.records.request_fields(conn, "connect", head, started)
        open_upstream(self, conn, head, fields, True, False,
                      lambda upstream, answer, close: self.tunnel_opened(conn, head, fields, started, upstream, answer,
                                                                         close))

    def tunnel_opened(self, conn, head, fields, started, upstream, answer, close):
        """A CONNECT's Opening is done: its tunnel (relayed, intercepted or chained), or its answer."""
        if upstream is None:
            self._answer_unopened(conn, answer, close)
            return
        if upstream.via is not None:
            upstream.unwatch()
            conn.detach()
            self.spawn(self._chain(conn, head, fields, upstream, started))
            return
        self.limits.release(upstream.role)
        try:
            conn.sock.send(responses.CONNECT_ESTABLISHED)  # 19 bytes: a fresh socket always takes them
        except OSError:
            upstream.close()
            conn.close()
            return
        conn.detach()
        if upstream.decision.mitm is not None:
            self._intercept(conn, head, fields, upstream, started)
            return
        if self.config.sni_check == "off":
            self._relay(conn, head, fields, upstream, started, None, None)
            return
        requested = upstream.requested
        upstream.unwatch()
        SniCheck(self, conn.sock, conn.buffer, requested.name, requested.address is not None, head.port,
                 upstream.sock, lambda check, verdict, data: self._sni_checked(conn, head, fields, upstream,
                                                                               started, check, verdict, data)).start()

    @staticmethod
    def _answer_unopened(conn, answer, close):
        """No upstream for this request: its answer (a deny or a failure, logged), or just the close."""
        if answer is None:
            conn.close()
        elif close:
            conn.finish(answer)
        else:
            conn.send(answer, conn.next_request)

    def _sni_checked(self, conn, head, fields, upstream, started, check, verdict, data):
        """The SNI check is done: relay (with the bytes it read first), or close under enforce."""
        if check.hello:
            fields["tls_sni"] = check.server_name or ""
        conn.buffer = bytearray(data)
        if verdict is not None and self._sni_refused(fields, upstream, verdict, check.enforced(verdict)):
            upstream.sock.close()
            conn.sock.close()
            return
        self._relay(conn, head, fields, upstream, started, None, None)

    def _sni_refused(self, fields, upstream, verdict, enforceable):
        """Fold an SNI check's ``verdict`` into the tunnel's decision: under enforce (when the
        verdict is ``enforceable``) a logged and counted deny, True; else reported, False."""
        allowed = upstream.decision
        enforce = self.config.sni_check == "enforce" and enforceable
        upstream.decision = Decision(not enforce, verdict, "deny" if enforce else "report", allowed.project,
                                     allowed.default_rule, True, allowed.rule, CODE_SNI if enforce else None)
        if enforce:
            self.records.sni_refused(fields, upstream)
            return True
        self.metrics.incr("sni.report")
        return False

    def _relay(self, conn, head, fields, upstream, started, proxy_transport, proxy_leftover):
        self.records.opened(fields, upstream, started)
        self.records.started(fields)
        tunnel = self.conntrack.opened(fields, started, upstream)
        first_bytes = bytes(conn.buffer)
        if proxy_transport is None:  # (a TLS client's too: the relay reads and writes it through OpenSSL)
            tunnel.relay = SpliceRelay(self.loop, conn.sock, upstream.sock, tunnel,
                                       first_bytes)
            tunnel.relay.start(upstream.watch)
            upstream.watch = None  # the relay's now
            return None
        # Chained through an upstream proxy: relay in user space, through its transport.
        tunnel.relay = BufferedRelay(self.loop, tunnel, first_bytes,
                                     proxy_leftover)
        tunnel.relay.attach(None, proxy_transport)
        proxy_transport.resume_reading()
        return tunnel.relay

    # --- interception (mitm_domains; see mitm.py) -----------------------------------------

    def _intercept(self, conn, head, fields, upstream, started):
        """An allowed CONNECT to a mitm domain, answered 200: TLS with the client on a leaf for the
        host, then its requests, each decided and forwarded on its own (_forward_intercepted)."""
        upstream.close()  # each request inside dials its own, over TLS
        host = upstream.requested.name  # canonical: a leaf for an IP literal gets an IP address SAN
        try:
            context = self.mitm.context_for(host)
        except Exception as err:  # a CA the minting refuses: this tunnel only
            self.log.error("cannot mint a certificate for an intercepted host", {**fields, "error": str(err)})
            conn.sock.close()
            return
        interception = Interception(fields["role"], head.host, head.port, head.authority, upstream.decision.mitm,
                                    fields["id"])
        Handshake(self, conn.sock, conn.address, context,
                  lambda sock: self._intercepted(sock, conn.address, fields, upstream, started, interception)).start()

    def _intercepted(self, sock, address, fields, upstream, started, interception):
        """The client's TLS is up: the SNI check, as on a relayed tunnel (its ClientHello named the
        CONNECT host?), the tunnel's decision record, then its requests."""
        if self.config.sni_check != "off":
            named, requested = getattr(sock, "server_name_received", None), upstream.requested
            if not sni_matches(requested.name, named, requested.address is not None):
                fields["tls_sni"] = named or ""
                if self._sni_refused(fields, upstream, reasons.SNI_MISMATCH, True):
                    sock.close()
                    return
        self.records.opened(fields, upstream, started)
        ClientConnection(self, sock, address, None, interception).read_head()

    def _forward_intercepted(self, conn, head):
        """A request inside an intercepted tunnel: decided again with the CONNECT's role, sent to
        the origin over TLS verified against the system's roots, ``add_headers`` set."""
        interception = conn.mitm
        if head.form not in ("origin", "absolute") or (head.form == "absolute" and head.scheme != "https"):
            conn.finish(responses.bad_request("an intercepted tunnel carries https requests only"))
            return
        started = time.time()
        view = InterceptedHead(head, interception)
        fields = self.records.request_fields(conn, "http", view, started)
        fields["mitm_connect_id"] = interception.connect_id

        def opened(upstream, answer, close):
            if upstream is None:
                self._count_intercepted("refused", fields["role"])
                self._answer_unopened(conn, answer, close)
                return
            domain = upstream.decision.mitm or interception.domain
            upstream.add_headers, upstream.poolable = domain.add_headers, False
            if domain.detailed_http_logs:
                fields.update(mitm_req_url=view.url, mitm_req_method=view.method,
                              mitm_req_headers=logged_headers(head.headers, domain.full_headers))
            OriginHandshake(self, upstream, view.host,
                            lambda: self._origin_ready(conn, view, fields, upstream, started),
                            lambda error: self._origin_failed(conn, view, fields, upstream, error)).start()

        Opening(self, conn, view, fields, False, opened).start()

    def _count_intercepted(self, outcome, role):
        """fastfog_mitm_requests{outcome, role}: refused, forwarded, origin_tls_failed."""
        self.metrics.incr("fastfog.mitm.requests", (("outcome", outcome),
                                                    ("role", self.metrics.role("fastfog.mitm.requests", role))))

    def _origin_ready(self, conn, view, fields, upstream, started):
        self._count_intercepted("forwarded", fields["role"])
        self.records.started(fields)
        self._exchange(conn, view, fields, upstream, started)

    def _origin_failed(self, conn, view, fields, upstream, error):
        """The origin's TLS failed (its certificate did not verify, say): a 502 and a deny record."""
        self._count_intercepted("origin_tls_failed", fields["role"])
        self.limits.release(upstream.role)
        upstream.close()
        allowed = upstream.decision
        decision = Decision(False, reasons.ORIGIN_TLS_FAILED + error, "deny", allowed.project,
                            allowed.default_rule, True, allowed.rule, reasons.CODE_ORIGIN_TLS)
        message = f"Failed to connect to remote host: TLS to {view.authority}: {error}"
        conn.finish(self.records.failed(view, fields, decision, upstream.lookup_ms, 502, message, True))

    def origin_tls(self):
        """How intercepted requests reach their origins (mitm.origin_context), made on first use."""
        if self._origin_tls is None:
            self._origin_tls = origin_context()
            self._origin_tls.sslsocket_class = ClientTLSSocket
        return self._origin_tls

    def _upstream_tls(self, via):
        """How to reach an upstream proxy: over TLS for an https:// one, its certificate checked
        against the system's roots (SSL_CERT_FILE); in the clear for an http:// one."""
        if not via.tls:
            return {}
        if self._upstream_proxy_tls is None:
            self._upstream_proxy_tls = ssl.create_default_context()
        return {"ssl": self._upstream_proxy_tls, "server_hostname": via.host,
                "ssl_handshake_timeout": self.config.connect_timeout or None}

    async def _chain(self, conn, head, fields, upstream, started):
        """TLS to the upstream proxy and our own CONNECT through it; then relay (SPEC 3.4)."""
        try:
            await self._chain_through(conn, head, fields, upstream, started)
        finally:
            self.limits.release(upstream.role)

    async def _chain_through(self, conn, head, fields, upstream, started):
        via = upstream.via
        request = f"CONNECT {head.authority} HTTP/1.1\r\nHost: {head.authority}\r\n"
        if via.username is not None:
            credentials = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            request += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        reader = _ProxyAnswer(self.loop)
        deadline = _TaskDeadline(self.loop, self.config.connect_timeout)
        where = f"upstream proxy {peer_text((upstream.address, via.port))}"
        transport = None
        try:
            transport, _ = await self.loop.create_connection(
                lambda: reader, sock=upstream.sock, **self._upstream_tls(via))
            transport.write((request + "\r\n").encode("latin-1"))
            answer, leftover = await reader.answer
        except asyncio.CancelledError:
            deadline.clear(cancelled=True)
            if not deadline.expired:
                raise
            message, status = f"Timed out connecting to remote host: {where}: i/o timeout", 504
        except (OSError, ssl.SSLError, UpstreamBroken, asyncio.TimeoutError) as err:
            message, status = f"Failed to connect to remote host: {where}: {err}", 502
        else:
            if 200 <= answer.status < 300:
                try:
                    await sockio.sendall(self.loop, conn.sock, responses.CONNECT_ESTABLISHED)
                except OSError:
                    transport.abort()
                    conn.sock.close()
                    return
                relay = self._relay(conn, head, fields, upstream, started, transport, leftover)
                if conn.tls:  # already a TLS socket of fastfog's: give it a transport's face
                    SocketTransport(self.loop, conn.sock, relay.client_protocol).start()
                else:
                    await self.loop.connect_accepted_socket(lambda: relay.client_protocol, conn.sock)
                return
            message = f"Failed to connect to remote host: {where} answered {answer.status} {answer.reason}".rstrip()
            status = 502
        finally:
            deadline.clear()
        if transport is not None:
            transport.abort()
        else:
            upstream.sock.close()
        await self.send_final(conn.sock, self.records.failed(head, fields, upstream.decision, upstream.lookup_ms,
                                                              status, message, True))
        conn.sock.close()

    def _connection_closed(self):
        """A tunnel or a client connection closed: a descriptor is free (see server.Acceptor)."""
        if self.on_close is not None:
            self.on_close()

    # --- plain-HTTP forwarding -----------------------------------------------------------

    def _forward(self, conn, head):
        """An absolute-form request: decide and open an upstream, then the exchange (hotpaths.Exchange)."""
        started = time.time()
        fields = self.records.request_fields(conn, "http", head, started)
        if head.scheme != "http":
            conn.finish(responses.rejection(head.version, 501, "Not Implemented",
                                            f"Forwarding {head.scheme} URLs is not supported; use CONNECT",
                                            close=True))
            return
        def opened(upstream, answer, close):
            if upstream is None:
                self._answer_unopened(conn, answer, close)
                return
            self.records.started(fields)
            self._exchange(conn, head, fields, upstream, started)

        open_upstream(self, conn, head, fields, False, head.version != "1.0", opened)

    def _exchange(self, conn, head, fields, upstream, started):
        """Forward the request over ``upstream``. A pooled connection that the server had closed
        before answering is dialed afresh to the address already decided and classified: the
        request is not admitted, counted or announced a second time."""
        def redialed(fresh, answer, close):
            if fresh is None:
                self._answer_unopened(conn, answer, close)
            else:
                self._exchange(conn, head, fields, fresh, started)

        Exchange(self, conn, head, fields, upstream, started,
                 lambda: Opening(self, conn, head, fields, False, redialed).redial(upstream)).start()
