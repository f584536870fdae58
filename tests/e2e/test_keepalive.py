"""TCP keep-alive: a peer that vanishes without a FIN or a reset no longer holds its tunnel.

A peer vanishes here by losing its address: once it is taken off ``lo``, nothing reaches it and
nothing comes from it, as when an instance is terminated or a NAT entry expires."""

import socket
import subprocess
import threading
import time

import pytest
from .client import connect, eventually

VANISHING = "198.51.100.77"
KEEPALIVE = "tcp_keepalive: {idle: 1s, interval: 1s, count: 2}\n"


@pytest.fixture
def vanishing_address():
    subprocess.run(["ip", "addr", "add", f"{VANISHING}/32", "dev", "lo"], check=True)
    yield VANISHING
    subprocess.run(["ip", "addr", "del", f"{VANISHING}/32", "dev", "lo"], check=False, capture_output=True)


def vanish(address):
    subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=True)


def test_accepted_connections_inherit_keepalive_from_the_listener():
    from fastfog.keepalive import KeepAlive
    from fastfog.server import open_listener

    listener = open_listener("127.0.0.1", 0, keepalive=KeepAlive({"idle": 2.5, "interval": 3.0, "count": 4}))
    listener.setblocking(True)
    with listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            assert (accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (1, 3, 3, 4)
    off = open_listener("127.0.0.1", 0, keepalive=KeepAlive({"enabled": False}))
    with off:
        assert off.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_a_client_that_vanishes_loses_its_tunnel(start_proxy, echo, vanishing_address):
    proxy = start_proxy(config=KEEPALIVE)
    sock = socket.create_connection(proxy.address, timeout=10, source_address=(vanishing_address, 0))
    sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.0 200")
    sock.sendall(b"ping")
    assert sock.recv(10) == b"ping"
    time.sleep(0.3)  # the last bytes acknowledged: an idle connection, which keep-alive watches
    vanish(vanishing_address)
    try:
        [record] = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1, timeout=15)
        assert record["error"], record  # the kernel gave up on the vanished peer
    finally:
        sock.close()


def test_an_origin_that_vanishes_loses_its_tunnel(start_proxy, vanishing_address):
    origin = socket.create_server((vanishing_address, 7))
    accepted = []
    threading.Thread(target=lambda: accepted.append(origin.accept()[0]), daemon=True).start()
    proxy = start_proxy("--allow-address", vanishing_address, config=KEEPALIVE)
    sock, head, _ = connect(proxy.address, f"{vanishing_address}:7")
    try:
        assert head.status == 200
        assert eventually(lambda: accepted)
        time.sleep(0.3)
        vanish(vanishing_address)
        [record] = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1, timeout=15)
        assert record["error"], record
    finally:
        sock.close()
        origin.close()
        for conn in accepted:
            conn.close()
