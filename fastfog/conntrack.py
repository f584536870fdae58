"""Conntrack: the open tunnels of one worker, from the moment they are relayed to their close.

It keeps the set of open tunnels and, for each, what its close record will
report; it closes a tunnel's accounting once its relay is done (the tunnel
limit's count, the close record and metrics via records.py); it sweeps idle
tunnels (``idle_timeout``), drains them at shutdown (``exit_timeout``) and
lists them for the stats socket (stats.py), as Smokescreen's package of the
same name does.

A tunnel's opening and close are on every tunnel's path, so ``Tunnel`` and
``ConntrackCore`` (the set, ``opened`` and ``closed``) are compiled
(hot/conntrack.pxi, twin fastfog/reference/conntrack.py); ``Conntrack`` adds
what runs now and then.
"""

import asyncio
import time

from fastfog import logs
from fastfog.hotpaths import ConntrackCore, Tunnel
from fastfog.reference.conntrack import CLOSE_FIELDS

__all__ = ["CLOSE_FIELDS", "Conntrack", "Tunnel"]


class Conntrack(ConntrackCore):
    """The open tunnels; ``on_close()`` is called each time one closes."""

    def close_all(self, reason):
        """Force-close every open tunnel (the end of a graceful shutdown); each logs its close record."""
        for tunnel in list(self.tunnels):
            tunnel.active_at_termination = True
            tunnel.relay.close(reason)

    def idle(self, now, seconds):
        """The tunnels that moved no byte either way for ``seconds`` until ``now`` (monotonic)."""
        return [tunnel for tunnel in self.tunnels if now - tunnel.relay.last_activity >= seconds]

    async def sweep(self, idle_timeout):
        """Close tunnels idle for idle_timeout (checked a few times per timeout), until cancelled."""
        period = min(1.0, idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            for tunnel in self.idle(time.monotonic(), idle_timeout):
                tunnel.relay.close("idle timeout")

    async def drain(self, exchanges, config, log):
        """Wait for ``exchanges`` (forwarded requests) to finish and tunnels to close or go idle,
        at most exit_timeout; the caller closes what is left."""
        started = time.monotonic()
        idle_after = config.idle_timeout or config.exit_timeout
        while self.tunnels or exchanges:
            now = time.monotonic()
            if now - started >= config.exit_timeout:
                log.info("Timed out waiting for connections to become idle: closing all remaining connections.")
                return
            if not exchanges and len(self.idle(now, idle_after)) == len(self.tunnels):
                log.info("All connections are idle: closing all remaining connections.")
                return
            await asyncio.sleep(min(0.1, config.exit_timeout - (now - started)))

    def snapshot(self):
        """The open tunnels, as the stats socket reports them (Smokescreen's shape)."""
        now = time.monotonic()
        return [{
            "role": tunnel.role,
            "rhost": tunnel.requested_host,
            "raddr": tunnel.outbound_remote_addr,
            "created": logs.rfc3339(tunnel.started),
            "bytesIn": tunnel.relay.bytes_in,
            "bytesOut": tunnel.relay.bytes_out,
            "secondsSinceLastActivity": round(now - tunnel.relay.last_activity, 3),
            "proxyType": tunnel.proxy_type,
        } for tunnel in list(self.tunnels)]
