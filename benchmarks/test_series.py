"""Metric series and taking connections off a listener: compiled core vs pure-Python reference."""

import socket

from fastfog import metrics
from fastfog.server import open_listener


def test_a_tunnels_close_series(benchmark, impl):
    benchmark.group = "series: one tunnel's close (cn.close, three histograms)"
    closed = impl.TunnelSeries(impl.Count(), impl.Count(), impl.Histogram(metrics.SECOND_BUCKETS),
                               impl.Histogram(metrics.BYTE_BUCKETS), impl.Histogram(metrics.BYTE_BUCKETS))
    benchmark(closed.closed, 0.25, 1024, 200, False)
    assert closed.closes.value > 0


def test_accepting_sixteen_connections(benchmark, impl):
    benchmark.group = "accept: a batch of 16 waiting connections"
    with open_listener("127.0.0.1", 0) as listener:
        address = listener.getsockname()
        taken = []

        def connect_sixteen():
            clients = [socket.create_connection(address) for _ in range(16)]
            for client in clients:
                client.send(b"x")  # the listener hands over a connection once its first bytes are in
            return (clients,), {}

        def accept_them(clients):
            impl.accept_batch(listener, 64, lambda sock, _: taken.append(sock))
            for sock in taken + clients:
                sock.close()
            taken.clear()

        benchmark.pedantic(accept_them, setup=connect_sixteen, rounds=200)
