"""One client connection, from its first byte to its close record (the path in DESIGN.md).

The proxy owns raw, non-blocking sockets from accept on, so a CONNECT tunnel
between two plaintext sockets can be relayed with splice(2). The decision
steps are the pure functions of ``hotpaths``, ``acl`` and ``classify``; this
module strings them together with the I/O: read the head, decide, resolve,
classify, dial exactly the address that was checked, answer, relay, log.
"""

import asyncio
import os
import socket
import time

from fastfog import logs, responses
from fastfog.acl import NOT_CONFIGURED, ROLE_NOT_DETERMINED, Decision
from fastfog.classify import AddressPolicy, canonical_host
from fastfog.dns import ResolveError
from fastfog.hotpaths import HeadError, SpliceRelay, parse_request_head

READ_SIZE = 65536
LINGER_SECONDS = 1.0  # how long a closing connection discards what its client still sends
LINGER_BYTES = 1 << 20
TRACE_HEADER = b"x-smokescreen-trace-id"
UPSTREAM_PROXY_HEADER = b"x-upstream-https-proxy"


class ConnectTimeout(Exception):
    """The deadline passed while dialing."""


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
                if not await self._answer_locally(sock, head):
                    return
        except HeadError as err:
            await self._send_quietly(sock, responses.bad_request(str(err)))
            self.log.warning("bad request", {"inbound_remote_addr": peer_text(address), "error": str(err)})
        except TimeoutError:
            self.log.info("client did not finish its request in time",
                          {"inbound_remote_addr": peer_text(address)})
        except (ConnectionError, OSError):
            pass
        finally:
            if not tunnel_started:
                sock.close()

    async def _read_head(self, sock, buffer):
        """The next request head; None when the client closed cleanly between requests."""
        config = self.config
        deadline = _Deadline(self._loop, config.read_header_timeout)
        try:
            while True:
                if buffer:
                    head = parse_request_head(buffer)
                    if head is not None:
                        return head
                data = await self._loop.sock_recv(sock, READ_SIZE)
                if not data:
                    if buffer.strip():
                        raise HeadError("connection closed in the middle of a request head")
                    return None
                buffer += data
                # Heads are re-parsed only when a line has ended: a client trickling bytes
                # costs one parse per line, never one per byte.
                while b"\n" not in data and len(buffer) < 65536:
                    data = await self._loop.sock_recv(sock, READ_SIZE)
                    if not data:
                        raise HeadError("connection closed in the middle of a request head")
                    buffer += data
        except asyncio.CancelledError:
            deadline.clear(cancelled=True)
            if deadline.expired:
                raise TimeoutError from None
            raise
        finally:
            deadline.clear()

    async def _answer_locally(self, sock, head):
        """Requests for the proxy itself. True when the connection may carry another request."""
        version = head.version if head.version == "1.0" else "1.1"
        if head.form == "origin" and head.method == "GET" and head.path == "/healthcheck":
            await self._loop.sock_sendall(sock, responses.healthcheck(version, self.serving))
            return head.keep_alive and self.serving and not head.content_length and not head.chunked
        if head.form == "absolute":
            await self._send_quietly(sock, responses.rejection(
                version, 501, "Not Implemented",
                "Plain-HTTP forwarding is not supported by this version of fastfog; use CONNECT", close=True))
            return False
        await self._send_quietly(sock, responses.not_a_proxy_request(version))
        return False

    async def _send_quietly(self, sock, data):
        """Send a final answer, then close without losing it.

        Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the answer before the client reads it. So: shut down writing, discard what the client
        still sends for a moment, then close (the caller closes).
        """
        try:
            await self._loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)
            deadline = _Deadline(self._loop, LINGER_SECONDS)
            try:
                discarded = 0
                while discarded < LINGER_BYTES:
                    chunk = await self._loop.sock_recv(sock, READ_SIZE)
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

    def _role(self):
        """The client's role. Without TLS client certificates no role can be known yet."""
        if self.config.allow_missing_role:
            return "", None
        return "", ROLE_NOT_DETERMINED

    def _decide(self, role, role_error, host, port, headers):
        acl = self.config.acl
        if acl is None:
            return NOT_CONFIGURED
        if role_error is not None:
            return role_error
        return acl.decide(role, host.name, port, header_value(headers, UPSTREAM_PROXY_HEADER))

    async def _connect(self, sock, address, head, first_bytes):
        """A CONNECT request: decide, resolve, dial, answer, relay. True once relaying."""
        started = time.time()
        config = self.config
        fields = {
            "id": self.ids.next(),
            "inbound_remote_addr": peer_text(address),
            "proxy_type": "connect",
            "requested_host": head.authority,
            "start_time": logs.rfc3339(started),
            "trace_id": header_value(head.headers, TRACE_HEADER) or "",
        }
        version = head.version if head.version == "1.0" else "1.1"
        try:
            host = canonical_host(head.host)
        except ValueError as err:
            await self._send_quietly(sock, responses.bad_request(str(err)))
            self.log.warning("bad request", {**fields, "error": str(err)})
            return False

        role, role_error = self._role()
        decision = self._decide(role, role_error, host, head.port, head.headers)
        fields["role"] = role
        fields["project"] = decision.project
        if not decision.allow:
            return await self._reject(sock, version, fields, decision, head.authority)
        if header_value(head.headers, UPSTREAM_PROXY_HEADER):
            message = "X-Upstream-Https-Proxy is not supported by this version of fastfog"
            return await self._fail(sock, version, fields, decision, 0, 502, message)

        lookup_started = time.monotonic()
        try:
            if host.address is not None:
                addresses = (host.name,)
            else:
                addresses = await self.resolver.resolve(host.name)
        except ResolveError as err:
            lookup_ms = int((time.monotonic() - lookup_started) * 1000)
            status = 504 if err.timeout else 502
            message = (f"Timed out connecting to remote host: {err}" if err.timeout
                       else f"Failed to resolve remote hostname: {err}")
            return await self._fail(sock, version, fields, decision, lookup_ms, status, message)
        lookup_ms = int((time.monotonic() - lookup_started) * 1000)

        pick = self.policy.pick(addresses, head.port)
        if not pick.allowed:
            denied = Decision(False, pick.deny_reason, "deny", decision.project, decision.default_rule, True,
                              decision.rule, pick.address_class.code)
            return await self._reject(sock, version, fields, denied, head.authority, lookup_ms)

        try:
            upstream, connect_ms = await self._dial(pick.address, head.port)
        except ConnectTimeout:
            message = f"Timed out connecting to remote host: dial tcp {peer_text((pick.address, head.port))}: i/o timeout"
            return await self._fail(sock, version, fields, decision, lookup_ms, 504, message)
        except OSError as err:
            cause = os.strerror(err.errno).lower() if err.errno else str(err)
            message = f"Failed to connect to remote host: dial tcp {peer_text((pick.address, head.port))}: connect: {cause}"
            return await self._fail(sock, version, fields, decision, lookup_ms, 502, message)

        try:
            await self._loop.sock_sendall(sock, responses.CONNECT_ESTABLISHED)
        except OSError:
            upstream.close()
            return False
        fields.update(self._decision_fields(decision, lookup_ms))
        fields["outbound_local_addr"] = peer_text(upstream.getsockname())
        fields["outbound_remote_addr"] = peer_text(upstream.getpeername())
        self.log.info(logs.DECISION, {**fields, "conn_establish_time_ms": connect_ms})

        tunnel = Tunnel(fields, started, role, host.name, pick.address)
        tunnel.relay = SpliceRelay(self._loop, sock, upstream, lambda relay: self._tunnel_closed(tunnel),
                                   first_bytes)
        self.tunnels.add(tunnel)
        tunnel.relay.start()
        return True

    async def _dial(self, ip, port):
        """Connect to exactly ``ip`` (the address that was classified), within connect_timeout."""
        upstream = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        deadline = _Deadline(self._loop, self.config.connect_timeout)
        try:
            await self._loop.sock_connect(upstream, (ip, port))
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

    async def _reject(self, sock, version, fields, decision, requested_host, lookup_ms=0):
        """407 with Smokescreen's deny text; the connection is closed after it."""
        body = responses.deny(version, requested_host, decision.reason, self.config.deny_message_extra,
                              decision.code, close=True)
        record = {**fields, **self._decision_fields(decision, lookup_ms), "status_code": 407,
                  "content_length": len(body) - body.index(b"\r\n\r\n") - 4}
        self.log.warning(logs.DECISION, record)
        await self._send_quietly(sock, body)
        return False

    async def _fail(self, sock, version, fields, decision, lookup_ms, status, message):
        """A 502 or 504 after an allowed decision: logged as an error with the decision fields."""
        builder = responses.gateway_timeout if status == 504 else responses.bad_gateway
        body = builder(version, message, self.config.deny_message_extra, close=True)
        record = {**fields, **self._decision_fields(decision, lookup_ms), "status_code": status,
                  "error": message, "content_length": len(body) - body.index(b"\r\n\r\n") - 4}
        self.log.error(logs.DECISION, record)
        await self._send_quietly(sock, body)
        return False

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

