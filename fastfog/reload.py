"""Validated live reload (SPEC 4.3, 5.3): SIGHUP, and ``POST /reload`` on the admin socket.

The new config, ACL, users file, CA files and CRLs are loaded and checked
completely first, exactly as at start-up, in a thread of their own: a large
ACL takes a good fraction of a second to parse and compile, and traffic goes
on being served with the old set meanwhile. On any error the proxy keeps
serving with what it has and the error is logged (and answered, on the admin
socket). On success the proxy takes the new set in one step, between two
loop callbacks: requests that start afterwards see the new rules; open
tunnels and requests already decided are untouched. Reloads asked for while
one is loading wait their turn. A summary of what
changed is logged: roles added, removed and changed, the default rule, the
global lists, and other settings.

Some settings belong to the process (its listener, resolver, log format,
sockets): a change to one of those is reported as needing a restart and does
not take effect. A role plugin module is not imported again.
"""

import asyncio
import gc
import sys
import time

from fastfog import service
from fastfog.config import KEYS, ConfigError

RESTART_ONLY = frozenset({
    "ip", "port", "stats_socket_dir", "stats_socket_file_mode", "admin_socket", "log_format", "log_level",
    "resolver_addresses", "network", "dns_timeout", "dns_cache", "transport_max_idle_conns",
    "transport_max_idle_conns_per_host", "workers", "expose_prometheus_metrics", "prometheus_endpoint",
    "prometheus_listen_ip", "prometheus_port", "statsd_address", "webhook", "tcp_keepalive", "log_buffer_bytes",
})
LOADING_SWITCH_INTERVAL = 0.0005  # seconds: how long the loop may wait for the GIL during a load
# Compared through what they load (the ACL's rules, the TLS files), not as settings.
LOADED = frozenset({"acl_file", "tls", "mitm_ca_cert_file", "mitm_ca_key_file"})


def _rules(acl):
    if acl is None:
        return {}
    return {name: rule.fingerprint for name, rule in acl.rules.items()}


def changes(old, new):
    """What differs between two configs, as short sentences for the reload record."""
    found = []
    old_rules, new_rules = _rules(old.acl), _rules(new.acl)
    found += [f"role added: {name}" for name in sorted(new_rules.keys() - old_rules.keys())]
    found += [f"role removed: {name}" for name in sorted(old_rules.keys() - new_rules.keys())]
    found += [f"role changed: {name}" for name in sorted(old_rules.keys() & new_rules.keys())
              if old_rules[name] != new_rules[name]]
    if (old.acl is None) != (new.acl is None):
        found.append("ACL " + ("removed" if new.acl is None else "added"))
    elif old.acl is not None:
        old_default = old.acl.default.fingerprint if old.acl.default else None
        new_default = new.acl.default.fingerprint if new.acl.default else None
        if old_default != new_default:
            found.append("default rule changed")
        if old.acl.lists != new.acl.lists:
            found.append("global allow/deny lists changed")
    for key in KEYS:
        if key.name in LOADED or getattr(old, key.name) == getattr(new, key.name):
            continue
        found.append(f"{key.name} changed" + (" (takes effect after a restart)" if key.name in RESTART_ONLY else ""))
    if new.server_tls is not None:
        found.append("TLS files re-read")
    if new.mitm is not None:
        found.append("MITM CA re-read")
    return found


class Reloader:
    """Reloads ``proxy`` from ``load()`` (a function returning a new Config, or raising ConfigError)."""

    def __init__(self, proxy, log, load, announce=False):
        """``announce``: tell the service manager (systemd) while a reload runs."""
        self.proxy, self.log, self.load, self.announce = proxy, log, load, announce
        self.count = 0
        self.last = None  # the last outcome, for the admin socket's /status
        self._turn = asyncio.Lock()
        self._signalled = set()  # reloads started by a signal, kept until done

    def on_signal(self, trigger):
        """A signal handler's reload: started now, finished in the background."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def reload(self, trigger):
        """Load and validate (in a thread), then swap; the outcome as a dict ({"ok", "changes"}
        or {"ok", "error"})."""
        async with self._turn:
            if self.announce:
                service.reloading()
            try:
                return await self._reload(trigger)
            finally:
                if self.announce:
                    service.notify("READY=1")

    async def _load_aside(self):
        """``load()`` and the changes it brings, in a thread, with the cyclic collector paused
        meanwhile: a collection over the many objects a large ACL is made of would hold the GIL,
        and so the loop, for 100 ms and more at a time (the thread otherwise gives the loop its
        turn every few ms)."""
        def load():
            config = self.load()
            return config, changes(self.proxy.config, config)

        collecting, interval = gc.isenabled(), sys.getswitchinterval()
        gc.disable()
        # The loop waits for the GIL each time it wakes while the thread holds it: up to the
        # switch interval (5 ms by default) per wake, several wakes per request. Shorter for now.
        sys.setswitchinterval(LOADING_SWITCH_INTERVAL)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, load)
        finally:
            sys.setswitchinterval(interval)
            if collecting:
                gc.enable()

    async def _reload(self, trigger):
        started = time.monotonic()
        if self.load is None:
            outcome = {"ok": False, "error": "this proxy was not started from a config it can read again"}
        else:
            try:
                config, found = await self._load_aside()
                problems = config.not_yet_supported()
                if problems:
                    raise ConfigError("; ".join(problems))
            except ConfigError as err:
                outcome = {"ok": False, "error": str(err)}
            except Exception as err:  # a bug or an unexpected file problem: keep serving regardless
                outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            else:
                self.proxy.reconfigure(config)
                if gc.get_freeze_count():  # the process froze its start-up heap (server.run):
                    gc.freeze()  # the new configuration lives as long, keep collections off it too
                self.count += 1
                outcome = {"ok": True, "changes": found}
                for warning in (config.acl.warnings if config.acl is not None else ()):
                    self.log.warning(warning, {"acl_file": config.acl.path})
                for warning in (config.server_tls.warnings if config.server_tls is not None else ()):
                    self.log.warning(warning, {})
        outcome["trigger"] = trigger
        outcome["seconds"] = round(time.monotonic() - started, 3)
        if outcome["ok"]:
            self.log.info("configuration reloaded", {"trigger": trigger, "changes": outcome["changes"]})
        else:
            self.log.error("configuration reload failed; still serving with the previous configuration",
                           {"trigger": trigger, "error": outcome["error"]})
        self.last = outcome
        return outcome
