"""A forwarded request's exchange (hotpaths.Exchange), compiled and pure Python, held to the same
behaviour over real TCP sockets on loopback: for generated requests, responses (every framing,
interim heads, bytes past the end) and ways the response arrives in pieces, both implementations
send the same bytes each way and end the same way (pooled or closed, kept alive or closed,
recorded or failed). The whole proxy around it is covered by the end-to-end suite on both builds."""

import asyncio

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IMPLEMENTATIONS, feed, tcp_pair

from fastfog.reference.exchange import Exchange as ReferenceExchange

pytestmark = pytest.mark.netns  # loopback of the test namespace

EXCHANGES = {"reference": ReferenceExchange}
if "core" in IMPLEMENTATIONS:
    EXCHANGES["core"] = IMPLEMENTATIONS["core"].Exchange


class Config:
    read_timeout = write_timeout = 5.0


class Deadline:
    def set(self, seconds, callback):
        pass

    def clear(self):
        pass


class Events(list):
    def recorder(self, name):
        return lambda *args: self.append((name, *args))


class Proxy:
    def __init__(self, events):
        self.config, self.serving, self.exchanges = Config(), True, set()
        self.pool = type("Pool", (), {"give": lambda pool, address, port, sock, watch, names: (
            events.append(("pooled",)), watch.forget(), sock.close())})()
        self.limits = type("Limits", (), {"release": lambda limits, role: events.append(("released", role))})()
        self.records = type("Records", (), {
            "forwarded": lambda records, head, fields, upstream, started, status, length: events.append(
                ("forwarded", status, length)),
            "failed": lambda records, head, fields, decision, lookup_ms, status, message, close: (
                events.append(("failed", status, message)), b"FAILED")[1]})()
        self.log = type("Log", (), {name: events.recorder(name) for name in ("info", "warning", "error")})()


class Client:
    """The client side of the exchange, as connection.ClientConnection presents it."""

    def __init__(self, sock, watch, buffer, events):
        self.sock, self._watch, self.buffer, self.events = sock, watch, bytearray(buffer), events
        self.deadline, self.exchange, self.closed = Deadline(), None, False

    def watch(self):
        return self._watch

    def next_request(self):
        self.events.append(("next request",))

    def close(self):
        self.closed = True
        self.events.append(("client closed",))

    def finish(self, answer):
        self.events.append(("finished", answer))


class Upstream:
    """A dialed upstream, as connection.Upstream presents it."""

    def __init__(self, sock, watch, events, reused):
        self.sock, self.watch, self.events, self.reused = sock, watch, events, reused
        self.add_headers, self.poolable, self.role, self.decision, self.lookup_ms = (), True, "role", None, 0
        self.address, self.port, self.names = "203.0.113.1", 80, ("", "")

    def close(self):
        self.events.append(("upstream closed",))
        self.watch.forget()
        self.sock.close()


def run_exchange(exchange_class, impl, request, buffered, pieces, rest=b""):
    """Forward ``request`` (its head parsed; ``buffered``: what the client sent after it, already
    read; ``rest``: what it sends once the exchange has started) while the upstream answers with
    ``pieces``, one per loop turn (None: it shuts its side down); what each side received and
    the events, in order."""
    events = Events()

    async def scenario():
        loop = asyncio.get_running_loop()
        poller = impl.poller_for(loop)
        client_far, client_near = tcp_pair()
        upstream_near, upstream_far = tcp_pair()
        client_watch, upstream_watch = impl.EdgeWatch(poller, client_near.fileno()), impl.EdgeWatch(
            poller, upstream_near.fileno())
        client = Client(client_near, client_watch, buffered, events)
        upstream = Upstream(upstream_near, upstream_watch, events, reused=False)
        head = impl.parse_request_head(request)
        client_far.setblocking(False)
        upstream_far.setblocking(False)
        exchange_class(Proxy(events), client, head, {"id": "x"}, upstream, 0.0, events.recorder("stale")).start()
        up, down = bytearray(), bytearray()
        client_far.send(rest)
        await feed(upstream_far, pieces, 0.001)
        for _ in range(200):  # until the exchange ends, or 1 s
            await asyncio.sleep(0.005)
            for sock, into in ((upstream_far, up), (client_far, down)):
                try:
                    while chunk := sock.recv(65536):
                        into += chunk
                except (BlockingIOError, OSError):
                    pass
            if any(event[0] in ("next request", "client closed", "finished") for event in events):
                break
        for sock in (client_far, upstream_far, client_near, upstream_near):
            sock.close()
        return bytes(up), bytes(down)

    up, down = uvloop.run(scenario())
    return up, down, list(events)


def chunked(body, size):
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


@st.composite
def exchanges(draw):
    method = draw(st.sampled_from(["GET", "HEAD", "POST"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    request_body = draw(st.binary(max_size=300)) if method == "POST" else b""
    request = f"{method} http://203.0.113.1/hook HTTP/{version}\r\nHost: 203.0.113.1\r\n".encode()
    if draw(st.booleans()):
        request += b"Connection: close\r\n"
    if method == "POST":
        request += b"Content-Length: %d\r\n" % len(request_body)
    request += b"\r\n"
    buffered = request_body[:draw(st.integers(0, len(request_body)))]
    status = draw(st.sampled_from([200, 204, 304, 404, 500]))
    body = draw(st.binary(max_size=400)) if status not in (204, 304) else b""
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    response = b""
    if draw(st.booleans()):
        response += b"HTTP/1.1 100 Continue\r\n\r\n"
    response += b"HTTP/1.1 %d Status\r\nX-Smokescreen-Error: upstream\r\n" % status
    if framing == "length":
        response += b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "chunked":
        response += b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, draw(st.integers(1, 64)))
    else:
        response += b"\r\n" + body
    response += draw(st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n", b"\r\n"]))  # bytes past the end
    cuts = sorted(draw(st.lists(st.integers(0, len(response)), max_size=4)))
    pieces = [response[start:end] for start, end in zip([0, *cuts], [*cuts, len(response)], strict=True)]
    if framing == "close" or draw(st.booleans()):
        pieces.append(None)  # the upstream closes
    return request, buffered, request_body[len(buffered):], pieces


@pytest.mark.skipif(len(EXCHANGES) < 2, reason="compiled core disabled by FASTFOG_NO_EXTENSIONS")
@settings(max_examples=60)
@given(exchanges())
def test_both_exchanges_move_the_same_bytes_and_end_the_same_way(case):
    request, buffered, rest, pieces = case
    results = {name: run_exchange(exchange_class, IMPLEMENTATIONS[name], request, buffered, pieces, rest)
               for name, exchange_class in EXCHANGES.items()}
    assert results["core"] == results["reference"]
    up, down, events = results["core"]
    assert up.endswith(buffered + rest)  # the request's body went up whole
    assert any(event[0] in ("forwarded", "failed", "client closed") for event in events)


@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_a_length_delimited_response_in_pieces_is_passed_on_whole_and_the_upstream_pooled(name):
    body = bytes(range(256)) * 4
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    pieces = [response[:10], response[10:300], response[300:]]
    up, down, events = run_exchange(EXCHANGES[name], IMPLEMENTATIONS[name],
                                    b"GET http://203.0.113.1/hook HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n", b"", pieces)
    assert up.startswith(b"GET /hook HTTP/1.1\r\nHost: 203.0.113.1\r\n")
    assert down == b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body
    assert events == [("released", "role"), ("pooled",), ("forwarded", 200, 1024), ("next request",)]


@pytest.mark.parametrize("name", sorted(EXCHANGES))
def test_an_upstream_that_closes_mid_body_cuts_the_client_off(name):
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    up, down, events = run_exchange(EXCHANGES[name], IMPLEMENTATIONS[name],
                                    b"GET http://203.0.113.1/hook HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n", b"",
                                    [response, None])
    assert down == response
    assert events[:2] == [("released", "role"), ("upstream closed",)]
    assert events[2][0] == "error" and events[3] == ("client closed",)
