"""What OpenSSL itself costs fastfog's mTLS listener per connection: a client's handshake with
the listener's own context (``tls.ServerTLS``, as ``--tls-server-bundle-file`` and
``--tls-client-ca-file`` build it), full or resumed, over memory BIOs in one process: no
sockets, no event loop, no fastfog code between the two ends.

A round is both ends' whole handshake, then 200 bytes up and 1 KiB down; the server's own share
of it goes into the report's ``extra_info`` (``server_us``, the median over the rounds). It is
the floor under ``fastfog bench``'s ``connect-tls`` and ``connect-tls-resumed`` workloads, to
set beside a plain tunnel's whole cost (``connect``'s proxy CPU per tunnel).

The memory OpenSSL keeps for an idle connection (its buffers released, as CPython's contexts
ask) is the floor under ``idle-tls``: the last test holds IDLE connections open and puts the C
heap's growth per connection (glibc's ``mallinfo2``) into ``extra_info``.
"""

import ctypes
import ctypes.util
import socket
import ssl
import statistics
import time

import pytest

from fastfog.bench.pki import write_bench_pki
from fastfog.tls import ServerTLS

ROUNDS = 200
IDLE = 500


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    pki = write_bench_pki(str(tmp_path_factory.mktemp("pki")), "127.0.0.1")
    server = ServerTLS({"cert_file": pki["proxy"], "key_file": None, "client_ca_files": [pki["ca"]],
                        "crl_files": []})
    client = ssl.create_default_context(cafile=pki["ca"])
    client.load_cert_chain(pki["client"])
    return server.context, client


class Connection:
    """Both ends of one TLS connection, their records passed by hand; ``server_seconds`` counts
    the time spent in the server's calls."""

    def __init__(self, server_context, client_context, session):
        self.to_server, self.to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client_in, self.server_in = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.client_in, self.to_server, server_hostname="127.0.0.1",
                                              session=session)
        started = time.perf_counter()
        self.server = server_context.wrap_bio(self.server_in, self.to_client, server_side=True)
        self.server_seconds = time.perf_counter() - started

    def on_server(self, call, *args):
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.server_seconds += time.perf_counter() - started

    def exchange(self):
        """The handshake, 200 bytes up, 1 KiB down; the client's session afterwards."""
        client_done = server_done = False
        for _ in range(8):  # a TLS 1.3 handshake takes two flights each way
            if not client_done:
                try:
                    self.client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
            self.server_in.write(self.to_server.read())
            if not server_done:
                try:
                    self.on_server(self.server.do_handshake)
                    server_done = True
                except ssl.SSLWantReadError:
                    pass
            self.client_in.write(self.to_client.read())
            if client_done and server_done:
                break
        assert client_done and server_done
        self.client.write(b"q" * 200)
        self.server_in.write(self.to_server.read())
        assert len(self.on_server(self.server.read, 16384)) == 200
        self.on_server(self.server.write, b"r" * 1024)
        self.client_in.write(self.to_client.read())
        assert len(self.client.read(16384)) == 1024  # the session tickets are taken in passing
        return self.client.session


@pytest.mark.parametrize("resumed", [False, True], ids=["full", "resumed"])
def test_an_mtls_handshake_and_a_short_exchange(benchmark, contexts, resumed):
    benchmark.group = "mTLS listener: one client's handshake with OpenSSL alone (server_us: the server's share)"
    server_context, client_context = contexts
    session = Connection(server_context, client_context, None).exchange() if resumed else None
    server_seconds = []

    def one():
        connection = Connection(server_context, client_context, session)
        connection.exchange()
        assert connection.server.session_reused == resumed
        server_seconds.append(connection.server_seconds)

    benchmark.pedantic(one, rounds=ROUNDS, warmup_rounds=10)
    benchmark.extra_info["server_us"] = round(statistics.median(server_seconds) * 1e6, 1)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def c_heap_in_use():
    """Bytes the C heap has handed out (glibc), or None elsewhere."""
    mallinfo2 = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2().uordblks


def idle_server_end(server_context, client_context, session):
    """A resumed connection over a socket pair, after the short exchange; the server's end only
    (the client's is closed and freed: only what the server holds stays on the heap)."""
    server_sock, client_sock = socket.socketpair()
    server = server_context.wrap_socket(server_sock, server_side=True, do_handshake_on_connect=False)
    client = client_context.wrap_socket(client_sock, server_hostname="127.0.0.1", do_handshake_on_connect=False,
                                        session=session)
    for sock in (server, client):
        sock.setblocking(False)
    pending = [client, server]
    for _ in range(8):
        for sock in tuple(pending):
            try:
                sock.do_handshake()
                pending.remove(sock)
            except ssl.SSLWantReadError:
                pass
    assert not pending and server.session_reused
    client.sendall(b"q" * 200)
    assert len(server.recv(16384)) == 200
    server.sendall(b"r" * 1024)
    client.close()
    return server


def test_an_idle_resumed_mtls_connection(benchmark, contexts):
    benchmark.group = "mTLS listener: IDLE resumed connections held open (openssl_kib: C heap per connection)"
    server_context, client_context = contexts
    session = Connection(server_context, client_context, None).exchange()
    held = []

    def open_idle():
        before = c_heap_in_use()
        held.extend(idle_server_end(server_context, client_context, session) for _ in range(IDLE))
        after = c_heap_in_use()
        return None if before is None else (after - before) / IDLE / 1024

    kib = benchmark.pedantic(open_idle, rounds=1)
    if kib is not None:
        benchmark.extra_info["openssl_kib"] = round(kib, 2)
    for server in held:
        server.close()
