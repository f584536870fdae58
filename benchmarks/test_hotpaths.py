"""Hot-path microbenchmarks, compiled core vs pure-Python reference, on realistic inputs.

Run: ``python -m pytest benchmarks`` (add ``--benchmark-disable`` to only check they run).
Each group holds one workload; compare the two rows of a group, not absolute times.
"""

import ipaddress
import random

import pytest
from support import client_hello  # tests/support.py (pytest puts tests/ on the path)

CONNECT_HEAD = (
    b"CONNECT hooks.partner-payments.example.com:443 HTTP/1.1\r\n"
    b"Host: hooks.partner-payments.example.com:443\r\n"
    b"User-Agent: webhook-dispatcher/4.12.0 (+https://status.example.org/webhooks; build 20261121)\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"Proxy-Authorization: Basic d2ViaG9va3MtcHJvZDpzM2NyM3QtcGFzc3dvcmQtZm9yLWVncmVzcy0xMjM0NTY3ODkw\r\n"
    b"X-Smokescreen-Trace-ID: 6f1c2b0e-8d2a-4c71-9a5e-3f0b7d9e2c41-retry-0003\r\n"
    b"X-Request-ID: req_01JD8Z8M4K2Q7W9X3N5P6R8T0V-delivery-attempt-2\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"\r\n"
)

FORWARD_HEAD = (
    b"POST http://hooks.partner-payments.example.com/v2/events/deliveries?attempt=2&sig=v1 HTTP/1.1\r\n"
    b"Host: hooks.partner-payments.example.com\r\n"
    b"User-Agent: webhook-dispatcher/4.12.0 (+https://status.example.org/webhooks; build 20261121)\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 2048\r\n"
    b"Accept: application/json, text/plain;q=0.9, */*;q=0.1\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Proxy-Authorization: Basic d2ViaG9va3MtcHJvZDpzM2NyM3QtcGFzc3dvcmQtZm9yLWVncmVzcy0xMjM0NTY3ODkw\r\n"
    b"X-Webhook-Signature: t=1763769600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd\r\n"
    b"X-Webhook-Id: evt_1QJ8Z8M4K2Q7W9X3N5P6R8T0VabcdefGHIJKLmnopQRSTuvwxYZ0123456789\r\n"
    b"X-Webhook-Timestamp: 1763769600\r\n"
    b"X-Webhook-Tenant: acct_1QJ8Z8M4K2Q7W9X3;region=eu-west-1;tier=webhooks-prod;priority=high;retry=2\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Tracestate: vendorname1=opaqueValue1,vendorname2=opaqueValue2,congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n"
    b"Cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3ZWJob29rcyIsImlhdCI6MTc2Mzc2OTYwMH0."
    b"c2lnbmF0dXJlLWhlcmUtZm9yLXRoZS1iZW5jaG1hcmstaW5wdXQtb25seS1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5n"
    b"LXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5n"
    b"LXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5n"
    b"LXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZy1wYWRkaW5nLXBhZGRpbmctcGFkZGluZw\r\n"
    b"\r\n"
)

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nDate: Sat, 21 Nov 2026 23:59:59 GMT\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1024\r\nConnection: keep-alive\r\nCache-Control: no-store\r\n"
    b"X-Request-ID: req_01JD8Z8M4K2Q7W9X3N5P6R8T0V\r\nServer: partner-edge/2.3\r\n\r\n"
)


def test_input_sizes():
    assert 400 <= len(CONNECT_HEAD) <= 600
    assert 1400 <= len(FORWARD_HEAD) <= 1700 and FORWARD_HEAD.count(b"\r\n") == 17  # line, 15 headers, end


@pytest.mark.benchmark(group="parse: 500-byte CONNECT head")
def test_parse_connect_head(benchmark, impl):
    assert benchmark(impl.parse_request_head, CONNECT_HEAD).port == 443


@pytest.mark.benchmark(group="parse: 1.5 KiB forward head, 15 headers")
def test_parse_forward_head(benchmark, impl):
    assert benchmark(impl.parse_request_head, FORWARD_HEAD).content_length == 2048


@pytest.mark.benchmark(group="parse: response head")
def test_parse_response_head(benchmark, impl):
    assert benchmark(impl.parse_response_head, RESPONSE_HEAD).status == 200


REQUEST_ONLY = frozenset({b"host", b"x-smokescreen-role", b"x-smokescreen-trace-id", b"x-upstream-https-proxy"})


@pytest.mark.benchmark(group="rewrite: 1.5 KiB forward head for upstream")
def test_rewrite_forward_head(benchmark, impl):
    headers = impl.parse_request_head(FORWARD_HEAD).headers
    before = b"POST /v2/events/deliveries?attempt=2&sig=v1 HTTP/1.1\r\nHost: hooks.partner-payments.example.com\r\n"
    rewritten = benchmark(impl.rewrite_head, before, headers, REQUEST_ONLY, True, b"")
    assert rewritten.startswith(before) and b"Proxy-" not in rewritten and rewritten.endswith(b"\r\n\r\n")


def _ranges(count, seed):
    rng = random.Random(seed)
    entries = []
    while len(entries) < count:
        if rng.random() < 0.7:
            entries.append((ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(8, 32)), strict=False),
                            rng.randint(0, 7)))
        else:
            entries.append((ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(16, 64)), strict=False),
                            rng.randint(0, 7)))
    return entries


def _addresses(count, seed):
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        if rng.random() < 0.7:
            found.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            found.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    return found


ADDRESSES = _addresses(1000, 2) + ["198.51.100.7", "2001:db8::1", "::ffff:10.0.0.1"]


@pytest.mark.parametrize("size", [20, 100_000])
def test_cidr_lookup(benchmark, impl, size):
    table = impl.CidrTable(_ranges(size, 1))
    benchmark.group = f"CIDR table: {size} ranges, {len(ADDRESSES)} lookups"
    benchmark(lambda: [table.lookup(address) for address in ADDRESSES])


def _globs(count):
    rng = random.Random(3)
    words = ["api", "hooks", "cdn", "static", "events", "payments", "partner", "eu", "us", "v2"]
    entries = {"*.stripe.com", "hooks.slack.com", "*.amazonaws.com", "api.github.com", "*.example.org"}
    while len(entries) < count:
        name = ".".join(rng.choice(words) + str(rng.randrange(10_000)) for _ in range(rng.randint(1, 3)))
        entries.add(name + rng.choice([".com", ".net", ".io"]) if rng.random() < 0.5 else "*." + name + ".com")
    return sorted(entries)[:count] if count > 5 else sorted(entries)


HOSTS = ["hooks.slack.com", "a.b.events.amazonaws.com", "api.github.com", "evil.example.net",
         "deep.sub.domain.of.something.example.org", "metadata.google.internal", "x.stripe.com", "stripe.com"]


@pytest.mark.parametrize("size", [5, 50_000])
def test_glob_match(benchmark, impl, size):
    globs = impl.HostGlobSet(_globs(size))
    benchmark.group = f"host globs: {size} entries, {len(HOSTS)} lookups"
    benchmark(lambda: [globs.match(host) for host in HOSTS])


CLIENT_HELLO = client_hello("hooks.partner-payments.example.com")


def test_client_hello_sni(benchmark, impl):
    benchmark.group = f"SNI of a {len(CLIENT_HELLO)}-byte ClientHello"
    assert benchmark(impl.client_hello_sni, CLIENT_HELLO) == ("hello", "hooks.partner-payments.example.com")
