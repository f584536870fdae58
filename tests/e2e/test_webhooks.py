"""Webhooks through a real ``fastfog serve``: events to a receiver in the test, and access-request."""

import asyncio
import json
import time

import pytest

from fastfog.hotpaths import parse_request_head

from .client import connect, eventually

import netns

HOOK_HOST, HOOK_PORT = "203.0.113.12", 8088


class Receiver:
    """A webhook receiver: records every JSON body it gets; answers as told."""

    def __init__(self, background):
        self.background = background
        self.received = []
        self.verdict = "accept"  # access-request answers: accept, reject, slow, garbage
        self.fail_first = 0  # answer 503 to this many event POSTs first
        self.delay = 0.0
        self.writers = set()
        self.server = background.run(asyncio.start_server(self._serve, HOOK_HOST, HOOK_PORT))

    async def _serve(self, reader, writer):
        self.writers.add(writer)
        buffer = b""
        try:
            while True:
                head = parse_request_head(buffer)
                while head is None:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buffer += data
                    head = parse_request_head(buffer)
                while len(buffer) < head.head_end + head.content_length:
                    buffer += await reader.read(65536)
                body = json.loads(buffer[head.head_end:head.head_end + head.content_length])
                buffer = buffer[head.head_end + head.content_length:]
                self.received.append((head.path, body))
                status, answer = 200, b"{}"
                if body["action"] == "access-request":
                    if self.verdict == "slow":
                        await asyncio.sleep(3)
                    answer = (b"not json" if self.verdict == "garbage"
                              else json.dumps({"access-response": self.verdict}).encode())
                elif self.fail_first:
                    self.fail_first -= 1
                    status = 503
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\n\r\n".encode() + answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def actions(self, action=None):
        return [body for _, body in self.received if action is None or body["action"] == action]

    def close(self):
        """Gone: not listening, and its open connections closed."""
        def stop():
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
        self.background.loop.call_soon_threadsafe(stop)


@pytest.fixture
def receiver(background):
    hook = Receiver(background)
    yield hook
    hook.close()


def hook_config(extra="", access=""):
    return (f"allow_missing_role: true\nwebhook:\n  url: http://{HOOK_HOST}:{HOOK_PORT}/fastfog/s3cret\n"
            f"  hostid: egress-test\n  ping_interval: 200ms\n  timeout: 1s\n{extra}{access}")


def test_events_for_a_tunnel_and_a_forwarded_request(start_proxy, receiver, echo, http_origin):
    proxy = start_proxy(config=hook_config())
    sock, head, _ = connect(proxy.address, "origin.test:7")
    with sock:
        sock.sendall(b"hello")
        assert sock.recv(10) == b"hello"
    with __import__("socket").create_connection(proxy.address, timeout=10) as client:
        client.sendall(b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        while client.recv(65536):
            pass
    assert eventually(lambda: len(receiver.actions("connection-info")) == 2 and receiver.actions("ping"))
    assert receiver.received[0][0] == "/fastfog/s3cret"
    tunnel_id = next(body["id"] for body in receiver.actions("connection-start")
                     if body["details"]["proxy_type"] == "connect")
    tunnel = [body for body in receiver.actions() if body["id"] == tunnel_id]
    assert [body["action"] for body in tunnel] == ["connection-start", "connection-stop", "connection-info"]
    assert len({body["id"] for body in tunnel}) == 1 and tunnel[0]["id"].startswith("Proxy-")
    assert all(body["source"] == "egress-test" and body["type"] == "proxy" for body in receiver.actions())
    [record] = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert tunnel[0]["id"].endswith("-OID-" + record["id"])
    stop = tunnel[1]["details"]
    assert (stop["host"], stop["bytes_up"], stop["bytes_down"], stop["destination"]) == (
        "origin.test:7", 5, 10, f"{netns.ORIGIN}:7")
    assert stop["decision"] == "Egress ACL is not configured" and stop["duration"] > 0
    forwarded = [body for body in receiver.actions("connection-stop") if body["details"]["proxy_type"] == "http"]
    assert [(body["details"]["method"], body["details"]["status"]) for body in forwarded] == [("GET", 200)]
    [neighbor] = receiver.actions("neighbor")
    assert neighbor["details"] == {"address": netns.PROXY, "state": "new"}


def test_a_failing_receiver_is_retried_and_a_missing_one_never_slows_traffic(start_proxy, receiver, echo):
    receiver.fail_first = 2
    proxy = start_proxy(config=hook_config(extra="  events: [connection-start]\n"))
    sock, head, _ = connect(proxy.address, "origin.test:7")
    sock.close()
    # two 503 answers, then the same event again, delivered
    assert eventually(lambda: len(receiver.actions("connection-start")) == 3, timeout=5)
    assert len({body["id"] for body in receiver.actions("connection-start")}) == 1
    receiver.close()
    started = time.monotonic()
    for _ in range(20):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    assert time.monotonic() - started < 5
    assert proxy.records("webhook events dropped", wait_for=1, timeout=15)


def test_a_full_queue_drops_new_events_and_traffic_goes_on(start_proxy, receiver, echo):
    receiver.delay = 0.5
    proxy = start_proxy(config=hook_config(extra="  max_queue: 2\n"))
    for _ in range(20):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    [dropped] = proxy.records("webhook events dropped", wait_for=1)
    assert dropped["error"] == "queue full"


ACCESS = "  access_request: {{enabled: true, timeout: 500ms, cache_ttl: {ttl}{extra}}}\n"


@pytest.mark.parametrize("verdict, fail_closed, status", [
    ("accept", False, 200), ("reject", False, 407), ("slow", False, 200), ("slow", True, 407),
    ("garbage", False, 200), ("garbage", True, 407),
])
def test_access_request(start_proxy, receiver, echo, verdict, fail_closed, status):
    receiver.verdict = verdict
    proxy = start_proxy(config=hook_config(access=ACCESS.format(
        ttl="0s", extra=", fail_closed: true" if fail_closed else "")))
    sock, head, body = connect(proxy.address, "origin.test:7")
    sock.close()
    assert head.status == status
    [request] = receiver.actions("access-request")
    assert {key: request["details"][key] for key in ("role", "host", "port", "policy")} == {
        "role": "", "host": "origin.test", "port": 7, "policy": "default"}
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    if status == 407:
        assert decision["decision_reason"] == "rejected by access-request webhook"
        assert echo.connections == 0  # nothing was dialed
    else:
        assert decision["allow"]


def test_access_answers_are_cached_per_role_and_host(start_proxy, receiver, echo):
    proxy = start_proxy(config=hook_config(access=ACCESS.format(ttl="60s", extra="")))
    for _ in range(3):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    assert len(receiver.actions("access-request")) == 1
    assert eventually(lambda: receiver.actions("connection-info"))
    assert receiver.actions("connection-info")[0]["details"]["access_response"] == '{"access-response": "accept"}'


def test_access_request_only_for_the_roles_listed(start_proxy, receiver, echo):
    proxy = start_proxy(config=hook_config(access=ACCESS.format(ttl="0s", extra=", roles: [payments]")))
    sock, head, _ = connect(proxy.address, "origin.test:7")
    sock.close()
    assert head.status == 200 and receiver.actions("access-request") == []
