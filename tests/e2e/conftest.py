"""Fixtures for end-to-end tests: stub DNS, origin servers and the proxy, inside the test namespace."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvloop

import netns
from fastfog import stubdns

DNS_PORT = 53
RECORDS = {
    "origin.test": [netns.ORIGIN],
    "origin6.test": [netns.ORIGIN6],
    "dual.test": [netns.ORIGIN, netns.ORIGIN6],
    "private.test": ["10.0.0.1"],
    "loopback.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["10.0.0.1", netns.ORIGIN],
    "proxy.test": [netns.PROXY],
    "upstream-proxy.test": [netns.UPSTREAM_PROXY],
    "private-proxy.test": ["10.0.0.2"],
    "servfail.test": stubdns.SERVFAIL,
    "silent.test": stubdns.SILENT,
    "slow-aaaa.test": [netns.ORIGIN, stubdns.SILENT_AAAA],
    "slow-a.test": [netns.ORIGIN6, stubdns.SILENT_A],
}


class Background:
    """An event loop in a daemon thread, for the servers the proxy talks to."""

    def __init__(self):
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout=10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class EchoOrigin(asyncio.Protocol):
    """Echoes what it gets; at end of stream answers ``<EOF>`` and closes (shows half-close works)."""

    def __init__(self, server):
        self.server = server

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data):
        self.server.received += len(data)
        self.transport.write(data)

    def eof_received(self):
        self.transport.write(b"<EOF>")
        self.transport.close()
        return True


class ThreadedOrigin:
    """A blocking listener whose accepting thread hands each connection to ``handle(conn)``."""

    def __init__(self, host, port):
        self.listener = socket.create_server((host, port))
        self.accepted = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.handle(conn)

    def handle(self, conn):
        self.accepted.append(conn)


class SilentOrigin(ThreadedOrigin):
    """Accepts and never reads: its socket buffers fill and the proxy must stop reading the client."""

    def close(self):
        self.listener.close()
        for conn in self.accepted:
            conn.close()


class OriginServer:
    """A TCP origin with connection counting."""

    def __init__(self, background, host, port, protocol):
        self.background = background
        self.host, self.port = host, port
        self.protocol = protocol
        self.connections = 0
        self.received = 0
        self.server = background.run(background.loop.create_server(lambda: protocol(self), host, port))

    def close(self):
        self.server.close()


@pytest.fixture(scope="session")
def background():
    worker = Background()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def dns(background):
    stub = background.run(stubdns.start(netns.DNS, DNS_PORT, RECORDS, ttl=60))
    yield stub
    background.loop.call_soon_threadsafe(stub.transport.close)


@pytest.fixture
def echo(background):
    servers = [OriginServer(background, host, 7, EchoOrigin) for host in (netns.ORIGIN, netns.ORIGIN6)]
    yield servers[0]
    for server in servers:
        background.loop.call_soon_threadsafe(server.close)


@pytest.fixture
def silent():
    server = SilentOrigin(netns.ORIGIN, 9)
    yield server
    server.close()


@pytest.fixture
def blackhole():
    """An address whose SYNs go unanswered: a backlog-0 listener with its queue already full."""
    listener = socket.socket()
    listener.bind((netns.BLACKHOLE, 443))
    listener.listen(0)
    filler = socket.create_connection((netns.BLACKHOLE, 443))
    yield (netns.BLACKHOLE, 443)
    filler.close()
    listener.close()


class ProxyProcess:
    """``fastfog serve`` as a subprocess; its stderr log lines are collected for assertions."""

    def __init__(self, args, env=None, preexec_fn=None):
        self.args = args
        self.process = subprocess.Popen([sys.executable, "-m", "fastfog", "serve", *args],
                                        stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                                        preexec_fn=preexec_fn)
        self.lines = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(20):
            self.stop()
            raise RuntimeError(f"fastfog serve did not start: {self.lines}")

    def _read(self):
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if '"msg":"listening"' in line or " msg=listening " in line:
                self._listening.set()

    def records(self, msg=None, wait_for=0, timeout=5):
        """Parsed JSON records (with ``msg``), waiting up to ``timeout`` for at least ``wait_for``."""
        deadline = time.monotonic() + timeout
        while True:
            found = []
            for line in list(self.lines):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if msg is None or record.get("msg") == msg:
                    found.append(record)
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode


@pytest.fixture
def start_proxy(dns, tmp_path):
    """Start ``fastfog serve`` on the proxy address with the stub resolver; extra flags and files as given."""
    started = []

    def start(*flags, config=None, acl=None, env=None, port=4750, preexec_fn=None):
        args = ["--listen-ip", netns.PROXY, "--listen-port", str(port),
                "--resolver-address", f"{netns.DNS}:{DNS_PORT}", *flags]
        if acl is not None:
            path = tmp_path / f"acl{len(started)}.yaml"
            path.write_text(acl)
            args += ["--egress-acl-file", str(path)]
        if config is not None:
            path = tmp_path / f"config{len(started)}.yaml"
            path.write_text(config)
            args += ["--config-file", str(path)]
        proxy = ProxyProcess(args, env, preexec_fn)
        proxy.address = (netns.PROXY, port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


class HttpOrigin:
    """An HTTP/1.1 origin on h11 (an independent implementation): it records every request it gets
    and answers by path: ``/hello``, ``/chunked``, ``/close`` (body ends at close), ``/empty`` (204),
    ``/echo`` (the request body back), ``/smokescreen-error`` (sets X-Smokescreen-Error)."""

    def __init__(self, background, host, port, ssl=None):
        """``ssl``: a server SSLContext, for an HTTPS origin."""
        self.background = background
        self.requests = []
        self.connections = 0
        self.writers = set()
        self.server = background.run(asyncio.start_server(self._serve, host, port, ssl=ssl))

    def drop_connections(self):
        """Close every open connection from the server side (as an idle timeout would)."""
        async def drop():
            for writer in list(self.writers):
                writer.close()
        self.background.run(drop())

    async def _serve(self, reader, writer):
        import h11

        self.connections += 1
        self.writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.SEND_BODY:
                        break
                    continue
                if isinstance(event, h11.Request):
                    request = {"method": event.method.decode(), "target": event.target.decode(),
                               "headers": [(n.decode(), v.decode()) for n, v in event.headers], "body": b""}
                elif isinstance(event, h11.Data):
                    request["body"] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.requests.append(request)
                    if request["target"] == "/hangup":
                        break  # closes without a byte of response
                    for outgoing in self._respond(request):
                        writer.write(conn.send(outgoing) or b"")
                        if isinstance(outgoing, h11.Data) and request["target"] == "/slow":
                            await writer.drain()
                            await asyncio.sleep(2)  # a response that trickles
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                else:
                    break
        except (h11.RemoteProtocolError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    @staticmethod
    def _respond(request):
        import h11

        path = request["target"].split("?")[0]
        if path == "/chunked":
            return [h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]),
                    h11.Data(data=b"chunk one, "), h11.Data(data=b"chunk two"), h11.EndOfMessage()]
        if path == "/close":
            return [h11.Response(status_code=200, headers=[("Connection", "close")]),
                    h11.Data(data=b"until the end"), h11.EndOfMessage()]
        if path == "/slow":
            return [h11.Response(status_code=200, headers=[("Content-Length", "10")]), h11.Data(data=b"12345"),
                    h11.Data(data=b"67890"), h11.EndOfMessage()]
        if path == "/empty":
            return [h11.Response(status_code=204, headers=[]), h11.EndOfMessage()]
        body = request["body"] if path == "/echo" else b"hello from the origin"
        headers = [("Content-Length", str(len(body))), ("Content-Type", "text/plain")]
        if path == "/smokescreen-error":
            headers.append(("X-Smokescreen-Error", "set by the origin"))
        if request["method"] == "HEAD":
            return [h11.Response(status_code=200, headers=headers), h11.EndOfMessage()]
        return [h11.Response(status_code=200, headers=headers), h11.Data(data=body), h11.EndOfMessage()]


@pytest.fixture
def http_origin(background):
    origin = HttpOrigin(background, netns.ORIGIN, 80)
    yield origin
    background.loop.call_soon_threadsafe(origin.server.close)


class InProcessProxy:
    """``fastfog.server.serve`` on the background loop of the test process itself."""

    def __init__(self, background, config):
        self.background = background
        read_end, self._write_end = os.pipe()
        self._reader = os.fdopen(read_end, "rb")
        self.stop_future = None
        self.address = None
        self.lines = []
        ready = threading.Event()

        async def run():
            from fastfog.logs import Log
            from fastfog.server import serve

            self.stop_future = asyncio.get_running_loop().create_future()
            await serve(config, Log(fd=self._write_end), lambda address: ready.set(), self.stop_future)

        self.task = asyncio.run_coroutine_threadsafe(run(), background.loop)
        threading.Thread(target=self._read, daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError(f"in-process proxy did not start: {self.task}")
        self.address = (config.ip, config.port)

    def _read(self):
        for line in self._reader:
            self.lines.append(line.decode())

    records = ProxyProcess.records

    def stop(self):
        self.background.loop.call_soon_threadsafe(self.stop_future.set_result, None)
        self.task.result(10)
        os.close(self._write_end)


@pytest.fixture
def in_process_proxy(background, dns):
    from fastfog.config import load_config

    started = []

    def start(**flags):
        flags = {"ip": netns.PROXY, "port": "4751", "resolver_addresses": [f"{netns.DNS}:{DNS_PORT}"], **flags}
        proxy = InProcessProxy(background, load_config(None, flags))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


class UpstreamProxy:
    """An HTTPS proxy: TLS with a test certificate, CONNECT to any target, a byte relay.

    It records each CONNECT target and Proxy-Authorization it gets; ``refuse`` makes it answer 403.
    """

    def __init__(self, background, host, port, server_context):
        self.requests = []
        self.refuse = False
        self.server = background.run(asyncio.start_server(self._serve, host, port, ssl=server_context))

    async def _serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            auth = next((line.split(": ", 1)[1] for line in lines if line.lower().startswith("proxy-authorization:")),
                        None)
            self.requests.append((target, auth))
            if self.refuse:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            address = RECORDS[host][0] if host in RECORDS else host.strip("[]")  # the test network's DNS
            up_reader, up_writer = await asyncio.open_connection(address, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(source, sink):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()
                else:
                    sink.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="session")
def upstream_pki(tmp_path_factory):
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream-proxy.test", netns.UPSTREAM_PROXY).configure_cert(context)
    ca_file = tmp_path_factory.mktemp("upstream") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


@pytest.fixture
def upstream_proxy(background, upstream_pki):
    proxy = UpstreamProxy(background, netns.UPSTREAM_PROXY, 8443, upstream_pki[0])
    yield proxy
    background.loop.call_soon_threadsafe(proxy.server.close)
