"""The load generator of ``fastfog bench``: raw non-blocking sockets driven by loop callbacks.

Each workload runs closed-loop: ``concurrency`` slots, each starting its next
transaction when the last one ends, until the deadline. A transaction is a
small object whose methods the loop calls when its socket is ready; there is
no coroutine, future or transport per connection, so one load process drives
far more traffic than the proxy under test can take (``fastfog bench`` checks
that with the direct baseline). Several processes split the slots when one is
not enough.

Results are plain dicts (counts, errors, a latency histogram) so the parent
can merge them across processes. This is the pure-Python twin of the compiled
engine (``_engine.pyx``), which ``fastfog bench`` uses when it is built: the
same workloads and the same results.
"""

import asyncio
import errno
import socket
import ssl
import time

from fastfog.bench import servers

READ_SIZE = 262144


def _family(address):
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def connect_head(host, port):
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


class Latencies:
    """A latency histogram: 1 µs buckets below 10 ms, 100 µs buckets up to 10 s (slower ones in
    the last). ``counts`` is {bucket: count}, plain data that adds up across processes; the
    compiled engine (``_engine.pyx``) fills the same buckets."""

    FINE_US, COARSE_US, BUCKETS = 10_000, 100, 110_000

    def __init__(self, counts=None):
        self.counts = dict(counts or {})

    @classmethod
    def bucket(cls, seconds):
        return cls.bucket_ns(round(seconds * 1e9))

    @classmethod
    def bucket_ns(cls, ns):
        us = max(ns, 0) // 1000
        if us < cls.FINE_US:
            return us
        return min(cls.FINE_US + (us - cls.FINE_US) // cls.COARSE_US, cls.BUCKETS - 1)

    @classmethod
    def seconds(cls, bucket):
        """The middle of a bucket."""
        if bucket < cls.FINE_US:
            return (bucket + 0.5) / 1e6
        return (cls.FINE_US + (bucket - cls.FINE_US + 0.5) * cls.COARSE_US) / 1e6

    def record(self, seconds):
        bucket = self.bucket(seconds)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1

    def add(self, counts):
        for bucket, count in counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count

    def percentile(self, fraction):
        """Seconds, or None when nothing was measured."""
        total = sum(self.counts.values())
        if not total:
            return None
        rank, seen = min(total - 1, int(fraction * total)), 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen > rank:
                return self.seconds(bucket)
        return None


class Tally:
    """What one load process saw: completed transactions, their latencies, errors by kind."""

    def __init__(self):
        self.done = 0
        self.latencies = Latencies()
        self.errors = {}
        self.bytes_up = self.bytes_down = 0
        self.seconds_up = self.seconds_down = 0.0
        self.resumed = 0  # TLS handshakes that resumed a session

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self):
        found = dict(self.__dict__)
        found["latency_counts"] = found.pop("latencies").counts
        return found


class _Dial:
    """Connect without blocking, then ``self.connected()``; failing and closing: shared by every
    transaction kind."""

    __slots__ = ()

    def fail(self, kind):
        self._close()
        self.work.tally.error(kind)
        self.work.next()

    def _close(self):
        self.work.loop.remove_reader(self.fd)
        self.work.loop.remove_writer(self.fd)
        self.sock.close()

    def _receive(self):
        """What the socket has: bytes (b"" at its end), or None (nothing yet, or it failed)."""
        try:
            return self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as err:
            self.fail(f"recv: {errno.errorcode.get(err.errno, err.errno)}")
            return None

    def dial(self):
        self.sock = sock = socket.socket(_family(self.work.target), socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.fileno()
        err = sock.connect_ex(self.work.target)
        if err not in (0, errno.EINPROGRESS):
            self.fail(f"connect: {errno.errorcode.get(err, err)}")
            return
        self.work.loop.add_writer(self.fd, self._writable)

    def _writable(self):
        self.work.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(f"connect: {errno.errorcode.get(err, err)}")
            return
        self.connected()


class _Tunnel(_Dial):
    """One ``connect`` transaction: dial, CONNECT (unless direct), send the request, read the
    reply until the origin closes, close."""

    __slots__ = ("work", "sock", "fd", "started", "head", "received", "buffer")

    def __init__(self, work, started):
        self.work = work
        self.started = started  # now, or (open loop) when it was scheduled to start
        self.received = 0
        self.buffer = b""
        self.dial()

    def connected(self):
        work = self.work
        self.head = work.head is not None
        self.sock.send(work.head if self.head else work.request)
        work.loop.add_reader(self.fd, self._readable)

    def _readable(self):
        data = self._receive()
        if data is None:
            return
        if not data:
            if self.head or self.received < self.work.reply_size:
                self.fail("closed early")
            else:
                self.finish()
            return
        if self.head:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                self.fail("proxy answered " + self.buffer[:12].decode("latin-1"))
                return
            self.head = False
            self.received = len(self.buffer) - end - 4
            self.sock.send(self.work.request)
        else:
            self.received += len(data)

    def finish(self):
        self._close()
        work = self.work
        work.tally.done += 1
        work.tally.latencies.record(time.perf_counter() - self.started)
        work.next()



class _TlsTunnel(_Tunnel):
    """One ``connect-tls`` transaction: dial, a TLS handshake with a client certificate (resuming
    the last session when the workload says so), then what ``connect`` does, inside TLS."""

    __slots__ = ("tls",)

    def connected(self):
        work = self.work
        self.sock = self.tls = work.tls.wrap_socket(self.sock, server_hostname=work.target[0],
                                                    do_handshake_on_connect=False,
                                                    session=work.session if work.resume else None)
        self._handshake()

    def _handshake(self):
        loop = self.work.loop
        loop.remove_reader(self.fd)
        loop.remove_writer(self.fd)
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            loop.add_reader(self.fd, self._handshake)
            return
        except ssl.SSLWantWriteError:
            loop.add_writer(self.fd, self._handshake)
            return
        except (ssl.SSLError, OSError) as err:
            self.fail(f"handshake: {getattr(err, 'reason', None) or err}")
            return
        if self.tls.session_reused:
            self.work.tally.resumed += 1
        super().connected()

    def _receive(self):
        """Decrypted bytes (b"" at the end of the stream), or None (nothing yet, or it failed);
        what OpenSSL already holds is taken too, since no readiness would announce it."""
        chunks = []
        while True:
            try:
                chunk = self.tls.recv(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""
            except (ssl.SSLError, OSError) as err:
                self.fail(f"recv: {getattr(err, 'reason', None) or err}")
                return None
            chunks.append(chunk)
            if not chunk:
                break
        if not chunks:
            return None
        if chunks[-1] == b"" and len(chunks) > 1:  # bytes, then the end: the socket stays readable at its
            chunks.pop()                            # end, so the end is read again next time
        work = self.work
        if work.resume and self.tls.session is not None:
            work.session = self.tls.session
        return b"".join(chunks)


class _KeepAlive(_Dial):
    """One ``http`` slot: a keep-alive connection sending GETs one after another."""

    __slots__ = ("work", "sock", "fd", "started", "buffer", "expected")

    def __init__(self, work, started):
        self.work = work
        self.buffer = b""
        self.expected = -1
        self.dial()

    def connected(self):
        self.work.loop.add_reader(self.fd, self._readable)
        self._send()

    def _send(self):
        self.started = time.perf_counter()
        self.sock.send(self.work.request)

    def _readable(self):
        data = self._receive()
        if data is None:
            return
        if not data:
            self.fail("closed early")
            return
        self.buffer += data
        if self.expected < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            if not head.startswith(b"http/1.1 200"):
                self.fail("answered " + self.buffer[:12].decode("latin-1"))
                return
            at = head.find(b"content-length:")
            if at < 0:
                self.fail("no content-length")
                return
            self.expected = end + 4 + int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
        if len(self.buffer) >= self.expected:
            work = self.work
            work.tally.done += 1
            work.tally.latencies.record(time.perf_counter() - self.started)
            self.buffer = self.buffer[self.expected:]
            self.expected = -1
            if work.running():
                self._send()
            else:
                self._close()
                work.next()



class Workload:
    """Runs ``concurrency`` slots of ``kind`` (_Tunnel or _KeepAlive) until ``seconds`` pass.

    Closed loop by default (each slot starts its next transaction when one ends); with
    ``rate``, open loop: a new transaction every 1/rate seconds, however long the others take,
    so a slow proxy shows as latency rather than as fewer requests, each latency counted from
    the transaction's scheduled start (a late loop does not hide the wait).
    """

    def __init__(self, loop, kind, target, concurrency, seconds, *, head=None, request=b"", reply_size=0,
                 rate=None, tls=None, resume=False):
        self.loop, self.kind, self.target = loop, kind, target
        self.head, self.request, self.reply_size = head, request, reply_size
        self.tally = Tally()
        self.deadline = time.perf_counter() + seconds
        self.active = 0
        self.concurrency = concurrency
        self.rate = rate
        self.finished = loop.create_future()
        self.tls, self.resume, self.session = tls, resume, None

    def start(self):
        if self.rate:
            self._next = time.perf_counter()
            self._tick()
            return
        for _ in range(self.concurrency):
            self._open()

    def _tick(self):
        if not self.running():
            self._maybe_finish()
            return
        now = time.perf_counter()
        while self._next <= now:
            self._open(self._next)
            self._next += 1 / self.rate
        self.loop.call_later(self._next - now, self._tick)

    def running(self):
        return time.perf_counter() < self.deadline

    def _open(self, started=None):
        self.active += 1
        self.kind(self, time.perf_counter() if started is None else started)

    def next(self):
        """A transaction ended: in a closed loop its slot opens the next one; finish when time is up."""
        self.active -= 1
        if self.rate is None and self.running():
            self._open()
        else:
            self._maybe_finish()

    def _maybe_finish(self):
        if self.active == 0 and not self.running() and not self.finished.done():
            self.finished.set_result(None)


async def run_connect(target, origin, concurrency, seconds, request_size, reply_size, rate=None, by_name=None):
    """Tunnels through the proxy at ``target`` to ``origin`` (or straight to origin when target
    is None); CONNECT names ``by_name`` instead of origin's address when given. ``rate``: open
    loop at that many tunnels a second."""
    loop = asyncio.get_running_loop()
    head = None if target is None else connect_head(by_name or origin[0], origin[1])
    work = Workload(loop, _Tunnel, target or origin, concurrency, seconds,
                    head=head, request=b"q" * request_size, reply_size=reply_size, rate=rate)
    work.start()
    await work.finished
    return work.tally


def client_tls(ca_file, client_file):
    """A TLS client context with the certificate (and key) in ``client_file``, trusting ``ca_file``."""
    tls = ssl.create_default_context(cafile=ca_file)
    tls.load_cert_chain(client_file)
    return tls


async def run_connect_tls(target, origin, concurrency, seconds, request_size, reply_size, ca_file, client_file,
                          resume):
    """``connect`` through the proxy at ``target`` over TLS with the client certificate in
    ``client_file`` (a PEM with its key), trusting ``ca_file``; ``resume``: each handshake offers
    the last session it got."""
    loop = asyncio.get_running_loop()
    work = Workload(loop, _TlsTunnel, target, concurrency, seconds, head=connect_head(*origin),
                    request=b"q" * request_size, reply_size=reply_size, tls=client_tls(ca_file, client_file),
                    resume=resume)
    work.start()
    await work.finished
    return work.tally


def http_request(target, origin):
    """The ``http`` workload's GET: absolute-form through a proxy, origin-form straight to it."""
    host = f"[{origin[0]}]:{origin[1]}" if ":" in origin[0] else f"{origin[0]}:{origin[1]}"
    path = f"http://{host}/" if target is not None else "/"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fastfog-bench\r\n\r\n".encode()


async def run_http(target, origin, concurrency, seconds):
    """Keep-alive GETs through the proxy at ``target`` (absolute URI), or straight to origin."""
    loop = asyncio.get_running_loop()
    work = Workload(loop, _KeepAlive, target or origin, concurrency, seconds, request=http_request(target, origin))
    work.start()
    await work.finished
    return work.tally


def run_bulk(target, origin, size):
    """One tunnel moving ``size`` bytes each way at once (blocking sockets in two threads)."""
    tally = Tally()
    try:
        with socket.create_connection(target or origin) as sock:
            if target is not None:
                sock.sendall(connect_head(*origin))
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(1)  # byte by byte: nothing after the head may be taken
                    if not data:
                        raise ConnectionError("proxy closed")
                    head += data
                if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    tally.error("proxy answered " + head[:12].decode("latin-1"))
                    return tally
            received, seconds_up, seconds_down = servers.move_bulk(sock, size)
    except OSError as err:
        tally.error(type(err).__name__)
        return tally
    tally.bytes_up, tally.bytes_down = size, received
    tally.seconds_up, tally.seconds_down = seconds_up, seconds_down
    if received < size:
        tally.error("short download")
    else:
        tally.done = 1
    return tally


def open_idle(target, origin, count, timeout=10, tls=None):
    """Open ``count`` tunnels through ``target`` and leave them idle: (sockets, errors by kind).
    ``tls``: a client context, to open them through a TLS listener (the tunnels are then TLS
    sockets, their handshakes done)."""
    sockets, tally = [], Tally()
    for _ in range(count):
        try:
            sock = socket.create_connection(target, timeout=timeout)
        except OSError as err:
            tally.error(f"connect: {type(err).__name__}")
            continue
        try:
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=target[0])
            sock.sendall(connect_head(*origin))
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("closed")
                head += data
            if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                raise ConnectionError("proxy answered " + head[:12].decode("latin-1"))
            sockets.append(sock)
        except OSError as err:
            tally.error(str(err) if isinstance(err, ConnectionError) else type(err).__name__)
            sock.close()
    return sockets, tally.errors


def still_open(sock):
    """True when neither end of stream nor an error is waiting on an idle tunnel's socket (a TLS
    one's too: nothing is sent to an idle tunnel, so whatever arrives is its end)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return True
    except OSError:  # ssl.SSLError included
        return False
