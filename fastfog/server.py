"""``fastfog serve``: the listener, accepting, signals and graceful exit.

The listening socket is a plain non-blocking socket watched by the loop, and
each readable event accepts a batch of connections, so the proxy owns every
client socket from the start (see proxy.py). SIGTERM, SIGINT and SIGUSR2 stop
accepting at once, then wait for forwarded requests to finish and open tunnels
to close or go idle, at most ``exit_timeout``; what is left is closed and
logged ``active_at_termination``. SIGHUP reloads the configuration (see
reload.py), as does ``POST /reload`` on the admin socket. Under Einhorn the
listener is the one Einhorn passes down; with ``--workers`` this runs in each
worker process (see supervisor.py).
"""

import asyncio
import errno
import gc
import json
import os
import resource
import signal
import socket
import time
from collections.abc import Callable

import uvloop

from fastfog import logs, service, stats, unixhttp
from fastfog.connection import peer_text
from fastfog.config import Config
from fastfog.control import WorkerRole, answer_supervisor
from fastfog.dns import Resolver
from fastfog.hotpaths import accept_batch
from fastfog.keepalive import KeepAlive
from fastfog.logs import Log
from fastfog.metrics import StatsdSink, serve_prometheus
from fastfog.proxy import Proxy
from fastfog.reload import Reloader
from fastfog.service import activated_listener
from fastfog.webhooks import Webhooks

ACCEPT_BATCH = 64
WEBHOOK_DRAIN_SECONDS = 2.0  # at exit, events still queued get this long to go out
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
PROCESS_SIGNALS = (*SHUTDOWN_SIGNALS, signal.SIGHUP)


def hold_signals():
    """Block the signals fastfog handles until its handlers exist (``release_signals``): one that
    arrives in between (a reload right after a start, say) waits instead of killing the process
    by its default action, and is handled once released."""
    signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)


def release_signals():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PROCESS_SIGNALS)


def open_listener(ip, port, reuse_port=False, listen=True, keepalive=None):
    """A listening TCP socket on ``ip:port``; an empty ip means every address, IPv6 and IPv4.
    ``listen=False``: only bound (see workers.reserve_port). ``keepalive``: a KeepAlive that
    every accepted connection inherits."""
    if ip == "":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            address = ("::", port)
        except OSError:  # no IPv6 on this host
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("0.0.0.0", port)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        address = (ip, port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _tune_listener(sock, keepalive)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _tune_listener(sock, keepalive=None):
    """Options every accepted connection inherits (system calls here, none per connection):
    TCP_NODELAY, since answers are small and must not wait for an ACK; TCP_DEFER_ACCEPT,
    since clients speak first (a request head, a PROXY header or a ClientHello), so accept()
    hands a connection over once its first bytes are in and the first read never waits; and
    TCP keep-alive (see keepalive.py)."""
    if keepalive is not None:
        keepalive.apply(sock)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)


def einhorn_listener():
    """Under Einhorn (its master our parent), the listener it opened for us: ``EINHORN_FD_0``."""
    fd, master = os.environ.get("EINHORN_FD_0"), os.environ.get("EINHORN_MASTER_PID")
    if fd is None or master is None or not master.isdigit() or int(master) != os.getppid():
        return None
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(False)
    return sock


def passed_listener(keepalive):
    """The listener a process manager passed down (Einhorn's, or systemd's socket activation),
    with the options fastfog's own have; None when there is none."""
    listener = einhorn_listener() or activated_listener()
    if listener is not None:
        _tune_listener(listener, keepalive)
    return listener


def einhorn_ack(log):
    """Tell Einhorn this worker is up (``worker:ack`` on ``EINHORN_SOCK_PATH``), as go-einhorn does."""
    path, master = os.environ.get("EINHORN_SOCK_PATH"), os.environ.get("EINHORN_MASTER_PID")
    if path is None or master is None or not master.isdigit() or int(master) != os.getppid():
        return
    message = json.dumps({"command": "worker:ack", "pid": os.getpid()}, separators=(",", ":"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
            control.settimeout(5)
            control.connect(path)
            control.sendall(message.encode() + b"\n")
    except OSError as err:
        log.error("could not acknowledge to Einhorn", {"error": str(err), "path": path})


def local_addresses():
    """This host's interface addresses (Linux /proc), for the self-connection check."""
    found = set()
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            for line in table:
                digits = line.split()[0]
                found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(digits)))
    except OSError:
        pass
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as trie:
            previous = None
            for line in trie:
                words = line.split()
                if words[:1] == ["/32"] and "LOCAL" in words and previous:
                    found.add(previous)
                elif len(words) == 2 and words[0] in ("|--", "+--"):
                    previous = words[1]
    except OSError:
        pass
    return sorted(found)


def own_addresses(listener):
    """Every address of this host, whatever the listener is bound to: a CONNECT to any of them
    at the listen port is a self connection (a client on another interface reaches the same
    proxy through the host's routing)."""
    host = listener.getsockname()[0]
    found = set(local_addresses())
    if host not in ("::", "0.0.0.0"):
        found.add(host)
    return sorted(found)


async def serve(config: Config, log: Log, ready: Callable[[tuple], None] | None = None,
                stop: asyncio.Future | None = None, reload: Callable[[], Config] | None = None,
                worker: WorkerRole | None = None) -> None:
    """Serve until a shutdown signal, or until the future ``stop`` is done (embedding, tests);
    ``ready(address)`` is called once listening. ``reload()`` returns a freshly loaded Config
    (raising ConfigError): SIGHUP and the admin socket's POST /reload call it. ``worker``: a
    control.WorkerRole when this is one of several processes (see supervisor.py)."""
    loop = asyncio.get_running_loop()
    log.attach(loop)
    try:
        keepalive = KeepAlive(config.tcp_keepalive)
        if worker is not None:
            listener = open_listener(config.ip, worker.port, reuse_port=True, keepalive=keepalive)
        else:
            listener = passed_listener(keepalive) or open_listener(config.ip, config.port, keepalive=keepalive)
    except OSError as err:
        raise ListenError(f"cannot listen on {config.ip or '*'}:{config.port}: {err.strerror or err}") from None
    address = listener.getsockname()
    resolver = Resolver(config.resolver_addresses, config.dns_timeout, config.network, config.dns_cache)
    if config.server_tls is not None:
        for warning in config.server_tls.warnings:
            log.warning(warning, {})
    proxy = Proxy(config, resolver, log, address[1], own_addresses(listener))
    log.on_dropped = lambda count: proxy.metrics.count_locally("fastfog.log.dropped", count)
    if config.acl is not None:
        for warning in config.acl.warnings:
            log.warning(warning, {"acl_file": config.acl.path})
    for warning in config.warnings():
        log.warning(warning, {})
    stopping = stop if stop is not None else loop.create_future()
    owner = stop is None and worker is None  # the process is ours alone: tell its service manager
    reloader = Reloader(proxy, log, reload, announce=owner)
    started = time.time()

    acceptor = Acceptor(loop, listener, proxy, log)

    def on_signal(signum):
        if not stopping.done():
            stopping.set_result(signum)

    if stop is None:  # the process is ours: so are its signals and its loop's error reports
        loop.set_exception_handler(unexpected_error_reporter(log))
        for signum in SHUTDOWN_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, reloader.on_signal, "SIGHUP")
        release_signals()  # held since run() began: one that came meanwhile is handled now
    acceptor.start()
    conntrack = proxy.conntrack
    sweeper = loop.create_task(conntrack.sweep(config.idle_timeout)) if config.idle_timeout else None
    stats_socket = None
    if config.stats_socket_dir:
        try:
            stats_socket = await stats.start(proxy, config.stats_socket_dir, config.stats_socket_file_mode)
        except OSError as err:
            raise ListenError(f"stats_socket_dir: {config.stats_socket_dir}: {err.strerror or err}") from None
    exporters = await _start_metrics(config, proxy, log, worker)
    if config.webhook is not None:
        proxy.records.webhooks = Webhooks(config.webhook, log, proxy.metrics)
    admin_socket = supervisor = None
    if worker is not None:  # the supervisor serves the admin socket and asks us
        supervisor = loop.create_task(answer_supervisor(worker, {
            "metrics": proxy.metrics.snapshot,
            "status": lambda: _status(proxy, reloader, started),
            "reload": lambda: reloader.reload("admin socket"),
            "sighup": lambda: reloader.reload("SIGHUP"),
        }, lambda: on_signal(signal.SIGTERM)))
    elif config.admin_socket:
        try:
            admin_socket = await _start_admin_socket(config.admin_socket, proxy, reloader, started)
        except OSError as err:
            raise ListenError(f"admin_socket: {config.admin_socket}: {err.strerror or err}") from None
    log.info("listening", {"address": peer_text(address)})
    einhorn_ack(log)
    if owner:
        service.notify("READY=1")
    if ready is not None:
        ready(address)
    try:
        signum = await stopping
        if owner:
            service.notify("STOPPING=1")
        log.info("quitting gracefully", {"signal": signal.Signals(signum).name if signum else None})
    finally:
        if sweeper is not None:
            sweeper.cancel()
        if supervisor is not None:
            supervisor.cancel()
        acceptor.stop()
        listener.close()
        proxy.serving = False
        proxy.close_connections()
        await conntrack.drain(proxy.exchanges, config, log)
        proxy.abort_exchanges()
        conntrack.close_all(None)
        if stats_socket is not None:
            stats.stop(*stats_socket)
        if admin_socket is not None:
            unixhttp.stop(admin_socket, config.admin_socket)
        for exporter in exporters:
            exporter.close()
        proxy.pool.close()
        resolver.close()
        hooks = proxy.records.webhooks
        if hooks is not None:
            await hooks.drain(WEBHOOK_DRAIN_SECONDS)
            hooks.close()
        log.flush()
        log.attach(None)  # what the reader has not taken yet goes out now


class Acceptor:
    """Takes connections off the listener in batches, and outlives running out of resources.

    When accept fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the
    listener stays readable: accepting again at once would spin the loop and flood the log.
    So the listener is left alone until a connection closes or ``BACKOFF`` seconds pass,
    whichever is first; connections already open are served meanwhile. The condition is logged
    at most once a second with the number of accepts refused, and counted
    (``fastfog.accept.exhausted``)."""

    BACKOFF = 0.1
    REPORT_EVERY = 1.0
    EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

    def __init__(self, loop, listener, proxy, log):
        self.loop, self.listener, self.proxy, self.log = loop, listener, proxy, log
        self.fd = listener.fileno()
        self.watching = False
        self.refused = 0  # since the last record
        self.reported = -self.REPORT_EVERY
        self.retry = None

    def start(self):
        if not self.watching:
            self.watching = True
            self.loop.add_reader(self.fd, self.ready)

    def stop(self):
        self._stop_retry()
        if self.watching:
            self.watching = False
            self.loop.remove_reader(self.fd)

    def ready(self):
        if self._take():
            # The connections just taken have dialed their upstreams, and a dial to a nearby
            # host is often complete already: handle it now, not one loop turn later.
            self.proxy.poller.dispatch()

    def _take(self):
        """Accept what is waiting (up to a batch); whether anything was."""
        taken, error = accept_batch(self.listener, ACCEPT_BATCH, self.proxy.accept)
        if error is not None:
            if error.errno in self.EXHAUSTED:
                self._exhausted(error)
            else:  # the connection went away before it was taken, say: the next one
                self.log.error("accept failed", {"error": str(error)})
        return taken > 0

    def _exhausted(self, err):
        self.refused += 1
        self.proxy.metrics.count_locally("fastfog.accept.exhausted")
        now = time.monotonic()
        if now - self.reported >= self.REPORT_EVERY:
            self.reported = now
            self.log.error("accept failed: out of resources; new connections wait",
                           {"error": str(err), "refused": self.refused})
            self.refused = 0
        self.stop()
        self.retry = self.loop.call_later(self.BACKOFF, self._resume)
        self.proxy.on_close = self._resume  # a descriptor freed: try again at once

    def _resume(self):
        self._stop_retry()
        if self.proxy.serving:
            self.start()

    def _stop_retry(self):
        self.proxy.on_close = None
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None


def raise_descriptor_limit(log):
    """Raise the soft limit on open descriptors to the hard one (as Go's runtime does): a proxy
    holds two per tunnel, and the usual soft limit of 1024 is a few hundred tunnels."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:  # the kernel's ceiling is then the real one
            with open("/proc/sys/fs/nr_open", encoding="ascii") as ceiling:
                hard = int(ceiling.read())
        if hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            soft = hard
    except (OSError, ValueError) as err:
        log.warning("could not raise the open file limit", {"error": str(err)})
        return
    log.info("open file limit", {"limit": soft})


def unexpected_error_reporter(log):
    """A loop exception handler: what a callback let escape (a bug) becomes one record in the log,
    in its format, instead of a traceback in another."""
    def report(loop, context):
        error = context.get("exception")
        log.error("unexpected error", {"error": f"{type(error).__name__}: {error}" if error is not None
                                       else context.get("message", "")})
    return report


class _StatsdGauges:
    """Gauges go to statsd every GAUGE_PERIOD seconds (counters and timings go as they happen)."""

    GAUGE_PERIOD = 10.0

    def __init__(self, loop, metrics, sink, labels=()):
        """``labels``: the worker's, when there are several (each sends its own gauges)."""
        self.metrics, self.sink, self.labels = metrics, sink, labels
        self.task = loop.create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(self.GAUGE_PERIOD)
            for name, read in self.metrics.gauges.items():
                self.sink.add(name, read(), "g", self.labels)

    def close(self):
        self.task.cancel()
        self.sink.close()


async def _start_metrics(config, proxy, log, worker=None):
    """The exporters the config asks for (Prometheus endpoint, statsd sink); each has close().
    A worker has no Prometheus endpoint of its own: the supervisor adds up every worker's."""
    exporters = []
    metrics = proxy.metrics
    if config.expose_prometheus_metrics and worker is None:
        try:
            exporters.append(await serve_prometheus(metrics.prometheus_text, config.prometheus_listen_ip,
                                                    config.prometheus_port, config.prometheus_endpoint))
        except OSError as err:
            raise ListenError(f"cannot serve Prometheus metrics on {config.prometheus_listen_ip}:"
                              f"{config.prometheus_port}: {err.strerror or err}") from None
        log.info("serving Prometheus metrics", {"address": f"{config.prometheus_listen_ip}:{config.prometheus_port}",
                                                "endpoint": config.prometheus_endpoint})
    if config.statsd_address:
        loop = asyncio.get_running_loop()
        reported = [0.0]

        def dropped():
            metrics.count_locally("fastfog.statsd.dropped")
            if time.monotonic() - reported[0] >= 60:  # at most one record a minute
                reported[0] = time.monotonic()
                log.warning("statsd datagrams dropped", {"statsd_address": config.statsd_address,
                                                         "dropped_total": sink.dropped})

        try:
            sink = StatsdSink(loop, config.statsd_address, dropped)
        except OSError as err:  # a name that does not resolve, say
            raise ListenError(f"statsd_address: {config.statsd_address}: {err.strerror or err}") from None
        metrics.statsd = sink
        exporters.append(_StatsdGauges(loop, metrics, sink, () if worker is None else (("worker", worker.index),)))
    return exporters


async def _start_admin_socket(path, proxy, reloader, started):
    """``admin_socket``: POST /reload (the outcome; 422 when the new files were refused) and
    GET /status (what is loaded and what is open). Mode 0600: only fastfog's user may use it."""
    async def reload():
        outcome = await reloader.reload("admin socket")
        return (200 if outcome["ok"] else 422), outcome

    return await unixhttp.serve(path, 0o600, {("POST", "/reload"): reload,
                                              ("GET", "/status"): lambda: (200, _status(proxy, reloader, started))})


def _status(proxy, reloader, started):
    """What is loaded and what is open (GET /status)."""
    config = proxy.config
    return {
        "config_file": config.source,
        "acl": None if config.acl is None else config.acl.summary(),
        "tls": config.server_tls is not None,
        "started": logs.rfc3339(started),
        "uptime_seconds": round(time.time() - started, 3),
        "reloads": reloader.count,
        "last_reload": reloader.last,
        "open_tunnels": len(proxy.conntrack),
        "open_connections": len(proxy.connections),
        "dns_cache": {"entries": proxy.resolver.cache_entries, "bytes": proxy.resolver.cache_bytes,
                      "max_bytes": proxy.resolver.max_bytes},
        "serving": proxy.serving,
    }


class ListenError(Exception):
    """A socket fastfog was told to serve on cannot be opened (in use, no permission, no such address)."""


def run(config: Config, reload: Callable[[], Config] | None = None, worker: WorkerRole | None = None) -> int:
    """Run the proxy on uvloop until it is told to stop; the process's exit code."""
    hold_signals()  # before the listener opens: see serve()
    # Workers share standard error: each write must be whole lines, small enough to be atomic.
    log = Log(config.log_format, atomic_lines=worker is not None, max_backlog=config.log_buffer_bytes,
              level=config.log_level)
    if worker is None:  # a worker inherits its supervisor's
        raise_descriptor_limit(log)

    def ready(address):
        # Everything built so far (config, ACL, address tables) lives as long as the process:
        # keep the cyclic collector from walking it again and again (latency spikes). Done here,
        # for the fastfog process, not in serve(), which may be embedded in someone else's.
        gc.collect()
        gc.freeze()

    try:
        uvloop.run(serve(config, log, ready=ready, reload=reload, worker=worker))
    except ListenError as err:
        log.attach(None)  # the loop is gone: write at once
        log.error("cannot start", {"error": str(err)})
        return 1
    return 0
