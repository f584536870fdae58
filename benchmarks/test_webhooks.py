"""What a webhook event costs the connection path: one envelope into the bounded queue."""

import asyncio

from fastfog import metrics, webhooks
from fastfog.logs import Log

BLOCK = {"url": "http://127.0.0.1:9/hook", "tls_verify": True, "ca_file": None, "hostid": "bench",
         "ping_interval": 0, "timeout": 1.0, "max_queue": 1_000_000, "events": None, "access_request": None}
DETAILS = {"role": "webhooks-prod", "client": "10.0.0.1:40000", "host": "hooks.example.com:443",
           "proxy_type": "connect"}


def test_emit_connection_start(benchmark):
    benchmark.group = "webhooks: one event queued"
    loop = asyncio.new_event_loop()
    hooks = webhooks.Webhooks(BLOCK, Log(fd=2), metrics.Metrics(), loop=loop)
    queue = hooks._queue

    def emit():
        hooks.emit("connection-start", "d4qsdn0ocgl5m1pd2v1g", DETAILS)
        queue.popleft()  # the sender's side, so the queue stays at its size

    benchmark(emit)
    hooks.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
