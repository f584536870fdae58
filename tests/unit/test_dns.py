"""The resolver and its cache, against a stub DNS server on loopback: both bounds hold, and
c-ares' own cache is retired with its channel."""

import uvloop

from fastfog import dns, stubdns

NAMES = 300


def run(coroutine):
    return uvloop.run(coroutine)


async def lookups(settings, names=NAMES):
    records = {f"h{index}.wild.test": ["203.0.113.10", "2001:db8::10"] for index in range(names)}
    stub = await stubdns.start("127.0.0.1", 0, records)
    port = stub.transport.get_extra_info("sockname")[1]
    resolver = dns.Resolver([f"127.0.0.1:{port}"], 1.0, "ip", settings)
    try:
        for index in range(names):
            assert await resolver.resolve(f"h{index}.wild.test") == ("203.0.113.10", "2001:db8::10")
        return resolver, stub
    finally:
        resolver.close()
        stub.transport.close()


def test_the_cache_is_bounded_by_memory():
    async def main():
        one = dns.entry_bytes("h100.wild.test", ("203.0.113.10", "2001:db8::10"))
        resolver, _ = await lookups({"max_bytes": 50 * one})
        assert resolver.cache_bytes <= 50 * one and 45 <= resolver.cache_entries <= 50
        assert resolver.cache_bytes == sum(dns.entry_bytes(name, value) for name, (_, value) in resolver._cache.items())
        assert resolver.cached(f"h{NAMES - 1}.wild.test") is not None  # the newest stay
        assert resolver.cached("h0.wild.test") is None  # the oldest went
    run(main())


def test_the_cache_is_bounded_by_count():
    async def main():
        resolver, _ = await lookups({"max_entries": 20})
        assert resolver.cache_entries == 20
    run(main())


def test_a_channel_serves_a_bounded_number_of_names(monkeypatch):
    monkeypatch.setattr(dns, "CHANNEL_NAMES", 50)

    async def main():
        resolver, stub = await lookups({"max_entries": 0})
        assert len(resolver._retiring) >= 5  # the old channels wait out their last lookups, then close
        assert stub.questions["h0.wild.test"] == 2  # A and AAAA, once
    run(main())
