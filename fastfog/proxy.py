"""One client connection, from its first byte to its close record (the path in DESIGN.md).

The proxy owns raw, non-blocking sockets from accept on, so a CONNECT tunnel
between two plaintext sockets can be relayed with splice(2). The decision
steps are the pure functions of ``hotpaths``, ``acl`` and ``classify``; this
module strings them together with the I/O: read the head, decide, resolve,
classify, dial exactly the address that was checked, answer, then relay a
tunnel or forward a request.
"""

import asyncio
import base64
import os
import socket
import ssl
import time
from urllib.parse import unquote

from fastfog import forward, logs, responses, sockio
from fastfog.acl import NOT_CONFIGURED, ROLE_NOT_DETERMINED, Decision, parse_upstream_proxy
from fastfog.classify import AddressPolicy, canonical_host
from fastfog.dns import ResolveError
from fastfog.hotpaths import BufferedRelay, HeadError, SpliceRelay, parse_request_head, parse_response_head

READ_SIZE = 65536
MAX_HEAD_SIZE = 65536
LINGER_SECONDS = 1.0  # how long a closing connection discards what its client still sends
LINGER_BYTES = 1 << 20
TRACE_HEADER = b"x-smokescreen-trace-id"
UPSTREAM_PROXY_HEADER = b"x-upstream-https-proxy"


class ConnectTimeout(Exception):
    """The deadline passed while dialing."""


class UpstreamBroken(Exception):
    """The upstream sent something that is not HTTP, or went away mid-response."""


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


def peer_text(address):
    """Go's form of a socket address: ``ip:port``, ``[v6]:port``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def header_value(headers, lowercase_name):
    for name, value in headers:
        if len(name) == len(lowercase_name) and name.lower() == lowercase_name:
            return value.decode("latin-1")
    return None


def body_length(answer):
    return len(answer) - answer.index(b"\r\n\r\n") - 4


class Tunnel:
    """An open CONNECT tunnel: its relay and what its close record reports."""

    __slots__ = ("relay", "fields", "started", "proxy_type", "role", "host", "address", "active_at_termination")

    def __init__(self, fields, started, role, host, address):
        self.relay = None
        self.active_at_termination = False
        self.fields = fields
        self.started = started
        self.proxy_type = "connect"
        self.role = role
        self.host = host
        self.address = address


class Upstream:
    """A dialed upstream connection and what the decision record says about it."""

    __slots__ = ("sock", "decision", "lookup_ms", "connect_ms", "address", "via")

    def __init__(self, sock, decision, lookup_ms, connect_ms, address, via):
        self.sock, self.decision, self.address, self.via = sock, decision, address, via
        self.lookup_ms, self.connect_ms = lookup_ms, connect_ms


class Proxy:
    """Serves client connections for one worker: its config, resolver and log."""

    def __init__(self, config, resolver, log, listen_port=None, own_addresses=()):
        self.config = config
        self.resolver = resolver
        self.log = log
        self.policy = AddressPolicy(config.allow_ranges, config.deny_ranges, config.allow_addresses,
                                    config.deny_addresses, config.unsafe_allow_private_ranges, listen_port,
                                    own_addresses)
        self.ids = logs.IdSource()
        self.tunnels = set()
        self.handlers = set()
        self.serving = True
        self._loop = asyncio.get_running_loop()
        self._upstream_proxy_tls = None  # made on first use: most deployments never chain

    # --- accepting -----------------------------------------------------------------------

    def accept(self, sock, address):
        """Take a freshly accepted client socket."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self.handle(sock, address))
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)

    async def handle(self, sock, address):
        """Requests on one client connection until it closes or turns into a tunnel."""
        buffer = bytearray()
        tunnel_started = False
        try:
            while self.serving or buffer:
                head = await self._read_head(sock, buffer)
                if head is None:
                    return
                del buffer[:head.head_end]
                if head.form == "authority":
                    tunnel_started = await self._connect(sock, address, head, bytes(buffer))
                    return
                if head.form == "absolute":
                    keep_alive = await self._forward(sock, address, head, buffer)
                else:
                    keep_alive = await self._answer_locally(sock, head)
                if not keep_alive:
                    return
        except HeadError as err:
            await self._send_final(sock, responses.bad_request(str(err)))
            self.log.warning("bad request", {"inbound_remote_addr": peer_text(address), "error": str(err)})
        except TimeoutError:
            self.log.info("client did not finish its request in time",
                          {"inbound_remote_addr": peer_text(address)})
        except (ConnectionError, OSError, UpstreamBroken):
            pass
        finally:
            if not tunnel_started:
                sock.close()

    async def _read_head(self, sock, buffer):
        """The next request head; None when the client closed cleanly between requests."""
        deadline = _Deadline(self._loop, self.config.read_header_timeout)
        try:
            return await self._read_some_head(sock, sock, buffer, parse_request_head)
        except asyncio.CancelledError:
            deadline.clear(cancelled=True)
            if deadline.expired:
                raise TimeoutError from None
            raise
        finally:
            deadline.clear()

    async def _read_some_head(self, client, sock, buffer, parse):
        """Read ``sock`` into ``buffer`` until ``parse`` finds a head; None on a clean close first."""
        while True:
            if buffer:
                head = parse(buffer)
                if head is not None:
                    return head
            data = await self._recv(sock)
            if not data:
                if buffer.strip():
                    raise HeadError("connection closed in the middle of a head")
                return None
            buffer += data
            # Heads are re-parsed only when a line has ended: a peer trickling bytes costs
            # one parse per line, never one per byte.
            while b"\n" not in data and len(buffer) < MAX_HEAD_SIZE:
                data = await self._recv(sock)
                if not data:
                    raise HeadError("connection closed in the middle of a head")
                buffer += data

    async def _recv(self, sock):
        return await sockio.recv(self._loop, sock, READ_SIZE)

    async def _answer_locally(self, sock, head):
        """Requests for the proxy itself. True when the connection may carry another request."""
        version = head.version if head.version == "1.0" else "1.1"
        if head.form == "origin" and head.method == "GET" and head.path == "/healthcheck":
            await sockio.sendall(self._loop, sock, responses.healthcheck(version, self.serving))
            return head.keep_alive and self.serving and not head.content_length and not head.chunked
        await self._send_final(sock, responses.not_a_proxy_request(version))
        return False

    async def _send_final(self, sock, data):
        """Send a last answer, then let the caller close without losing it.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the answer before the client reads it. So: shut down writing, discard what the client
        still sends for a moment, then close.
        """
        try:
            await sockio.sendall(self._loop, sock, data)
            sock.shutdown(socket.SHUT_WR)
            deadline = _Deadline(self._loop, LINGER_SECONDS)
            try:
                discarded = 0
                while discarded < LINGER_BYTES:
                    chunk = await self._recv(sock)
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

    # --- the decision path, shared by CONNECT and forwarding --------------------------------

    def _request_fields(self, address, proxy_type, head):
        return {
            "id": self.ids.next(),
            "inbound_remote_addr": peer_text(address),
            "proxy_type": proxy_type,
            "requested_host": head.authority,
            "start_time": logs.rfc3339(time.time()),
            "trace_id": header_value(head.headers, TRACE_HEADER) or "",
        }

    def _role(self):
        """The client's role. Without TLS client certificates no role can be known yet."""
        if self.config.allow_missing_role:
            return "", None
        return "", ROLE_NOT_DETERMINED

    def _decide(self, role, role_error, host, port, upstream_proxy):
        acl = self.config.acl
        if acl is None:
            return NOT_CONFIGURED
        if role_error is not None:
            return role_error
        return acl.decide(role, host.name, port, upstream_proxy)

    async def _open_upstream(self, sock, head, fields, connect):
        """Decide, resolve, classify and dial: an Upstream, or None once the client is answered.

        ``connect``: a CONNECT request (deny answers close the connection); otherwise a forwarded
        request, whose connection stays usable after a deny unless its body is still unread.
        """
        version = head.version if head.version == "1.0" else "1.1"
        close = connect or bool(head.content_length) or head.chunked or not head.keep_alive
        try:
            host = canonical_host(head.host)
        except ValueError as err:
            await self._send_final(sock, responses.bad_request(str(err)))
            self.log.warning("bad request", {**fields, "error": str(err)})
            return None
        upstream_proxy = header_value(head.headers, UPSTREAM_PROXY_HEADER) if connect else None
        role, role_error = self._role()
        decision = self._decide(role, role_error, host, head.port, upstream_proxy)
        fields["role"] = role
        fields["project"] = decision.project
        if not decision.allow:
            await self._reject(sock, version, fields, decision, head.authority, 0, connect, close)
            return None
        via = None
        dial_host, dial_port = host, head.port
        if upstream_proxy:
            # The tunnel goes through another proxy: its address is what is resolved, classified
            # and dialed; the requested host is that proxy's to resolve.
            via = parse_upstream_proxy(upstream_proxy)
            try:
                dial_host, dial_port = canonical_host(via.host), via.port
            except (AttributeError, ValueError):
                await self._send_final(sock, responses.bad_request("invalid X-Upstream-Https-Proxy"))
                self.log.warning("bad request", {**fields, "error": "invalid X-Upstream-Https-Proxy"})
                return None

        lookup_started = time.monotonic()
        try:
            addresses = (dial_host.name,) if dial_host.address is not None else await self.resolver.resolve(
                dial_host.name)
        except ResolveError as err:
            lookup_ms = int((time.monotonic() - lookup_started) * 1000)
            status = 504 if err.timeout else 502
            message = (f"Timed out connecting to remote host: {err}" if err.timeout
                       else f"Failed to resolve remote hostname: {err}")
            await self._fail(sock, version, fields, decision, lookup_ms, status, message, close)
            return None
        lookup_ms = int((time.monotonic() - lookup_started) * 1000)

        pick = self.policy.pick(addresses, dial_port)
        if not pick.allowed:
            denied = Decision(False, pick.deny_reason, "deny", decision.project, decision.default_rule, True,
                              decision.rule, pick.address_class.code)
            await self._reject(sock, version, fields, denied, head.authority, lookup_ms, connect, close)
            return None

        target = peer_text((pick.address, dial_port))
        try:
            upstream, connect_ms = await self._dial(pick.address, dial_port)
        except ConnectTimeout:
            message = f"Timed out connecting to remote host: dial tcp {target}: i/o timeout"
            await self._fail(sock, version, fields, decision, lookup_ms, 504, message, close)
            return None
        except OSError as err:
            cause = os.strerror(err.errno).lower() if err.errno else str(err)
            message = f"Failed to connect to remote host: dial tcp {target}: connect: {cause}"
            await self._fail(sock, version, fields, decision, lookup_ms, 502, message, close)
            return None
        fields["outbound_local_addr"] = peer_text(upstream.getsockname())
        fields["outbound_remote_addr"] = peer_text(upstream.getpeername())
        return Upstream(upstream, decision, lookup_ms, connect_ms, pick.address, via)

    async def _dial(self, ip, port):
        """Connect to exactly ``ip`` (the address that was classified), within connect_timeout."""
        upstream = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        deadline = _Deadline(self._loop, self.config.connect_timeout)
        try:
            await sockio.connect(self._loop, upstream, (ip, port))
        except asyncio.CancelledError:
            upstream.close()
            deadline.clear(cancelled=True)
            if deadline.expired:
                raise ConnectTimeout from None
            raise
        except BaseException:
            upstream.close()
            raise
        finally:
            deadline.clear()
        return upstream, int((time.monotonic() - started) * 1000)

    @staticmethod
    def _decision_fields(decision, lookup_ms):
        return {
            "decision_reason": decision.reason,
            "allow": decision.allow,
            "enforce_would_deny": decision.enforce_would_deny,
            "dns_lookup_time_ms": lookup_ms,
        }

    async def _answer(self, sock, answer, close):
        if close:
            await self._send_final(sock, answer)
        else:
            await sockio.sendall(self._loop, sock, answer)

    async def _reject(self, sock, version, fields, decision, requested_host, lookup_ms, connect, close):
        """407 with Smokescreen's deny text."""
        phrase = "Request rejected by proxy" if connect else "Proxy Authentication Required"
        answer = responses.deny(version, requested_host, decision.reason, self.config.deny_message_extra,
                                decision.code, close=close, phrase=phrase)
        self.log.warning(logs.DECISION, {**fields, **self._decision_fields(decision, lookup_ms),
                                         "status_code": 407, "content_length": body_length(answer)})
        await self._answer(sock, answer, close)

    async def _fail(self, sock, version, fields, decision, lookup_ms, status, message, close):
        """A 502 or 504 after an allowed decision: logged as an error with the decision fields."""
        builder = responses.gateway_timeout if status == 504 else responses.bad_gateway
        answer = builder(version, message, self.config.deny_message_extra, close=close)
        self.log.error(logs.DECISION, {**fields, **self._decision_fields(decision, lookup_ms),
                                       "status_code": status, "error": message,
                                       "content_length": body_length(answer)})
        await self._answer(sock, answer, close)

    # --- CONNECT -------------------------------------------------------------------------

    async def _connect(self, sock, address, head, first_bytes):
        """A CONNECT request: answer 200 and relay once the upstream is open. True once relaying."""
        started = time.time()
        fields = self._request_fields(address, "connect", head)
        upstream = await self._open_upstream(sock, head, fields, connect=True)
        if upstream is None:
            return False
        proxy_transport = proxy_leftover = None
        if upstream.via is not None:
            chained = await self._through_upstream_proxy(sock, head, fields, upstream)
            if chained is None:
                return False
            proxy_transport, proxy_leftover = chained
        try:
            await sockio.sendall(self._loop, sock, responses.CONNECT_ESTABLISHED)
        except OSError:
            (proxy_transport or upstream.sock).close()
            return False
        self.log.info(logs.DECISION, {**fields, **self._decision_fields(upstream.decision, upstream.lookup_ms),
                                      "conn_establish_time_ms": upstream.connect_ms})
        tunnel = Tunnel(fields, started, fields["role"], head.host, upstream.address)
        self.tunnels.add(tunnel)
        if proxy_transport is None:
            tunnel.relay = SpliceRelay(self._loop, sock, upstream.sock, lambda relay: self._tunnel_closed(tunnel),
                                       first_bytes)
            tunnel.relay.start()
            return True
        # One leg is TLS: relay in user space, through the transports.
        tunnel.relay = BufferedRelay(self._loop, lambda relay: self._tunnel_closed(tunnel), first_bytes,
                                     proxy_leftover)
        tunnel.relay.attach(None, proxy_transport)
        proxy_transport.resume_reading()
        await self._loop.connect_accepted_socket(lambda: tunnel.relay.client_protocol, sock)
        return True

    def _upstream_tls(self):
        """Certificates of upstream proxies are checked against the system's roots (SSL_CERT_FILE)."""
        if self._upstream_proxy_tls is None:
            self._upstream_proxy_tls = ssl.create_default_context()
        return self._upstream_proxy_tls

    async def _through_upstream_proxy(self, sock, head, fields, upstream):
        """TLS to the upstream proxy and our own CONNECT through it: (transport, bytes after its answer).

        None once the client has been answered with the failure.
        """
        via = upstream.via
        request = f"CONNECT {head.authority} HTTP/1.1\r\nHost: {head.authority}\r\n"
        if via.username is not None:
            credentials = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            request += f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        reader = _ProxyAnswer(self._loop)
        deadline = _Deadline(self._loop, self.config.connect_timeout)
        where = f"upstream proxy {peer_text((upstream.address, via.port))}"
        transport = None
        try:
            transport, _ = await self._loop.create_connection(
                lambda: reader, sock=upstream.sock, ssl=self._upstream_tls(), server_hostname=via.host,
                ssl_handshake_timeout=self.config.connect_timeout or None)
            transport.write((request + "\r\n").encode("latin-1"))
            answer, leftover = await reader.answer
        except asyncio.CancelledError:
            deadline.clear(cancelled=True)
            if not deadline.expired:
                raise
            message = f"Timed out connecting to remote host: {where}: i/o timeout"
            status = 504
        except (OSError, ssl.SSLError, UpstreamBroken, asyncio.TimeoutError) as err:
            message = f"Failed to connect to remote host: {where}: {err}"
            status = 502
        else:
            if 200 <= answer.status < 300:
                return transport, leftover
            message = f"Failed to connect to remote host: {where} answered {answer.status} {answer.reason}".rstrip()
            status = 502
        finally:
            deadline.clear()
        if transport is not None:
            transport.abort()
        else:
            upstream.sock.close()
        await self._fail(sock, head.version, fields, upstream.decision, upstream.lookup_ms, status, message, True)
        return None

    def _tunnel_closed(self, tunnel):
        self.tunnels.discard(tunnel)
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
        self.log.info(logs.CONNECTION_CLOSE, record)

    def close_tunnels(self, reason):
        """Force-close every open tunnel (end of graceful shutdown); each logs its close record."""
        for tunnel in list(self.tunnels):
            tunnel.active_at_termination = True
            tunnel.relay.close(reason)

    # --- plain-HTTP forwarding -----------------------------------------------------------

    async def _forward(self, sock, address, head, buffer):
        """One absolute-form request: decide, send it upstream, stream the response back.

        True when the client connection may carry another request.
        """
        fields = self._request_fields(address, "http", head)
        if head.scheme != "http":
            await self._send_final(sock, responses.rejection(
                head.version, 501, "Not Implemented",
                f"Forwarding {head.scheme} URLs is not supported; use CONNECT", close=True))
            return False
        upstream = await self._open_upstream(sock, head, fields, connect=False)
        if upstream is None:
            return head.keep_alive and not head.content_length and not head.chunked
        with upstream.sock:
            try:
                await sockio.sendall(self._loop, upstream.sock, forward.upstream_request(head))
                await self._relay_body(sock, upstream.sock, buffer, forward.request_body(head),
                                       ConnectionError("client closed in the middle of its request body"))
            except OSError as err:  # the upstream went away while taking the request
                await self._fail(sock, head.version, fields, upstream.decision, upstream.lookup_ms, 502,
                                 f"Failed to send request to remote host: {err.strerror or err}", close=True)
                return False
            try:
                response, keep_alive = await self._relay_response(sock, upstream.sock, head)
            except UpstreamBroken as err:
                await self._fail(sock, head.version, fields, upstream.decision, upstream.lookup_ms, 502,
                                 f"Failed to read response from remote host: {err}", close=True)
                return False
        self.log.info(logs.DECISION, {
            **fields, **self._decision_fields(upstream.decision, upstream.lookup_ms),
            "conn_establish_time_ms": upstream.connect_ms, "status_code": response.status,
            "content_length": -1 if response.content_length is None else response.content_length,
        })
        return keep_alive

    async def _relay_response(self, sock, upstream, request):
        """Read the response head (skipping interim 1xx heads), send it, stream its body.

        Returns the response head and whether the client connection stays open.
        """
        buffer = bytearray()
        while True:
            try:
                head = await self._read_some_head(sock, upstream, buffer, parse_response_head)
            except HeadError as err:
                raise UpstreamBroken(str(err)) from None
            if head is None:
                raise UpstreamBroken("connection closed before a response")
            del buffer[:head.head_end]
            if head.status >= 200 or head.status == 101:
                break
            await sockio.sendall(self._loop, sock, forward.client_response(head, False, request.version))
        if head.status == 101:
            raise UpstreamBroken("protocol upgrades are not forwarded")
        body = forward.response_body(head, request.method)
        # The upstream connection always ends with this response (we asked it to); the client's
        # may go on, unless the body is delimited by that close or we are shutting down.
        keep_alive = request.keep_alive and not isinstance(body, forward.UntilClose) and self.serving
        await sockio.sendall(self._loop, sock, forward.client_response(head, not keep_alive, request.version))
        try:
            await self._relay_body(upstream, sock, buffer, body,
                                   UpstreamBroken("connection closed in the middle of a body"))
        except HeadError as err:
            raise UpstreamBroken(str(err)) from None
        return head, keep_alive

    async def _relay_body(self, source, destination, buffer, body, cut_short):
        """Stream a body's bytes (first from ``buffer``) until its framing says it ended.

        Bytes past the body's end stay in ``buffer``: the start of the next message. A source
        that closes before the end raises ``cut_short``; bad chunked framing raises HeadError.
        """
        while not body.done:
            if not buffer:
                data = await self._recv(source)
                if not data:
                    if isinstance(body, forward.UntilClose):
                        return
                    raise cut_short
                buffer += data
            taken = body.feed(buffer)
            if taken:
                await sockio.sendall(self._loop, destination, bytes(buffer[:taken]))
                del buffer[:taken]
