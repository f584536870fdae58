"""fastfog bench's compiled load generator and origins, against its pure-Python twin's results:
real sockets on loopback, short runs."""

import os
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfog import hotpaths
from fastfog.bench import load, servers

pytestmark = pytest.mark.skipif(not hotpaths.COMPILED, reason="compiled core disabled by FASTFOG_NO_EXTENSIONS")


@pytest.fixture
def engine():
    from fastfog.bench import _engine
    return _engine


@pytest.fixture
def origins(engine):
    """The compiled reply and http origins on loopback, in a thread (its epoll waits release the GIL)."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    stop_read, stop_write = os.pipe()
    thread = threading.Thread(target=engine.serve_origins, daemon=True, args=(
        ("127.0.0.1", ports[0]), ("127.0.0.1", ports[1]), servers.REQUEST_SIZE, b"r" * servers.REPLY_SIZE,
        servers.http_response(servers.REPLY_SIZE), stop_read))
    thread.start()
    for port in ports:  # listening
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    yield {"reply": ("127.0.0.1", ports[0]), "http": ("127.0.0.1", ports[1])}
    os.close(stop_write)
    thread.join(5)
    os.close(stop_read)


def check(result):
    assert set(result) == {"done", "errors", "latency_counts"}
    assert result["errors"] == {} and result["done"] > 0
    assert sum(result["latency_counts"].values()) == result["done"]
    assert load.Latencies(result["latency_counts"]).percentile(0.99) > 0


def test_direct_tunnels_and_keep_alive_requests(engine, origins):
    check(engine.run_load(engine.TUNNEL, origins["reply"], None, b"q" * servers.REQUEST_SIZE, servers.REPLY_SIZE,
                          8, 0.2))
    check(engine.run_load(engine.HTTP, origins["http"], None, load.http_request(None, origins["http"]), 0, 8, 0.2))


def test_open_loop_runs_at_its_rate(engine, origins):
    result = engine.run_load(engine.TUNNEL, origins["reply"], None, b"q" * servers.REQUEST_SIZE, servers.REPLY_SIZE,
                             1, 0.5, 200.0)
    check(result)
    assert 90 <= result["done"] <= 110  # 200 a second for half a second


def test_a_proxy_that_refuses_is_an_error_by_its_answer(engine):
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1000)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=refuse, daemon=True).start()
    result = engine.run_load(engine.TUNNEL, listener.getsockname(), load.connect_head("203.0.113.10", 7), b"q",
                             1024, 1, 0.05)
    listener.close()
    assert result["done"] == 0 and list(result["errors"]) == ["proxy answered HTTP/1.1 403"]


def test_nothing_listening_is_a_connect_error(engine):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()
    result = engine.run_load(engine.TUNNEL, closed, None, b"q", 1024, 2, 0.05)
    assert result["done"] == 0 and list(result["errors"]) == ["connect: errno 111"]


@given(st.integers(min_value=0, max_value=100 * 10**9))
def test_latency_buckets_match_the_twin(ns):
    from fastfog.bench import _engine

    assert _engine.latency_bucket(ns) == load.Latencies.bucket_ns(ns)
