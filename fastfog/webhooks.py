"""Webhooks (SPEC 5.2): Smithproxy-style connection events and a synchronous access-request hook.

Events never hold traffic up. The connection path only appends an envelope
``{"action", "id", "source", "type": "proxy", "details"}`` to a bounded
queue; sender tasks on the same loop POST them, one JSON object per request,
over keep-alive connections (a small HTTP/1.1 client on uvloop streams;
fastfog's own head parser reads the answers). 5xx answers and connection
errors are retried with backoff, then the event is dropped; a full queue
drops the new event. Drops are counted (``webhook.dropped``) and logged at
most once a minute. ``id`` is stable per connection:
``Proxy-<boot id>-OID-<connection id>``, the connection id being the one in
the log records.

Actions: ``ping`` (every ``ping_interval``), ``neighbor`` (the first time a
client address is seen), ``connection-start`` (an allowed tunnel or request
begins), ``connection-stop`` (it ended: bytes each way, duration, decision,
destination, the TLS SNI when the tunnel carried one, the method and host of
a forwarded request), ``connection-info`` (fastfog's own figures for the
connection, and the access-request answer).

``access_request`` (synchronous, optional per role): once the ACL and the
address checks allow a connection, before it is dialed, fastfog POSTs
``{"action": "access-request", …, "details": {policy, session, role, host,
port, client}}`` and waits at most ``timeout`` for ``{"access-response":
"accept"|"reject"}``. ``reject`` denies (407, ``rejected by access-request
webhook``). Anything else, an error or a timeout accepts, as Smithproxy does,
unless ``fail_closed``. Answers are cached per (role, host) for ``cache_ttl``.
"""

import asyncio
import json
import os
import socket
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

from fastfog import forward
from fastfog.errors import HeadError
from fastfog.hotpaths import parse_response_head

ACTIONS = ("ping", "neighbor", "connection-start", "connection-stop", "connection-info")
SENDERS = 4  # events in flight at once
RETRIES = 3
MAX_NEIGHBORS = 100_000
MAX_ANSWER = 1 << 20


class WebhookError(Exception):
    """The receiver could not be reached or answered something unusable."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer


class Client:
    """POSTs JSON to one URL over a few keep-alive connections."""

    def __init__(self, url, tls_verify=True, ca_file=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url must be http:// or https://, got {url!r}")
        self.host, self.https = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc.rpartition("@")[2]
        self.ssl = None
        if self.https:
            self.ssl = ssl.create_default_context(cafile=ca_file)
            if not tls_verify:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self._idle = []

    async def post(self, payload):
        """(status, body bytes); WebhookError when no answer came."""
        request = (f"POST {self.path} HTTP/1.1\r\nHost: {self.authority}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\nUser-Agent: fastfog\r\n\r\n").encode() + payload
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else await self._open()
        try:
            try:
                connection.writer.write(request)
                status, body, keep = await self._answer(connection.reader)
            except (OSError, WebhookError, asyncio.IncompleteReadError) as err:
                connection.writer.close()
                if not reused:
                    raise WebhookError(str(err) or type(err).__name__) from None
                connection = await self._open()  # the receiver closed an idle connection: once more
                connection.writer.write(request)
                status, body, keep = await self._answer(connection.reader)
        except BaseException:
            connection.writer.close()
            raise
        if keep:
            self._idle.append(connection)
        else:
            connection.writer.close()
        return status, body

    async def _open(self):
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                           limit=MAX_ANSWER)
        except (OSError, ssl.SSLError) as err:
            raise WebhookError(f"cannot connect to {self.host}:{self.port}: {err}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    @staticmethod
    async def _answer(reader):
        buffer = bytearray()
        while True:
            try:
                head = parse_response_head(buffer)
            except HeadError as err:
                raise WebhookError(f"bad response: {err}") from None
            if head is not None:
                break
            data = await reader.read(65536)
            if not data:
                raise WebhookError("connection closed before a response")
            buffer += data
            if len(buffer) > MAX_ANSWER:
                raise WebhookError("response head too long")
        del buffer[:head.head_end]
        body_framing = forward.response_body(head, "POST")
        body = bytearray()
        while not body_framing.done:
            if not buffer:
                data = await reader.read(65536)
                if not data:
                    if isinstance(body_framing, forward.UntilClose):
                        break
                    raise WebhookError("connection closed in the middle of a response")
                buffer += data
            try:
                taken = body_framing.feed(buffer)
            except HeadError as err:
                raise WebhookError(f"bad response body: {err}") from None
            body += buffer[:taken]
            del buffer[:taken]
            if len(body) > MAX_ANSWER:
                raise WebhookError("response too long")
        keep = head.keep_alive and not buffer and not isinstance(body_framing, forward.UntilClose)
        return head.status, bytes(body), keep

    def close(self):
        for connection in self._idle:
            connection.writer.close()
        self._idle = []


class Webhooks:
    """The configured webhook: the event queue and its senders, and the access-request hook."""

    def __init__(self, block, log, metrics, loop=None):
        self.loop = loop or asyncio.get_running_loop()
        self.log, self.metrics = log, metrics
        self.client = Client(block["url"], block["tls_verify"] is not False, block["ca_file"])
        self.source = block["hostid"] or socket.gethostname()
        self.boot_id = os.urandom(6).hex()
        self.timeout = block["timeout"] or 5.0
        self.max_queue = block["max_queue"] or 10000
        self.events = frozenset(block["events"] or ACTIONS)
        self.ping_interval = block["ping_interval"] if block["ping_interval"] is not None else 120.0
        access = block["access_request"] or {}
        self.access_enabled = bool(access.get("enabled"))
        self.access_roles = frozenset(access.get("roles") or ())
        self.access_timeout = access.get("timeout") or 1.0
        self.fail_closed = bool(access.get("fail_closed"))
        self.cache_ttl = access.get("cache_ttl") if access.get("cache_ttl") is not None else 60.0
        self._cache = {}  # (role, host) -> (accepted, answer, expires)
        self._queue = deque()
        self._wake = asyncio.Event()
        self._neighbors = set()
        self._reported_drop = 0.0
        self.dropped = 0
        self._tasks = [self.loop.create_task(self._send_events()) for _ in range(SENDERS)]
        if "ping" in self.events and self.ping_interval:
            self._tasks.append(self.loop.create_task(self._ping()))

    def event_id(self, connection_id):
        return f"Proxy-{self.boot_id}-OID-{connection_id}"

    # --- events (never blocking) -------------------------------------------------------------

    def emit(self, action, connection_id, details):
        if action not in self.events:
            return
        if len(self._queue) >= self.max_queue:
            self._drop("queue full")
            return
        self._queue.append({"action": action, "id": self.event_id(connection_id), "source": self.source,
                            "type": "proxy", "details": details})
        self._wake.set()

    def neighbor(self, address):
        """A client address: announced the first time it is seen."""
        ip = address[0]
        if ip in self._neighbors or "neighbor" not in self.events:
            return
        if len(self._neighbors) >= MAX_NEIGHBORS:
            self._neighbors.clear()  # bounded memory: an address may be announced again later
        self._neighbors.add(ip)
        self.emit("neighbor", ip, {"address": ip, "state": "new"})

    def _drop(self, why):
        self.dropped += 1
        self.metrics.count_locally("webhook.dropped")
        now = time.monotonic()
        if now - self._reported_drop >= 60:
            self._reported_drop = now
            self.log.warning("webhook events dropped", {"error": why, "dropped_total": self.dropped})

    async def _send_events(self):
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            envelope = self._queue.popleft()
            payload = json.dumps(envelope, separators=(",", ":"), default=str).encode()
            delay = 0.1
            for attempt in range(RETRIES + 1):
                try:
                    status, _ = await asyncio.wait_for(self.client.post(payload), self.timeout)
                except (WebhookError, asyncio.TimeoutError) as err:
                    status, error = None, str(err) or "timed out"
                else:
                    error = f"receiver answered {status}"
                    if status < 500:
                        break
                if attempt < RETRIES:
                    await asyncio.sleep(delay)
                    delay *= 4
            if status is None or status >= 400:
                self._drop(error)
            else:
                self.metrics.count_locally("webhook.sent")

    async def _ping(self):
        while True:
            self.emit("ping", "ping", {"time": time.time()})
            await asyncio.sleep(self.ping_interval)

    # --- access-request (synchronous) ----------------------------------------------------------

    def wants_access_request(self, role):
        return self.access_enabled and (not self.access_roles or role in self.access_roles)

    def cached_answer(self, role, host):
        """(accepted, answer) when a fresh answer for (role, host) is cached, else None."""
        found = self._cache.get((role, host))
        if found is not None and found[2] > time.monotonic():
            self.metrics.count_locally("webhook.access_request.cache_hits")
            return found[0], found[1]
        return None

    async def access_request(self, role, host, port, client, policy, connection_id):
        """(accepted, answer text for connection-info, error or None)."""
        self.metrics.count_locally("webhook.access_request.requests")
        details = {"policy": policy, "session": self.event_id(connection_id), "role": role, "host": host,
                   "port": port, "client": client}
        payload = json.dumps({"action": "access-request", "id": self.event_id(connection_id),
                              "source": self.source, "type": "proxy", "details": details},
                             separators=(",", ":")).encode()
        error = None
        answer = None
        try:
            status, body = await asyncio.wait_for(self.client.post(payload), self.access_timeout)
            answer = body.decode("utf-8", "replace")
            verdict = json.loads(body).get("access-response") if 200 <= status < 300 else None
            if verdict not in ("accept", "reject"):
                error = f"unusable answer (status {status})"
        except asyncio.TimeoutError:
            verdict, error = None, "timed out"
            self.metrics.count_locally("webhook.access_request.timeouts")
        except (WebhookError, ValueError, AttributeError) as err:
            verdict, error = None, str(err) or type(err).__name__
            self.metrics.count_locally("webhook.access_request.errors")
        accepted = verdict == "accept" or (verdict is None and not self.fail_closed)
        self.metrics.count_locally("webhook.access_request.accepts" if accepted else "webhook.access_request.rejects")
        if verdict is not None and self.cache_ttl:
            self._cache[(role, host)] = (accepted, answer, time.monotonic() + self.cache_ttl)
            if len(self._cache) > 100_000:
                self._cache.clear()
        return accepted, answer, error

    async def drain(self, seconds):
        """At exit: let queued events go out, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def close(self):
        for task in self._tasks:
            task.cancel()
        self.client.close()
