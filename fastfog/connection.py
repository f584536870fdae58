"""A client connection's requests, driven by event-loop callbacks rather than a coroutine.

Most of a proxied connection's life is a short fixed sequence: read a head,
decide, resolve (usually from the cache), classify, dial, answer. Each step
here is a plain method called by the loop when its socket is ready or its
lookup is done; nothing allocates a task or a future on that path, and each
system call is tried before the loop is asked to wait. Rarer work (forwarding
a request's body, chaining through another proxy, lingering over a final
answer) runs as coroutines that these callbacks start.

- ``hotpaths.ClientConnection`` (compiled in hot/client.pxi, its twin in
  reference/client.py) reads request heads (``read_header_timeout`` each) and
  hands each to the proxy: CONNECT, forwarding, or an answer of its own.
- ``Opening`` decides, resolves, classifies and dials for one request, then
  calls ``done(upstream, answer)``: an ``Upstream``, or the bytes to answer
  the client with (a deny or a failure, already logged).
"""

import _socket
import errno
import os
import socket
import ssl
import time


from fastfog import hotpaths, proxyproto, reasons, sockio
from fastfog.acl import AUTH_REQUIRED, Decision
from fastfog.admission import Admitted, BadRequest, address_denial
from fastfog.dns import ResolveError
from fastfog.hotpaths import EdgeWatch
from fastfog.tls import subject_fields

READ_SIZE = 65536
DIAL_ERRORS = {errno.ETIMEDOUT: "timeout", errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset",
               errno.ECONNABORTED: "aborted"}  # the cn.atpt.connect.err types
MAX_HEAD_SIZE = 65536


def peer_text(address):
    """Go's form of a socket address: ``ip:port``, ``[v6]:port``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Upstream:
    """A dialed upstream connection and what the decision record says about it."""

    __slots__ = ("sock", "watch", "decision", "lookup_ms", "connect_ms", "address", "via", "port", "reused",
                 "role", "requested", "names", "add_headers", "poolable")

    def __init__(self, sock, watch, decision, lookup_ms, connect_ms, address, via, port, reused, role, requested,
                 names):
        """``watch``: the socket's EdgeWatch, when it has one (a tunnel's splice relay takes the
        socket over from it; see ``unwatch`` for other hands); ``requested``: the host the client asked for, canonical
        (classify.Host); ``names``: the socket's local and remote addresses as the records write them."""
        self.sock, self.watch, self.decision, self.address, self.via = sock, watch, decision, address, via
        self.lookup_ms, self.connect_ms = lookup_ms, connect_ms
        self.port, self.reused, self.role, self.requested = port, reused, role, requested
        self.names = names
        self.add_headers = ()  # (name, value) pairs set on the request (an intercepted one's)
        self.poolable = True  # False for a TLS connection of fastfog's own (intercepted requests)

    def unwatch(self):
        """The socket goes to hands that do not use the proxy's poller (a TLS relay, a chained
        proxy's transport, the SNI check): take it off."""
        if self.watch is not None:
            self.watch.remove()
            self.watch = None

    def close(self):
        if self.watch is not None:
            self.watch.forget()
        self.sock.close()


def x509_fields(peer_certificate):
    """What every decision record of a connection says of its client certificate (once per
    connection): ``inbound_remote_x509_cn`` and, when it has one, ``inbound_remote_x509_ou``."""
    if peer_certificate is None:
        return None
    found = {"inbound_remote_x509_cn": next(iter(subject_fields(peer_certificate, "commonName")), "")}
    units = subject_fields(peer_certificate, "organizationalUnitName")
    if units:
        found["inbound_remote_x509_ou"] = units[0]
    return found


def body_unread(head):
    """Whether answering ``head`` without forwarding it must close the connection: a body of
    its is still unread, or its client asked for the close."""
    return bool(head.content_length) or head.chunked or not head.keep_alive


def dial_failure(error, address, port):
    """A failed dial's answer status and message (errno ``error``, or None: it timed out)."""
    target = peer_text((address, port))
    if error is None:
        return 504, f"Timed out connecting to remote host: dial tcp {target}: i/o timeout"
    return 502, f"Failed to connect to remote host: dial tcp {target}: connect: {os.strerror(error).lower()}"


def count_dial(proxy, error, dial_started):
    """A dial's metrics: cn.atpt.total, cn.atpt.connect.err, and (with time_connect) its time."""
    metrics = proxy.metrics
    metrics.incr("cn.atpt.total", (("success", "false" if error else "true"),))
    if error:
        metrics.incr("cn.atpt.connect.err", (("type", DIAL_ERRORS.get(error, "unknown")),))
    elif proxy.config.time_connect:
        metrics.observe("cn.atpt.connect.time", (time.monotonic() - dial_started) * 1000)


def unexpected_failure(proxy, head, fields, decision, lookup_ms, err):
    """The 500 answer (logged) for a bug met while opening a request's upstream."""
    return proxy.records.failed(head, fields, decision or Decision(False, "unexpected error"), lookup_ms, 500,
                                f"{type(err).__name__}: {err}", True)


def guarded(step):
    """A loop callback that must never leave its connection hanging: an unexpected error is
    logged, answered with 500 and the connection closed, and every other client is served on."""
    def run(self, *args):
        try:
            return step(self, *args)
        except Exception as err:  # a bug: contain it to this one connection
            self._unexpected(err)
    run.__name__, run.__doc__ = step.__name__, step.__doc__
    return run


class ClientStep:
    """A step that owns a client socket for a while (a PROXY header, the SNI check): it waits for
    the socket to be readable and for a deadline, and is tracked as a connection meanwhile, so a
    shutdown closes it. ``_stop()`` undoes all three."""

    __slots__ = ("proxy", "sock", "fd", "_deadline", "_ready")

    def __init__(self, proxy, sock):
        self.proxy, self.sock, self.fd = proxy, sock, sock.fileno()
        self._deadline = hotpaths.Deadline(proxy.loop)
        self._ready = sockio.LevelWatch(proxy.loop, self.fd)
        proxy.connections.add(self)

    def _start(self, seconds, on_timeout, step):
        self._deadline.set(seconds, on_timeout)
        step()

    def _read_when_ready(self, step):
        self._ready.wait_read(step)

    def _write_when_ready(self, step):
        self._ready.wait_write(step)

    def _stop(self):
        self._ready.cancel()
        self._deadline.cancel()
        self.proxy.connections.discard(self)


class PreludeStep(ClientStep):
    """What comes before a client's first request (a PROXY header, the TLS handshake): bounded by
    read_header_timeout (60s when that is off); a failure is logged with the client's address
    (``FAILURE`` names the record, ``TIMEOUT`` the error) and closes only this connection."""

    __slots__ = ("address",)

    FAILURE = TIMEOUT = ""

    def start(self):
        """Begin: each subclass's ``_step`` reads on from wherever it stopped."""
        self._start(self.proxy.config.read_header_timeout or 60.0, self._timed_out, self._step)

    def _timed_out(self):
        self._fail(self.TIMEOUT)

    def _fail(self, error):
        self.proxy.log.warning(self.FAILURE, {"inbound_remote_addr": peer_text(self.address), "error": error})
        self.close()

    def close(self):
        self._stop()
        self.sock.close()


class ProxyHeader(PreludeStep):
    """``--proxy-protocol``: read a PROXY v1/v2 header (see proxyproto.py) with MSG_PEEK, take
    exactly its bytes, then go on with the client address it carries; bounded by
    read_header_timeout. A malformed header is logged and closes only this connection."""

    __slots__ = ("_then",)

    FAILURE, TIMEOUT = "bad PROXY protocol header", "PROXY protocol header did not arrive in time"
    PEEK = 536  # a v2 header with both IPv6 addresses and a few TLVs; longer ones are peeked again

    def __init__(self, proxy, sock, address, then):
        """``then(sock, address)`` continues with the client's address."""
        super().__init__(proxy, sock)
        self.address, self._then = address, then

    def _step(self):
        size = self.PEEK
        try:
            while True:
                data = self.sock.recv(size, socket.MSG_PEEK)
                if not data:
                    self.close()
                    return
                found = proxyproto.parse(data)
                if found is None and len(data) == size and data[:12] == proxyproto.V2_SIGNATURE:
                    size = proxyproto.V2_HEADER + int.from_bytes(data[14:16], "big")
                    continue
                break
        except BlockingIOError:
            found = None
        except ValueError as err:
            self._fail(str(err))
            return
        except OSError:
            self.close()
            return
        if found is None:  # not all of it yet
            self._read_when_ready(self._step)
            return
        length, carried = found
        try:
            if length:
                self.sock.recv(length)  # exactly the header: the peek showed it is all there
        except OSError:
            self.close()
            return
        self._stop()
        self._then(self.sock, carried or self.address)



class Handshake(PreludeStep):
    """A TLS client's handshake (with the proxy's current ServerTLS), driven by loop callbacks and
    bounded by read_header_timeout (60s when that is off); then the revocation check, then its
    ClientConnection. A failure is logged with the client's address and closes only this one."""

    __slots__ = ("_then",)

    FAILURE, TIMEOUT = "TLS handshake error", "handshake did not finish in time"

    def __init__(self, proxy, sock, address, context=None, then=None):
        """``context``: the listener's (the default), or an intercepted tunnel's leaf for its host,
        whose handshake then goes on with ``then(tls_socket)`` instead."""
        context = context or proxy.tls.context
        super().__init__(proxy, context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False))
        self.address, self._then = address, then

    def _step(self):
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._read_when_ready(self._step)
        except ssl.SSLWantWriteError:
            self._write_when_ready(self._step)
        except (ssl.SSLError, OSError) as err:
            self._fail(getattr(err, "reason", None) or str(err))
        except Exception as err:  # a bug: contain it to this one connection
            self._fail(f"{type(err).__name__}: {err}")
        else:
            self._established()

    def _established(self):
        proxy, sock = self.proxy, self.sock
        self._stop()
        if self._then is not None:
            self._then(sock)
            return
        try:
            revoked, peer_certificate = proxy.tls.client_certificate(sock)
        except ValueError as err:
            self._fail(f"unreadable client certificate: {err}")
            return
        if revoked:
            self._fail("client certificate revoked")
            return
        hotpaths.ClientConnection(proxy, sock, self.address, peer_certificate).read_head()


class Opening:
    """Decide, resolve, classify and dial for one request, with loop callbacks."""

    __slots__ = ("proxy", "conn", "head", "fields", "connect", "done", "close", "decision", "via", "port",
                 "lookup_started", "lookup_ms", "address", "upstream", "watch", "dial_started", "_deadline", "reuse",
                 "role", "named", "requested", "body_close")

    def __init__(self, proxy, conn, head, fields, connect, done, reuse=False):
        """``connect``: a CONNECT request (its deny answers close the connection); otherwise a forwarded
        request, whose connection stays usable after a deny unless a body is still unread.
        ``reuse``: an idle pooled connection to the picked address may serve instead of a new one."""
        self.proxy, self.conn, self.head, self.fields = proxy, conn, head, fields
        self.connect, self.done = connect, done
        self.reuse = reuse
        self.body_close = body_unread(head)
        self.close = connect or self.body_close
        self.decision = self.via = self.address = self.upstream = self.watch = self._deadline = self.role = None
        self.lookup_ms = 0
        self.named = False  # a host name was looked up (not an IP literal)

    @guarded
    def start(self):
        self._admitted(self.proxy.admission.admit(self.conn, self.head, self.connect))

    @guarded
    def admitted(self, verdict):
        """Go on from admission's ``verdict``, already reached (by the compiled lane of
        hot/opening.pxi, which hands over every request it does not carry through itself)."""
        self._admitted(verdict)

    def _admitted(self, verdict):
        proxy, fields = self.proxy, self.fields
        if type(verdict) is not Admitted:
            self._refused(verdict)
            return
        proxy.records.decided(fields, verdict)
        self.role, self.decision, self.requested = verdict.role, verdict.decision, verdict.requested
        self.via, self.port = verdict.via, verdict.port
        host = verdict.host
        self.lookup_started = time.monotonic()
        if host.address is not None:
            self._resolved((host.name,))
            return
        metrics = proxy.metrics
        metrics.incr("resolver.attempts_total")  # every lookup, a cache hit too (as dashboards expect)
        self.named = True
        try:
            addresses = proxy.resolver.cached(host.name)
        except ResolveError as err:
            self._resolve_failed(err)
            return
        if addresses is not None:
            self._resolved(addresses)
            return
        metrics.incr("fastfog.dns.cache.misses")  # (the hits are the attempts less these: see metrics.py)
        proxy.spawn(proxy.resolver.resolve(host.name)).add_done_callback(self._lookup_done)

    def _refused(self, verdict):
        """Admission said no (a Refused or a BadRequest verdict): log it and answer."""
        proxy, fields = self.proxy, self.fields
        if type(verdict) is BadRequest:
            self.done(None, proxy.records.bad_request(fields, verdict.message), True)
            return
        self.role = verdict.role if verdict.decision is not None else None  # counted: release it
        # Wrong credentials leave the connection open (a body permitting) for a retry with
        # better ones; a bad X-Upstream-Https-Proxy closes it.
        close = self.body_close if verdict.reason is AUTH_REQUIRED else self.close
        answer = proxy.records.refused(self.head, fields, verdict, self.connect, close)
        self._answer(answer, close or isinstance(verdict.reason, BadRequest))

    @guarded
    def redial(self, stale):
        """A pooled connection (``stale``, an Upstream) was found closed when used: dial the
        address it was decided, classified and admitted for again, and nothing more."""
        self.decision, self.lookup_ms, self.address, self.port = (stale.decision, stale.lookup_ms, stale.address,
                                                                  stale.port)
        self.via, self.role, self.requested = stale.via, stale.role, stale.requested
        self.reuse = False
        self._dial()

    @guarded
    def _lookup_done(self, task):
        if task.cancelled():
            self._abandon()
            return
        error = task.exception()
        if isinstance(error, ResolveError):
            self._resolve_failed(error)
        elif error is not None:
            self._answer(self.proxy.records.failed(self.head, self.fields, self.decision, 0, 500, str(error), True),
                         True)
        else:
            self._resolved(task.result())

    def _resolve_failed(self, err):
        elapsed_ms = (time.monotonic() - self.lookup_started) * 1000
        self.lookup_ms = int(elapsed_ms)
        self.proxy.metrics.incr("resolver.errors_total")
        self.proxy.metrics.observe("resolver.lookup_time", elapsed_ms)
        status = 504 if err.timeout else 502
        message = (f"Timed out connecting to remote host: {err}" if err.timeout
                   else f"Failed to resolve remote hostname: {err}")
        self._answer(self.proxy.records.failed(self.head, self.fields, self.decision, self.lookup_ms, status, message,
                                               self.close))

    def _resolved(self, addresses):  # called by start and _lookup_done, which contain errors
        proxy = self.proxy
        elapsed_ms = (time.monotonic() - self.lookup_started) * 1000
        self.lookup_ms = int(elapsed_ms)
        if self.conn.closed:
            self._abandon()
            return
        if self.named:
            proxy.metrics.observe("resolver.lookup_time", elapsed_ms)
        pick = proxy.policy.pick(addresses, self.port)
        proxy.metrics.incr(pick.address_class.metric)
        if not pick.allowed:
            proxy.metrics.incr("resolver.errors_total")  # as Smokescreen: an address deny is a resolver error
            self._answer(proxy.records.denied(self.head, self.fields, address_denial(self.decision, pick),
                                              self.lookup_ms, self.connect, self.close))
            return
        self.address = pick.address
        hooks = proxy.records.webhooks
        if hooks is not None and self.via is None and hooks.wants_access_request(self.role):
            self._ask_access(hooks)
            return
        self._dial()

    def _ask_access(self, hooks):
        """The access-request webhook decides first (its cached answer, or a call)."""
        host = self.head.host
        cached = hooks.cached_answer(self.role, host)
        if cached is not None:
            self._access_answered(cached[0], cached[1], None)
            return
        policy = self.decision.rule or "default"
        call = hooks.access_request(self.role, host, self.port, self.fields["inbound_remote_addr"], policy,
                                    self.fields["id"])
        self.proxy.spawn(call).add_done_callback(self._access_done)

    @guarded
    def _access_done(self, task):
        if task.cancelled():
            self._abandon()
            return
        self._access_answered(*task.result())

    def _access_answered(self, accepted, answer, error):
        proxy = self.proxy
        self.fields["access_response"] = answer
        if self.conn.closed:
            self._abandon()
            return
        if not accepted:
            allowed = self.decision
            denial = Decision(False, reasons.REJECTED_BY_WEBHOOK, "deny", allowed.project, allowed.default_rule, True,
                              allowed.rule, reasons.CODE_ACCESS_REJECTED)
            if error is not None:
                self.fields["error"] = f"access-request: {error}"
            self._answer(proxy.records.denied(self.head, self.fields, denial, self.lookup_ms, self.connect, self.close))
            return
        self._dial()

    def _dial(self):
        proxy = self.proxy
        pooled = proxy.pool.take(self.address, self.port) if self.reuse else None
        if pooled is not None:
            self.upstream, self.watch, names = pooled
            self.dial_started = time.monotonic()
            self._dial_ended(0, names)
            return
        # Non-blocking from its creation: no separate ioctl to make it so.
        upstream = _socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET,
                                  socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proxy.keepalive.apply(upstream)
        self.upstream = upstream
        self.dial_started = time.monotonic()
        error = upstream.connect_ex((self.address, self.port))
        if error in (errno.EINPROGRESS, errno.EAGAIN):
            timeout = proxy.config.connect_timeout
            if timeout:
                self._deadline = hotpaths.Deadline(proxy.loop)
                self._deadline.set(timeout, self._dial_timed_out)
            # The connect's end is one edge (writable, or an error) on the proxy's own epoll
            # set, where a forwarded request's socket then stays for as long as it is open.
            self.watch = EdgeWatch(proxy.poller, upstream.fileno())
            self.watch.readable = False  # nothing can have arrived yet: wait for an edge that says so
            self.watch.wait_write(self._dialed)
        else:
            self._dial_ended(error)

    @guarded
    def _dialed(self):
        if self._deadline is not None:
            self._deadline.cancel()
        # Only an edge that said error or hang-up can carry a failed connect: ask for it then.
        error = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if self.watch.hung_up else 0
        self._dial_ended(error)

    def _dial_ended(self, error, pooled_names=None):
        """``pooled_names``: the names of a pooled connection taken instead of dialing."""
        proxy = self.proxy
        if pooled_names is None:
            count_dial(proxy, error, self.dial_started)
        if error:
            self._close_upstream()
            status, message = dial_failure(error, self.address, self.port)
            self._answer(proxy.records.failed(self.head, self.fields, self.decision, self.lookup_ms, status, message,
                                              self.close))
            return
        if self.conn.closed:
            self._close_upstream()
            self._abandon()
            return
        if self.watch is None and not self.connect:  # connected at once, without an edge
            self.watch = EdgeWatch(proxy.poller, self.upstream.fileno())
        # The remote end is the address dialed (canonical text already): no need to ask the kernel.
        names = pooled_names or (peer_text(self.upstream.getsockname()), peer_text((self.address, self.port)))
        self.fields["outbound_local_addr"], self.fields["outbound_remote_addr"] = names
        connect_ms = int((time.monotonic() - self.dial_started) * 1000)
        upstream = Upstream(self.upstream, self.watch, self.decision, self.lookup_ms, connect_ms, self.address,
                            self.via, self.port, pooled_names is not None, self.role, self.requested, names)
        self.role = None  # the caller releases it when the request is done
        self.done(upstream, None, False)

    @guarded
    def _dial_timed_out(self):
        proxy = self.proxy
        self._close_upstream()
        count_dial(proxy, errno.ETIMEDOUT, self.dial_started)
        status, message = dial_failure(None, self.address, self.port)
        self._answer(proxy.records.failed(self.head, self.fields, self.decision, self.lookup_ms, status, message,
                                          self.close))

    def _close_upstream(self):
        if self._deadline is not None:
            self._deadline.cancel()
        if self.watch is not None:
            self.watch.forget()
            self.watch = None
        self.upstream.close()

    def _answer(self, answer, close=None):
        self._release()
        self.done(None, answer, self.close if close is None else close)

    def _unexpected(self, err):
        if self.upstream is not None:
            self._close_upstream()
        self._release()
        self.done(None, unexpected_failure(self.proxy, self.head, self.fields, self.decision, self.lookup_ms, err),
                  True)

    def _abandon(self):
        """Nobody is left to answer (the client went away, or shutdown cancelled a lookup): just close."""
        self._release()
        self.done(None, None, True)

    def _release(self):
        """An admitted request that ends here stops counting against the concurrency limit."""
        if self.role is not None:
            self.proxy.limits.release(self.role)
            self.role = None
