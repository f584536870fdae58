"""Resolving destination names: pycares (through aiodns) with a bounded TTL cache.

fastfog never calls the blocking ``getaddrinfo``. Lookups go to the configured
resolvers (``resolver_addresses``) or those in ``/etc/resolv.conf``, A and/or
AAAA by ``network`` (``ip``, ``ip4``, ``ip6``), within ``dns_timeout``.

Answers are cached for their TTL, clamped to ``[min_ttl, max_ttl]``; failures
(NXDOMAIN, no address) for ``negative_ttl``; timeouts are not cached. The cache
holds at most ``max_entries`` names (0 turns it off), dropping expired entries
and then the oldest. Concurrent lookups of one name share one query, so a
burst of webhooks to the same partner costs one round trip.

The cache is bounded by memory as well as by count: ``max_bytes`` (32 MiB by
default) of entries as fastfog counts them (a name, its addresses, their
bookkeeping), so that clients able to choose host names under a wildcard
domain cannot grow a worker without bound. An entry is a plain tuple.

Underneath, c-ares (1.23 and later) keeps its own cache of whole answers for
their TTL, at most an hour, which pycares gives no way to turn off or bound:
about 2.7 KB a name, outside any limit of fastfog's. So a channel serves
``CHANNEL_NAMES`` new names, then a fresh one takes over and the old one (and
its cache) is closed once its last lookups have had their time. Within a
channel an answer is never re-asked before its TTL ends, whatever ``max_ttl``
says. Negative answers are cached by fastfog alone.
"""

import asyncio
import time

import aiodns
import pycares

DEFAULT_CACHE = {"max_entries": 100_000, "max_bytes": 32 << 20, "min_ttl": 0.0, "max_ttl": 300.0,
                 "negative_ttl": 5.0}
CHANNEL_NAMES = 1024  # new names a c-ares channel looks up before a fresh one takes over
ENTRY_BYTES = 200  # what an entry costs beside its texts: its tuple, the dict slot, the str headers
_QUERY_TYPES = {"ip": ("A", "AAAA"), "ip4": ("A",), "ip6": ("AAAA",)}
_NOT_FOUND = {pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENONAME}


class ResolveError(Exception):
    """A lookup that produced no address; ``timeout`` tells a 504 from a 502."""

    def __init__(self, message, timeout=False):
        super().__init__(message)
        self.timeout = timeout


def entry_bytes(name, value):
    """What fastfog counts an entry as costing (``value``: addresses, or a ResolveError)."""
    if type(value) is tuple:
        return ENTRY_BYTES + len(name) + sum(len(address) + 50 for address in value)
    return ENTRY_BYTES + len(name) + 150


class Resolver:
    """Name → addresses, cached. One per worker process, created on its event loop."""

    def __init__(self, nameservers=(), timeout=5.0, network="ip", cache=None, loop=None):
        self._loop = loop or asyncio.get_running_loop()
        self._timeout = timeout
        self._types = _QUERY_TYPES[network]
        settings = dict(DEFAULT_CACHE)
        settings.update({key: value for key, value in (cache or {}).items() if value is not None})
        self._max_entries, self.max_bytes = settings["max_entries"], settings["max_bytes"]
        self._min_ttl, self._max_ttl = settings["min_ttl"], settings["max_ttl"]
        self._negative_ttl = settings["negative_ttl"]
        self._cache = {}  # name -> (expires, addresses or ResolveError)
        self.cache_bytes = 0
        self._inflight = {}
        self._nameservers = list(nameservers) or None
        self._resolver = self._new_channel()
        self._channel_names = 0
        self._retiring = set()

    def _new_channel(self):
        # c-ares retries a lost UDP packet on its own schedule, which can end before
        # dns_timeout; _query asks again until the whole budget is spent (_lookup holds it).
        return aiodns.DNSResolver(nameservers=self._nameservers, loop=self._loop,
                                  timeout=max(self._timeout / 4, 0.1), tries=4)

    def _rotate_channel(self):
        """A fresh channel takes over; the old one (and c-ares' cache in it) closes once every
        lookup it began has ended (none outlives dns_timeout)."""
        old, self._resolver, self._channel_names = self._resolver, self._new_channel(), 0
        self._retiring.add(old)

        def close():
            self._retiring.discard(old)
            old.cancel()

        self._loop.call_later(self._timeout + 1.0, close)

    def close(self):
        self._resolver.cancel()
        for old in list(self._retiring):
            old.cancel()

    @property
    def cache_entries(self):
        return len(self._cache)

    def cached(self, name):
        """The cached addresses of ``name``, or None: no lookup, no waiting (ResolveError if cached)."""
        entry = self._cache.get(name)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._forget(name)
            return None
        if type(value) is not tuple:
            raise value
        return value

    def _forget(self, name):
        _, value = self._cache.pop(name)
        self.cache_bytes -= entry_bytes(name, value)

    async def resolve(self, name):
        """The addresses of ``name`` (text, IPv4 first), or ResolveError."""
        addresses = self.cached(name)
        if addresses is not None:
            return addresses
        pending = self._inflight.get(name)
        if pending is None:
            pending = self._loop.create_task(self._lookup(name))
            self._inflight[name] = pending
            pending.add_done_callback(lambda _, name=name: self._inflight.pop(name, None))
        return await asyncio.shield(pending)

    async def _query(self, name, query_type, deadline):
        """One question, asked again while c-ares gives up (a timeout) before ``deadline``."""
        while True:
            try:
                return await self._resolver.query_dns(name, query_type)
            except aiodns.error.DNSError as err:
                if err.args[0] != pycares.errno.ARES_ETIMEOUT or self._loop.time() >= deadline:
                    raise

    async def _lookup(self, name):
        """Every question of ``network`` within dns_timeout; the addresses of those answered. A
        question still unanswered at the deadline (an AAAA a server ignores, say) does not throw
        away the addresses of another (as Go's resolver)."""
        self._channel_names += 1
        if self._channel_names > CHANNEL_NAMES:
            self._rotate_channel()
        deadline = self._loop.time() + self._timeout
        queries = [self._loop.create_task(self._query(name, query_type, deadline)) for query_type in self._types]
        done, pending = await asyncio.wait(queries, timeout=self._timeout)
        for query in pending:
            query.cancel()
        results = [query.exception() or query.result() for query in queries if query in done]  # A first
        if pending and not any(not isinstance(result, BaseException) and result.answer for result in results):
            raise ResolveError(f"lookup {name}: i/o timeout", timeout=True)
        addresses, ttl, failure = [], None, None
        for result in results:
            if isinstance(result, aiodns.error.DNSError):
                failure = failure or result
                continue
            if isinstance(result, BaseException):
                raise result
            for record in result.answer:
                if record.type in (pycares.QUERY_TYPE_A, pycares.QUERY_TYPE_AAAA):
                    addresses.append(record.data.addr)
                    ttl = record.ttl if ttl is None else min(ttl, record.ttl)
        if addresses:
            addresses = tuple(addresses)
            self._store(name, time.monotonic() + min(max(ttl, self._min_ttl), self._max_ttl), addresses)
            return addresses
        error = self._error(name, failure)
        if not error.timeout:
            self._store(name, time.monotonic() + self._negative_ttl, error)
        raise error

    @staticmethod
    def _error(name, failure):
        if failure is None or failure.args[0] in _NOT_FOUND:
            return ResolveError(f"lookup {name}: no such host")
        if failure.args[0] == pycares.errno.ARES_ETIMEOUT:
            return ResolveError(f"lookup {name}: i/o timeout", timeout=True)
        if failure.args[0] == pycares.errno.ARES_ESERVFAIL:
            return ResolveError(f"lookup {name}: server misbehaving")
        return ResolveError(f"lookup {name}: {failure.args[1] if len(failure.args) > 1 else failure}")

    def _store(self, name, expires, value):
        """Cache ``value`` (addresses or a ResolveError) for ``name``, within both bounds: expired
        entries go first, then the oldest."""
        size = entry_bytes(name, value)
        if self._max_entries <= 0 or size > self.max_bytes:
            return
        if name in self._cache:
            self._forget(name)
        cache = self._cache
        if len(cache) >= self._max_entries or self.cache_bytes + size > self.max_bytes:
            now = time.monotonic()
            for key in [key for key, (old_expires, _) in cache.items() if old_expires <= now]:
                self._forget(key)
            while cache and (len(cache) >= self._max_entries or self.cache_bytes + size > self.max_bytes):
                self._forget(next(iter(cache)))
        cache[name] = (expires, value)
        self.cache_bytes += size
