"""A tunnel whose client leg is TLS (an mTLS client's), through the relay, compiled and pure
Python, over real TCP sockets and real TLS sessions: the listener's context (tls.ServerTLS) on
the proxy's end, a client with a certificate on the other."""

import asyncio
import os
import select
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import make_pki
from support import RelayTunnel, both_ways, check_streams_through_every_relay, open_pipes, tcp_pair
from support import run_watched as run

from fastfog.tls import ClientTLSSocket, ServerTLS

pytestmark = pytest.mark.netns  # loopback of the test namespace


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    return tls_contexts(make_pki(tmp_path_factory.mktemp("pki")))


def tls_contexts(pki):
    server = ServerTLS({"cert_file": pki["proxy"], "key_file": None, "client_ca_files": [pki["ca"]],
                        "crl_files": []}).context
    client = ssl.create_default_context(cafile=pki["ca"])
    client.load_cert_chain(pki["open"])
    client.check_hostname = False
    client.sslsocket_class = ClientTLSSocket  # its half-close sends close_notify, as the proxy's end does
    return server, client


def handshake(contexts):
    """(client, proxy's end): a finished TLS handshake over a loopback TCP pair, non-blocking."""
    server_context, client_context = contexts
    client_sock, server_sock = tcp_pair()
    client = client_context.wrap_socket(client_sock, do_handshake_on_connect=False)
    server = server_context.wrap_socket(server_sock, server_side=True, do_handshake_on_connect=False)
    pending = [client, server]
    for _ in range(100):
        for sock in tuple(pending):
            try:
                sock.do_handshake()
                pending.remove(sock)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if not pending:
            return client, server
        select.select(pending, [], [], 0.1)
    raise AssertionError("the handshake did not finish")


class TLSTunnel(RelayTunnel):
    """client ⇄ TLS ⇄ [relay: the proxy's end of the TLS, upstream_side] ⇄ origin."""

    def __init__(self, impl, loop, contexts, first_bytes=b""):
        super().__init__(impl, loop, *handshake(contexts), first_bytes)

    async def ready(self, sock, write=False):
        ready = self.loop.create_future()
        add, remove = (self.loop.add_writer, self.loop.remove_writer) if write else (self.loop.add_reader,
                                                                                     self.loop.remove_reader)
        add(sock.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, 10)
        finally:
            remove(sock.fileno())

    async def send(self, sock, data):
        """All of ``data`` on ``sock`` (the TLS client, or the plain origin)."""
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                await self.ready(sock, write=True)

    @staticmethod
    def end(sock):
        """TCP only, on the client too: its own close_notify step could drop what arrives meanwhile."""
        socket.socket.shutdown(sock, socket.SHUT_WR)

    async def read_all(self, sock):
        """What ``sock`` receives until its end: (bytes, "eof" | "reset" | OpenSSL's reason)."""
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                await self.ready(sock)
                continue
            except ConnectionResetError:
                return data, "reset"
            except ssl.SSLError as err:
                return data, err.reason
            if not chunk:
                return data, "eof"
            data += chunk


def test_both_directions_first_bytes_and_each_half_close(impl, contexts):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = TLSTunnel(impl, loop, contexts, first_bytes=b"early ")
        tunnel.relay.start()
        await tunnel.send(tunnel.client, b"question")
        tunnel.client.shutdown(socket.SHUT_WR)  # close_notify, then the TCP half-close
        assert await tunnel.read_all(tunnel.origin) == (b"early question", "eof")
        for part in (b"answer ", b"after ", b"half-close"):
            await tunnel.send(tunnel.origin, part)
        assert not tunnel.closed.done()
        tunnel.origin.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.client) == (b"answer after half-close", "eof")
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error, relay.closed) == (14, 23, None, True)
        tunnel.close()
    run(scenario())


def test_the_origin_ends_first_then_the_client(impl, contexts):
    """The proxy's close_notify goes out first; the client's, after it, is an end like any other."""
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = TLSTunnel(impl, loop, contexts)
        tunnel.relay.start()
        await tunnel.send(tunnel.origin, b"hello")
        tunnel.origin.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.client) == (b"hello", "eof")
        await tunnel.send(tunnel.client, b"goodbye")
        tunnel.client.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.origin) == (b"goodbye", "eof")
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error) == (7, 5, None)
        tunnel.close()
    run(scenario())


def test_megabytes_each_way_in_many_records_and_never_a_pipe(impl, contexts):
    async def scenario():
        loop = asyncio.get_running_loop()
        baseline = open_pipes()
        tunnel = TLSTunnel(impl, loop, contexts)
        tunnel.relay.start()
        up, down = os.urandom(3 << 20), os.urandom(2 << 20)
        pipes = set()

        async def count_pipes():
            while not tunnel.closed.done():
                pipes.add(open_pipes() - baseline)
                await asyncio.sleep(0.002)

        counting = asyncio.ensure_future(count_pipes())
        assert await both_ways(tunnel, [up], [down]) == ((up, "eof"), (down, "eof"))
        relay = await tunnel.closed
        await counting
        assert pipes == {0}  # TLS bytes pass through user space: nothing to splice, ever
        assert (relay.bytes_out, relay.bytes_in, relay.error) == (len(up), len(down), None)
        tunnel.close()
    run(scenario())


def test_a_forged_record_closes_the_tunnel_with_openssls_reason(impl, contexts):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = TLSTunnel(impl, loop, contexts)
        tunnel.relay.start()
        await tunnel.send(tunnel.client, b"genuine")
        assert await loop.sock_recv(tunnel.origin, 100) == b"genuine"
        # Application data that was never encrypted with the session's keys.
        socket.socket.send(tunnel.client, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
        relay = await tunnel.closed
        assert relay.error == "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
        assert await tunnel.read_all(tunnel.origin) == (b"", "reset")  # the origin must not take it as complete
        tunnel.close()
    run(scenario())


def test_a_client_half_close_without_close_notify_is_an_end_and_the_answer_still_comes(impl, contexts):
    async def scenario():
        loop = asyncio.get_running_loop()
        tunnel = TLSTunnel(impl, loop, contexts)
        tunnel.relay.start()
        await tunnel.send(tunnel.client, b"last words")
        socket.socket.shutdown(tunnel.client, socket.SHUT_WR)  # TCP only
        assert await tunnel.read_all(tunnel.origin) == (b"last words", "eof")
        await tunnel.send(tunnel.origin, b"the answer")
        tunnel.origin.shutdown(socket.SHUT_WR)
        assert await tunnel.read_all(tunnel.client) == (b"the answer", "eof")
        relay = await tunnel.closed
        assert (relay.bytes_out, relay.bytes_in, relay.error) == (10, 10, None)
        tunnel.close()
    run(scenario())


chunks = st.lists(st.binary(min_size=1, max_size=40000), max_size=8)


@settings(max_examples=15, deadline=None)
@given(first=st.binary(max_size=500), outbound=chunks, inbound=chunks)
def test_every_implementation_delivers_the_same_streams_through_tls(tmp_path_factory, first, outbound, inbound):
    contexts = CONTEXTS.get("pair") or CONTEXTS.setdefault("pair", tls_contexts(
        make_pki(tmp_path_factory.mktemp("pki"))))
    check_streams_through_every_relay(lambda impl, loop, first_bytes: TLSTunnel(impl, loop, contexts, first_bytes),
                                      first, outbound, inbound)


CONTEXTS = {}  # the property test's contexts, made once (Hypothesis runs it many times)
