"""What the proxy does with each request (the path in DESIGN.md).

The proxy owns raw, non-blocking sockets from accept on, so a CONNECT tunnel
between two plaintext sockets can be relayed with splice(2). The decision
steps are the pure functions of ``hotpaths``, ``acl`` and ``classify``; the
loop callbacks of ``connection`` read heads and open upstreams; this module
answers, relays tunnels, forwards requests and writes the records.
"""

import asyncio
import base64
import socket
import ssl
import time
from urllib.parse import unquote

from fastfog import forward, logs, responses, sockio
from fastfog.acl import (
    AUTH_REQUIRED,
    NOT_CONFIGURED,
    ROLE_NOT_DETERMINED,
    Decision,
)
from fastfog.classify import AddressPolicy
from fastfog.connection import (
    READ_SIZE,
    ClientConnection,
    Handshake,
    Opening,
    ProxyHeader,
    header_value,
    peer_text,
)
from fastfog.hotpaths import BufferedRelay, HeadError, SpliceRelay, parse_response_head
from fastfog.limits import Limits
from fastfog.metrics import Metrics
from fastfog.pool import UpstreamPool
from fastfog.reasons import CODE_SNI
from fastfog.roles import RequestView
from fastfog.snicheck import SniCheck
from fastfog.tls import SocketTransport, TLSRelay

LINGER_SECONDS = 1.0  # how long a closing connection discards what its client still sends
LINGER_BYTES = 1 << 20
TRACE_HEADER = b"x-smokescreen-trace-id"


class UpstreamBroken(Exception):
    """The upstream sent something that is not HTTP, or went away mid-response."""


class ForwardTimeout(Exception):
    """read_timeout or write_timeout passed while forwarding a request."""


class NoResponse(UpstreamBroken):
    """The upstream closed without a byte of response: on a reused connection, safe to retry."""


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


class _Deadline:
    """Cancels the current task after ``delay`` seconds; ``expired`` tells that cancel apart."""

    __slots__ = ("_handle", "_task", "expired")

    def __init__(self, loop, delay):
        self._task = asyncio.current_task()
        self.expired = False
        self._handle = loop.call_later(delay, self._expire) if delay else None

    def _expire(self):
        self.expired = True
        self._task.cancel()

    def clear(self, cancelled=False):
        """Stop the timer; after catching our own cancel, un-cancel the task (Python 3.11+)."""
        if self._handle is not None:
            self._handle.cancel()
        if cancelled and self.expired and hasattr(self._task, "uncancel"):
            self._task.uncancel()


def body_length(answer):
    return len(answer) - answer.index(b"\r\n\r\n") - 4


class Tunnel:
    """An open CONNECT tunnel: its relay and what its close record reports."""

    __slots__ = ("relay", "fields", "started", "proxy_type", "role", "active_at_termination", "upstream")

    def __init__(self, fields, started, role, upstream=None):
        self.upstream = upstream  # the Upstream it was opened with (its decision, timings)
        self.relay = None
        self.active_at_termination = False
        self.fields = fields
        self.started = started
        self.proxy_type = "connect"
        self.role = role


def _take(body, buffer):
    """The part of ``buffer`` that belongs to ``body`` (removed from the buffer, fed to the body)."""
    if not buffer:
        return b""
    taken = body.feed(buffer)
    data = bytes(buffer[:taken])
    del buffer[:taken]
    return data


def _start_details(fields):
    return {"role": fields["role"], "client": fields["inbound_remote_addr"], "host": fields["requested_host"],
            "proxy_type": fields["proxy_type"]}


def _info_details(fields, upstream, record):
    """fastfog's own figures for a connection (webhook connection-info)."""
    details = {"lookup_ms": upstream.lookup_ms if upstream is not None else None,
               "connect_ms": upstream.connect_ms if upstream is not None else None,
               "reused_upstream": upstream.reused if upstream is not None else False,
               "access_response": fields.get("access_response")}
    if record is not None:
        details["last_activity"] = record["last_activity"]
        details["active_at_termination"] = record.get("active_at_termination", False)
    return details


class Proxy:
    """Serves client connections for one worker: its config, resolver and log."""

    def __init__(self, config, resolver, log, listen_port=None, own_addresses=()):
        self.resolver = resolver
        self.log = log
        self._listen_port, self._own_addresses = listen_port, own_addresses
        self._configure(config)
        self.ids = logs.IdSource()
        self.tunnels = set()
        self.connections = set()  # client connections reading heads or opening an upstream
        self.handlers = set()  # coroutines started for connections (forwarding, final answers)
        self.serving = True
        self.loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(config.transport_max_idle_conns, config.transport_max_idle_conns_per_host,
                                 config.idle_timeout)
        self.limits = Limits(config)
        self.metrics = Metrics()
        self.metrics.gauge("requests.concurrent", lambda: self.limits.proxy.requests)
        self._upstream_proxy_tls = None  # made on first use: most deployments never chain
        self.webhooks = None  # fastfog.webhooks.Webhooks when configured (set by the server)

    def _configure(self, config):
        """``tls``: the config's ServerTLS when clients connect over TLS; each new connection
        takes the current one, so a reload never touches an open connection's."""
        self.config = config
        self.tls = config.server_tls
        self.policy = AddressPolicy(config.allow_ranges, config.deny_ranges, config.allow_addresses,
                                    config.deny_addresses, config.unsafe_allow_private_ranges, self._listen_port,
                                    self._own_addresses)

    def reconfigure(self, config):
        """A reload: new requests use ``config`` (validated by the caller); what is open goes on."""
        self._configure(config)
        self.limits.reconfigure(config, self.tunnels)

    # --- accepting and dispatching ------------------------------------------------------------

    def accept(self, sock, address):
        """Take a freshly accepted client socket."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.support_proxy_protocol:
            ProxyHeader(self, sock, address, self._accepted).start()
        else:
            self._accepted(sock, address)

    def _accepted(self, sock, address):
        """A client socket ready for its TLS handshake (on the TLS listener) or its first request."""
        if self.webhooks is not None:
            self.webhooks.neighbor(address)
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
        """Shutdown: close connections that are between requests or still opening."""
        for conn in list(self.connections):
            conn.close()
        for task in list(self.handlers):
            task.cancel()

    def request(self, conn, head):
        """A complete request head on ``conn``."""
        if head.form == "authority":
            self._connect(conn, head)
        elif head.form == "absolute":
            self.spawn(self._forward(conn, head))
        else:
            self._answer_locally(conn, head)

    def _answer_locally(self, conn, head):
        """Requests for the proxy itself: the health check, and Smokescreen's 500 for anything else."""
        version = head.version if head.version == "1.0" else "1.1"
        if head.form == "origin" and head.method == "GET" and head.path == "/healthcheck":
            keep_alive = head.keep_alive and self.serving and not head.content_length and not head.chunked
            conn.send(responses.healthcheck(version, self.serving),
                      (lambda: conn.read_head(first=False)) if keep_alive else conn.close)
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
            deadline = _Deadline(self.loop, LINGER_SECONDS)
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

    # --- decisions and their answers ----------------------------------------------------------

    def request_fields(self, conn, proxy_type, head, started=None):
        fields = {
            "id": self.ids.next(),
            "inbound_remote_addr": peer_text(conn.address),
            "proxy_type": proxy_type,
            "requested_host": head.authority,
            "start_time": logs.rfc3339(started or time.time()),
            "trace_id": header_value(head.headers, TRACE_HEADER) or "",
        }
        if conn.x509_fields is not None:
            fields.update(conn.x509_fields)
        return fields

    def role(self, conn, head, fields):
        """(role, problem): the client's role, or the Decision that explains why it has none.

        A role plugin decides alone when configured. With proxy_auth, the role comes from the
        Proxy-Authorization credentials (AUTH_REQUIRED when they are wrong, or missing without
        allow_missing_role). Otherwise, on the TLS listener, it is the client certificate's
        Subject CN; without TLS there is none.
        """
        config = self.config
        if config.role_plugin is not None:
            return self._plugin_role(conn, head)
        if config.auth is not None:
            header = header_value(head.headers, b"proxy-authorization")
            if header is None:
                return ("", None) if config.allow_missing_role else ("", AUTH_REQUIRED)
            role = config.auth.role_of(header)
            return (role, None) if role is not None else ("", AUTH_REQUIRED)
        if conn.tls:
            if conn.peer_certificate is not None:
                return fields["inbound_remote_x509_cn"], None
            problem = "client did not provide certificate"
        else:
            problem = "defaultRoleFromRequest requires TLS"
        if config.allow_missing_role:
            return "", None
        fields["error"] = problem
        return "", ROLE_NOT_DETERMINED

    def _plugin_role(self, conn, head):
        """role_from_request: a str is the role; None is a missing role; raising denies."""
        view = RequestView(conn.address, head.method, head.target,
                           [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers],
                           conn.peer_certificate)
        try:
            role = self.config.role_plugin(view)
        except Exception as err:  # the plugin's own way of saying no
            self.log.warning("role_from_request refused the request", {"error": f"{type(err).__name__}: {err}"})
            return "", ROLE_NOT_DETERMINED
        if role is None:
            return ("", None) if self.config.allow_missing_role else ("", ROLE_NOT_DETERMINED)
        if not isinstance(role, str):
            self.log.error("role_from_request returned something other than a str or None",
                           {"error": repr(role)[:200]})
            return "", ROLE_NOT_DETERMINED
        return role, None

    def auth_required(self, head, fields):
        """Log and answer missing or wrong credentials: 407 with Proxy-Authenticate. The connection
        stays open (unless a body is unread) so the client can retry on it with credentials."""
        version = head.version if head.version == "1.0" else "1.1"
        close = bool(head.content_length) or head.chunked or not head.keep_alive
        answer = responses.auth_required(version, self.config.auth.realm, close)
        self.log.warning(logs.DECISION, {**fields, **self.decision_fields(AUTH_REQUIRED, 0), "status_code": 407,
                                         "content_length": body_length(answer)})
        return answer, close

    def decide(self, role, role_error, host, port, upstream_proxy):
        acl = self.config.acl
        if acl is None:
            return NOT_CONFIGURED
        if role_error is not None:
            return role_error
        return acl.decide(role, host.name, port, upstream_proxy)

    @staticmethod
    def address_denial(decision, pick):
        return Decision(False, pick.deny_reason, "deny", decision.project, decision.default_rule, True,
                        decision.rule, pick.address_class.code)

    @staticmethod
    def decision_fields(decision, lookup_ms):
        return {
            "decision_reason": decision.reason,
            "allow": decision.allow,
            "enforce_would_deny": decision.enforce_would_deny,
            "dns_lookup_time_ms": lookup_ms,
        }

    def rejection(self, head, fields, decision, lookup_ms, connect, close):
        """Log a deny and return its 407, with Smokescreen's text."""
        version = head.version if head.version == "1.0" else "1.1"
        phrase = "Request rejected by proxy" if connect else "Proxy Authentication Required"
        answer = responses.deny(version, head.authority, decision.reason, self.config.deny_message_extra,
                                decision.code, close=close, phrase=phrase)
        self.log.warning(logs.DECISION, {**fields, **self.decision_fields(decision, lookup_ms),
                                         "status_code": 407, "content_length": body_length(answer)})
        return answer

    def limited(self, head, fields, refusal, close):
        """Log a request refused by a limit and return its 429 or 503."""
        version = head.version if head.version == "1.0" else "1.1"
        answer = responses.limited(version, refusal, close)
        self.log.warning(logs.DECISION, {**fields, "decision_reason": refusal.message, "allow": False,
                                         "enforce_would_deny": False, "dns_lookup_time_ms": 0,
                                         "status_code": refusal.status, "content_length": body_length(answer)})
        return answer

    def failure(self, head, fields, decision, lookup_ms, status, message, close):
        """Log a failure after an allowed decision (502, 504, 500) and return its answer."""
        version = head.version if head.version == "1.0" else "1.1"
        if status == 500:
            answer = responses.internal_error(version, message, close=close)
        else:
            builder = responses.gateway_timeout if status == 504 else responses.bad_gateway
            answer = builder(version, message, self.config.deny_message_extra, close=close)
        self.log.error(logs.DECISION, {**fields, **self.decision_fields(decision, lookup_ms),
                                       "status_code": status, "error": message,
                                       "content_length": body_length(answer)})
        return answer

    # --- CONNECT -------------------------------------------------------------------------

    def _connect(self, conn, head):
        started = time.time()  # one reading: the record's start_time and the tunnel's duration
        fields = self.request_fields(conn, "connect", head, started)

        def opened(upstream, answer, close):
            if upstream is None:
                if answer is None:
                    conn.close()
                elif close:
                    conn.finish(answer)
                else:
                    conn.send(answer, lambda: conn.read_head(first=False))
                return
            if upstream.via is not None:
                conn.detach()
                self.spawn(self._chain(conn, head, fields, upstream, started))
                return
            self.limits.release(upstream.role)
            try:
                conn.sock.send(responses.CONNECT_ESTABLISHED)  # 19 bytes: a fresh socket always takes them
            except OSError:
                upstream.sock.close()
                conn.close()
                return
            conn.detach()
            if self.config.sni_check == "off":
                self._relay(conn, head, fields, upstream, started, None, None)
                return
            requested = upstream.requested
            SniCheck(self, conn.sock, conn.buffer, requested.name, requested.address is not None, head.port,
                     upstream.sock, lambda check, verdict, data: self._sni_checked(conn, head, fields, upstream,
                                                                                   started, check, verdict,
                                                                                   data)).start()

        Opening(self, conn, head, fields, True, opened).start()

    def _sni_checked(self, conn, head, fields, upstream, started, check, verdict, data):
        """The SNI check is done: relay (with the bytes it read first), or close under enforce."""
        if check.hello:
            fields["tls_sni"] = check.server_name or ""
        conn.buffer = bytearray(data)
        if verdict is not None:
            allowed = upstream.decision
            enforce = self.config.sni_check == "enforce" and check.enforced(verdict)
            upstream.decision = Decision(not enforce, verdict, "deny" if enforce else "report", allowed.project,
                                         allowed.default_rule, True, allowed.rule, CODE_SNI if enforce else None)
            if enforce:
                self.log.warning(logs.DECISION, {**fields, **self.decision_fields(upstream.decision,
                                                                                  upstream.lookup_ms),
                                                 "conn_establish_time_ms": upstream.connect_ms})
                self.metrics.incr("sni.deny")
                upstream.sock.close()
                conn.sock.close()
                return
            self.metrics.incr("sni.report")
        self._relay(conn, head, fields, upstream, started, None, None)

    def _relay(self, conn, head, fields, upstream, started, proxy_transport, proxy_leftover):
        self.log.info(logs.DECISION, {**fields, **self.decision_fields(upstream.decision, upstream.lookup_ms),
                                      "conn_establish_time_ms": upstream.connect_ms})
        self.metrics.observe("proxy_duration_ms", (time.time() - started) * 1000)
        if self.webhooks is not None:
            self.webhooks.emit("connection-start", fields["id"], _start_details(fields))
        tunnel = Tunnel(fields, started, fields["role"], upstream)
        self.tunnels.add(tunnel)
        self.limits.tunnel_opened(tunnel.role)
        first_bytes = bytes(conn.buffer)
        if conn.tls and proxy_transport is None:
            tunnel.relay = TLSRelay(self.loop, conn.sock, upstream.sock, lambda relay: self._tunnel_closed(tunnel),
                                    first_bytes)
            tunnel.relay.start()
            return None
        if proxy_transport is None:
            tunnel.relay = SpliceRelay(self.loop, conn.sock, upstream.sock, lambda relay: self._tunnel_closed(tunnel),
                                       first_bytes)
            tunnel.relay.start()
            return None
        # One leg is TLS: relay in user space, through the transports.
        tunnel.relay = BufferedRelay(self.loop, lambda relay: self._tunnel_closed(tunnel), first_bytes,
                                     proxy_leftover)
        tunnel.relay.attach(None, proxy_transport)
        proxy_transport.resume_reading()
        return tunnel.relay

    def _upstream_tls(self):
        """Certificates of upstream proxies are checked against the system's roots (SSL_CERT_FILE)."""
        if self._upstream_proxy_tls is None:
            self._upstream_proxy_tls = ssl.create_default_context()
        return self._upstream_proxy_tls

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
        deadline = _Deadline(self.loop, self.config.connect_timeout)
        where = f"upstream proxy {peer_text((upstream.address, via.port))}"
        transport = None
        try:
            transport, _ = await self.loop.create_connection(
                lambda: reader, sock=upstream.sock, ssl=self._upstream_tls(), server_hostname=via.host,
                ssl_handshake_timeout=self.config.connect_timeout or None)
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
        await self.send_final(conn.sock, self.failure(head, fields, upstream.decision, upstream.lookup_ms, status,
                                                      message, True))
        conn.sock.close()

    def _tunnel_closed(self, tunnel):
        self.tunnels.discard(tunnel)
        self.limits.tunnel_closed(tunnel.role)
        relay = tunnel.relay
        ended = time.time()
        record = {
            **{key: tunnel.fields[key] for key in ("id", "inbound_remote_addr", "proxy_type", "requested_host",
                                                   "start_time", "trace_id", "role", "project",
                                                   "outbound_local_addr", "outbound_remote_addr")},
            "bytes_in": relay.bytes_in,
            "bytes_out": relay.bytes_out,
            "end_time": logs.rfc3339(ended),
            "duration": ended - tunnel.started,
            "last_activity": logs.rfc3339(ended - (time.monotonic() - relay.last_activity)),
            "error": relay.error or "",
        }
        if tunnel.active_at_termination:
            record["active_at_termination"] = True
        if "tls_sni" in tunnel.fields:
            record["tls_sni"] = tunnel.fields["tls_sni"]
        self.log.info(logs.CONNECTION_CLOSE, record)
        if self.webhooks is not None:
            self._tunnel_events(tunnel, record)
        self.metrics.connection_closed(tunnel.role, tunnel.fields["project"], record["duration"], relay.bytes_in,
                                       relay.bytes_out, tunnel.active_at_termination)

    def _tunnel_events(self, tunnel, record):
        upstream, fields = tunnel.upstream, tunnel.fields
        details = {**_start_details(fields), "project": fields["project"], "bytes_up": record["bytes_out"],
                   "bytes_down": record["bytes_in"], "duration": record["duration"],
                   "decision": upstream.decision.reason if upstream is not None else "",
                   "destination": fields.get("outbound_remote_addr", ""), "error": record["error"]}
        if "tls_sni" in fields:
            details["tls_sni"] = fields["tls_sni"]
        self.webhooks.emit("connection-stop", fields["id"], details)
        self.webhooks.emit("connection-info", fields["id"], _info_details(fields, upstream, record))

    def close_tunnels(self, reason):
        """Force-close every open tunnel (end of graceful shutdown); each logs its close record."""
        for tunnel in list(self.tunnels):
            tunnel.active_at_termination = True
            tunnel.relay.close(reason)

    # --- plain-HTTP forwarding -----------------------------------------------------------

    async def _forward(self, conn, head):
        """One absolute-form request; then the next head, or the end of the connection."""
        try:
            keep_alive = await self._forward_one(conn, head)
        except HeadError as err:  # the client's own body framing
            await self.send_final(conn.sock, responses.bad_request(str(err)))
            keep_alive = False
        except (OSError, UpstreamBroken):
            keep_alive = False
        if keep_alive and not conn.closed:
            conn.read_head(first=False)
        else:
            conn.close()

    async def _forward_one(self, conn, head):
        """Decide, send the request upstream, stream the response back. True: keep the connection."""
        sock = conn.sock
        started = time.time()
        fields = self.request_fields(conn, "http", head, started)
        if head.scheme != "http":
            await self.send_final(sock, responses.rejection(
                head.version, 501, "Not Implemented",
                f"Forwarding {head.scheme} URLs is not supported; use CONNECT", close=True))
            return False
        replayable = not head.content_length and not head.chunked
        reuse = head.version != "1.0"
        while True:
            opened = self.loop.create_future()
            Opening(self, conn, head, fields, False, lambda *result, opened=opened: opened.set_result(result),
                    reuse).start()
            upstream, answer, close = await opened
            if upstream is None:
                if answer is not None:
                    if close:
                        await self.send_final(sock, answer)
                    else:
                        await sockio.sendall(self.loop, sock, answer)
                return not close
            try:
                if self.webhooks is not None:
                    self.webhooks.emit("connection-start", fields["id"], _start_details(fields))
                keep_alive = await self._exchange(conn, head, fields, upstream)
                self.metrics.observe("proxy_duration_ms", (time.time() - started) * 1000)
                if self.webhooks is not None:
                    self._request_events(head, fields, upstream, started)
                return keep_alive
            except NoResponse as err:
                self.limits.release(upstream.role)
                # A pooled connection the server had closed: once more on a new one, if the
                # request can be sent again (its body, if any, is gone). Failures on the client's
                # side are never retried.
                upstream.sock.close()
                if not (upstream.reused and replayable):
                    raise UpstreamBroken(str(err)) from None
                reuse = False

    def _request_events(self, head, fields, upstream, started):
        details = {**_start_details(fields), "project": fields["project"], "method": head.method,
                   "host": head.authority, "status": fields.get("status_code"),
                   "content_length": fields.get("content_length"), "duration": time.time() - started,
                   "decision": upstream.decision.reason, "destination": fields.get("outbound_remote_addr", "")}
        self.webhooks.emit("connection-stop", fields["id"], details)
        self.webhooks.emit("connection-info", fields["id"], _info_details(fields, upstream, None))

    async def _exchange(self, conn, head, fields, upstream):
        """One request and its response over ``upstream``; the connection is pooled when clean."""
        stale = False
        try:
            return await self._exchange_once(conn, head, fields, upstream)
        except NoResponse:
            stale = True  # released by the caller, which may try again
            raise
        except ConnectionError:  # the client went away: nothing to answer, nothing to retry
            upstream.sock.close()
            raise
        finally:
            if not stale:
                self.limits.release(upstream.role)

    async def _within(self, seconds, awaitable, what):
        """Await ``awaitable`` for at most ``seconds`` (0: no limit); ForwardTimeout(what) after that."""
        deadline = _Deadline(self.loop, seconds)
        try:
            return await awaitable
        except asyncio.CancelledError:
            deadline.clear(cancelled=True)
            if deadline.expired:
                raise ForwardTimeout(what) from None
            raise
        finally:
            deadline.clear()

    async def _send_request(self, conn, head, upstream):
        body = forward.request_body(head)
        try:
            await sockio.sendall(self.loop, upstream.sock,
                                 forward.upstream_request(head) + _take(body, conn.buffer))
        except ConnectionError as err:  # before any of the request got through: safe to retry
            raise NoResponse(f"connection closed before the request: {err}") from None
        await self._relay_body(conn.sock, upstream.sock, conn.buffer, body,
                               ConnectionError("client closed in the middle of its request body"))

    async def _exchange_once(self, conn, head, fields, upstream):
        sock = conn.sock
        try:
            try:
                await self._within(self.config.read_timeout, self._send_request(conn, head, upstream),
                                   "reading the request")
                answer = await self._within(self.config.write_timeout,
                                            self._relay_response(sock, upstream.sock, head), "writing the response")
            except ForwardTimeout as err:
                upstream.sock.close()
                self.log.warning("forwarded request timed out", {**fields, "error": f"{err} took too long"})
                return False
        except ConnectionError:
            raise
        except NoResponse:
            raise
        except UpstreamBroken as err:
            upstream.sock.close()
            await self.send_final(sock, self.failure(head, fields, upstream.decision, upstream.lookup_ms, 502,
                                                     f"Failed to read response from remote host: {err}", True))
            return False
        except OSError as err:  # the upstream went away while taking the request
            upstream.sock.close()
            await self.send_final(sock, self.failure(head, fields, upstream.decision, upstream.lookup_ms, 502,
                                                     f"Failed to send request to remote host: {err.strerror or err}",
                                                     True))
            return False
        response, keep_alive, reusable = answer
        if reusable:
            self.pool.give(upstream.address, upstream.port, upstream.sock)
        else:
            upstream.sock.close()
        fields["status_code"] = response.status
        fields["content_length"] = -1 if response.content_length is None else response.content_length
        self.log.info(logs.DECISION, {**fields, **self.decision_fields(upstream.decision, upstream.lookup_ms),
                                      "conn_establish_time_ms": upstream.connect_ms})
        return keep_alive

    async def _read_response_head(self, upstream, buffer):
        """The upstream's next response head; UpstreamBroken when there is none."""
        while True:
            if buffer:
                try:
                    head = parse_response_head(buffer)
                except HeadError as err:
                    raise UpstreamBroken(str(err)) from None
                if head is not None:
                    return head
            try:
                data = await sockio.recv(self.loop, upstream, READ_SIZE)
            except ConnectionResetError:
                data = b""
            if not data:
                if not buffer:
                    raise NoResponse("connection closed before a response")
                raise UpstreamBroken("connection closed in the middle of a response head")
            buffer += data

    async def _relay_response(self, sock, upstream, request):
        """Read the response head (passing on interim 1xx heads), send it, stream its body.

        Returns the response head, whether the client connection stays open, and whether the
        upstream connection is clean for reuse.
        """
        buffer = bytearray()
        first = True
        while True:
            try:
                head = await self._read_response_head(upstream, buffer)
            except NoResponse:
                if first:
                    raise
                raise UpstreamBroken("connection closed before a final response") from None
            first = False
            del buffer[:head.head_end]
            if head.status >= 200 or head.status == 101:
                break
            await sockio.sendall(self.loop, sock, forward.client_response(head, False, request.version))
        if head.status == 101:
            raise UpstreamBroken("protocol upgrades are not forwarded")
        body = forward.response_body(head, request.method)
        # The upstream connection always ends with this response (we asked it to); the client's
        # may go on, unless the body is delimited by that close or we are shutting down.
        keep_alive = request.keep_alive and not isinstance(body, forward.UntilClose) and self.serving
        try:
            # The head and what of the body already arrived go out in one send (often all of it).
            await sockio.sendall(self.loop, sock, forward.client_response(head, not keep_alive, request.version)
                                 + _take(body, buffer))
            await self._relay_body(upstream, sock, buffer, body,
                                   UpstreamBroken("connection closed in the middle of a body"))
        except HeadError as err:
            raise UpstreamBroken(str(err)) from None
        reusable = (request.version != "1.0" and head.keep_alive and not buffer
                    and not isinstance(body, forward.UntilClose))
        return head, keep_alive, reusable

    async def _relay_body(self, source, destination, buffer, body, cut_short):
        """Stream a body's bytes (first from ``buffer``) until its framing says it ended.

        Bytes past the body's end stay in ``buffer``: the start of the next message. A source
        that closes before the end raises ``cut_short``; bad chunked framing raises HeadError.
        """
        while not body.done:
            if not buffer:
                data = await sockio.recv(self.loop, source, READ_SIZE)
                if not data:
                    if isinstance(body, forward.UntilClose):
                        return
                    raise cut_short
                buffer += data
            taken = body.feed(buffer)
            if taken:
                await sockio.sendall(self.loop, destination, bytes(buffer[:taken]))
                del buffer[:taken]
