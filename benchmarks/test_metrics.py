"""What one tunnel's metrics cost: the calls the connection path makes, without and with statsd."""

import asyncio
import socket

import pytest

from fastfog import metrics
from fastfog.acl import Decision
from fastfog.reasons import DEFAULT_ALLOWED

ALLOWED = Decision(True, "host matched allowed domain in rule", "allow", "payments", False)


def one_tunnel(counted):
    counted.acl_decision(ALLOWED, "webhooks-prod")
    counted.incr("resolver.attempts_total")
    counted.observe("resolver.lookup_time", 0.4)
    counted.incr(DEFAULT_ALLOWED.metric)
    counted.incr("cn.atpt.total", (("success", "true"),))
    counted.observe("proxy_duration_ms", 1.7)
    counted.connection_closed("webhooks-prod", "payments", 0.25, 1024, 200, False)


@pytest.mark.parametrize("statsd", [False, True])
def test_one_tunnels_metrics(benchmark, statsd):
    benchmark.group = "metrics: one tunnel's events"
    loop = asyncio.new_event_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        sink = metrics.StatsdSink(loop, f"127.0.0.1:{listener.getsockname()[1]}") if statsd else None
        counted = metrics.Metrics(statsd=sink)

        def tunnel_and_flush():
            one_tunnel(counted)
            if sink is not None:
                sink.flush()  # what the loop does once per iteration

        benchmark(tunnel_and_flush)
        if sink is not None:
            sink.sock.close()
    loop.close()
