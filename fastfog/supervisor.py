"""``--workers N``: N proxy processes sharing one port, under a supervisor.

Each worker is a ``fastfog serve`` process of its own (started afresh, not
forked from a running loop) with its own listening socket on the same address:
SO_REUSEPORT makes the kernel spread new connections over them. Each has its
own loop, resolver, DNS cache, upstream pool and limits, so a limit applies
per worker. The supervisor:

- reserves the port with a socket that is bound but never listens (so it never
  takes a connection), which also makes ``--listen-port 0`` work;
- starts the workers, and starts a new one when one dies unexpectedly;
- passes SIGTERM, SIGINT, SIGUSR2 and SIGHUP on, and exits once all workers have
  stopped (each drains its connections as a single process does);
- serves the Prometheus endpoint with every worker's figures added up, and
  the admin socket (``POST /reload`` reloads every worker, ``GET /status``
  reports each), asking the workers over their control channels (control.py).
"""

import asyncio
import os
import signal
import socket
import sys
import time

import uvloop

from fastfog import logs, service, unixhttp
from fastfog.connection import peer_text
from fastfog.control import ENVIRONMENT, read_message, send_message
from fastfog.logs import Log
from fastfog.metrics import merge, render_prometheus, serve_prometheus
from fastfog.server import SHUTDOWN_SIGNALS, hold_signals, open_listener, raise_descriptor_limit, release_signals

RESTART_DELAY = 1.0  # a worker that keeps dying is started again at most once a second
STARTUP_SECONDS = 10.0  # a first run that exits with an error this soon could not start (its log says why)
ASK_TIMEOUT = 10.0


class Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, index):
        self.index = index
        self.process = None
        self.reader = self.writer = None
        self.lock = asyncio.Lock()  # one request at a time on the channel
        self.asked = 0  # requests numbered, so that a late answer is never taken for the next one
        self.starts = 0
        self.started_at = 0.0
        self.last_figures = None  # its counters and histograms at the last scrape it answered

    async def start(self, command, port):
        if self.writer is not None:  # the channel of the worker this one replaces
            self.writer.close()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        environment = {**os.environ, ENVIRONMENT: f"{self.index}:{port}:{child.fileno()}"}
        try:
            self.process = await asyncio.create_subprocess_exec(*command, env=environment, pass_fds=(child.fileno(),))
        finally:
            child.close()
        self.reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        self.starts += 1
        self.started_at = time.monotonic()

    async def ask(self, op, timeout=ASK_TIMEOUT):
        """The worker's answer to ``op``: {"ok": True, "value": ...} or {"ok": False, "error": ...}."""
        async with self.lock:
            self.asked += 1
            try:
                await send_message(self.writer, {"op": op, "id": self.asked})
                reply = await asyncio.wait_for(self._answer(self.asked), timeout)
            except (OSError, asyncio.TimeoutError) as err:
                return {"ok": False, "error": f"worker {self.index} did not answer: {str(err) or 'timeout'}"}
        return reply if reply is not None else {"ok": False, "error": f"worker {self.index} is gone"}

    async def _answer(self, number):
        while True:
            reply = await read_message(self.reader)
            if reply is None or reply.get("id") == number:
                return reply

    def signal(self, signum):
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


class Figures:
    """The metrics the supervisor serves: every worker's, added up, and never going backwards.

    A counter that drops reads as a reset to Prometheus. So the figures a worker had at its last
    scrape are carried on once it dies (its replacement counts from zero beside them), and a
    worker that does not answer a scrape in time is counted with its last figures, logged, and
    shown in ``fastfog_workers_unreachable``. Gauges are only ever a live worker's own."""

    SCRAPE_TIMEOUT = 3.0

    def __init__(self, workers, log):
        self.workers, self.log = workers, log
        self.carried = {"counters": {}, "histograms": {}, "gauges": {}}

    def worker_exited(self, worker):
        if worker.last_figures is not None:
            self.carried = merge([self.carried, worker.last_figures])
            worker.last_figures = None

    async def render(self):
        replies = await asyncio.gather(*(worker.ask("metrics", self.SCRAPE_TIMEOUT) for worker in self.workers))
        snapshots, unreachable = [self.carried], 0
        for worker, reply in zip(self.workers, replies, strict=True):
            if reply["ok"]:
                snapshot = reply["value"]
                labels = (("worker", str(worker.index)),)
                snapshots.append({**snapshot, "process": [(labels, figures) for _, figures in snapshot["process"]]})
                worker.last_figures = {**snapshot, "gauges": {}, "process": []}
                continue
            unreachable += 1
            self.log.error("a worker did not answer the metrics scrape; its last figures are served",
                           {"worker": worker.index, "error": reply["error"]})
            if worker.last_figures is not None:
                snapshots.append(worker.last_figures)
        merged = merge(snapshots)
        merged["gauges"]["fastfog.workers.unreachable"] = unreachable
        return render_prometheus(merged)


def reserve_port(ip, port):
    """A socket bound to ip:port with SO_REUSEPORT that never listens: the port stays ours while
    workers come and go, and port 0 becomes a real one. Returns the socket."""
    return open_listener(ip, port, reuse_port=True, listen=False)


def supervise(config, command):
    """Run ``config.workers`` workers (each ``command``, a fastfog serve command line) until told to
    stop; the process's exit code."""
    hold_signals()  # until _supervise handles them
    log = Log(config.log_format, max_backlog=config.log_buffer_bytes, level=config.log_level)
    raise_descriptor_limit(log)  # the workers inherit it
    if os.environ.get("EINHORN_FD_0") is not None:
        log.error("cannot start", {"error": "under Einhorn, let Einhorn run the processes (einhorn -n N) "
                                            "instead of --workers"})
        return 1
    try:
        reserved = reserve_port(config.ip, config.port)
    except OSError as err:
        log.error("cannot start", {"error": f"cannot listen on {config.ip or '*'}:{config.port}: "
                                            f"{err.strerror or err}"})
        return 1
    with reserved:
        return uvloop.run(_supervise(config, command, reserved.getsockname(), log))


async def _supervise(config, command, address, log):
    loop = asyncio.get_running_loop()
    log.attach(loop)
    stopping = loop.create_future()
    workers = [Worker(index) for index in range(config.workers)]
    started = time.time()

    def on_signal(signum):
        if not stopping.done():
            stopping.set_result(signum)
        for worker in workers:
            worker.signal(signum)

    asking = set()

    def on_reload():
        # Over each control channel, not as a signal: a worker still starting (a restarted one)
        # reads the request once it serves, where a signal could come before its handlers.
        log.info("passing SIGHUP on to the workers", {"workers": len(workers)})
        task = loop.create_task(_reload_workers([worker for worker in workers if worker.writer is not None]))
        asking.add(task)
        task.add_done_callback(asking.discard)

    for signum in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    release_signals()
    try:
        for worker in workers:
            await worker.start(command, address[1])
    except OSError as err:
        log.error("cannot start", {"error": f"cannot start a worker: {err}"})
        for worker in workers:
            worker.signal(signal.SIGTERM)
        await asyncio.gather(*(worker.process.wait() for worker in workers if worker.process is not None))
        return 1
    failed = []

    def fail():
        failed.append(True)
        on_signal(signal.SIGTERM)

    figures = Figures(workers, log)
    watchers = [loop.create_task(_watch(worker, command, address[1], stopping, fail, log, figures.worker_exited))
                for worker in workers]
    servers = await _start_services(config, workers, figures, started, log)
    log.info("supervising workers", {"address": peer_text(address), "workers": len(workers),
                                     "pids": [worker.process.pid for worker in workers]})
    if servers is None:  # a service could not start: stop the workers again
        fail()
    else:  # each worker answers its channel once it listens: then the whole service is ready
        await asyncio.gather(*(worker.ask("status") for worker in workers))
        service.notify("READY=1")
    signum = await stopping
    service.notify("STOPPING=1")
    log.info("stopping workers", {"signal": signal.Signals(signum).name})
    await asyncio.gather(*watchers)
    for close in servers or ():
        close()
    log.flush()
    log.attach(None)
    return 1 if failed else 0


async def _reload_workers(workers):
    """SIGHUP: every worker reloads (systemd is told RELOADING=1 until they all have)."""
    service.reloading()
    try:
        await asyncio.gather(*(worker.ask("sighup") for worker in workers))
    finally:
        service.notify("READY=1")


async def _watch(worker, command, port, stopping, fail, log, exited):
    """Wait for the worker to exit (``exited(worker)``); start it again unless the supervisor is
    stopping. A worker that could not start at all (its own record says why) stops everything:
    ``fail()``."""
    while True:
        code = await worker.process.wait()
        exited(worker)
        if stopping.done():
            return
        if worker.starts == 1 and code > 0 and time.monotonic() - worker.started_at < STARTUP_SECONDS:
            log.error("a worker could not start; stopping", {"worker": worker.index, "exit_code": code})
            fail()
            return
        log.error("worker exited unexpectedly; starting it again",
                  {"worker": worker.index, "pid": worker.process.pid, "exit_code": code})
        while not stopping.done():
            await asyncio.sleep(RESTART_DELAY)
            try:
                await worker.start(command, port)
                break
            except OSError as err:  # out of processes or file descriptors, say: try again
                log.error("cannot start a worker", {"worker": worker.index, "error": str(err)})
        if stopping.done():
            worker.signal(signal.SIGTERM)  # the stop came while it was starting
            if worker.process is None or worker.process.returncode is not None:
                return


async def _start_services(config, workers, figures, started, log):
    """The supervisor's Prometheus endpoint (``figures``) and admin socket; their close
    functions, or None when one cannot start (logged)."""
    closers = []
    if config.expose_prometheus_metrics:
        try:
            server = await serve_prometheus(figures.render, config.prometheus_listen_ip, config.prometheus_port,
                                            config.prometheus_endpoint)
        except OSError as err:
            log.error("cannot start", {"error": f"cannot serve Prometheus metrics on {config.prometheus_listen_ip}:"
                                                f"{config.prometheus_port}: {err.strerror or err}"})
            return None
        closers.append(server.close)
    if config.admin_socket:
        async def reload():
            replies = await asyncio.gather(*(worker.ask("reload") for worker in workers))
            outcomes = [reply["value"] if reply["ok"] else {"ok": False, "error": reply["error"]}
                        for reply in replies]
            ok = all(outcome["ok"] for outcome in outcomes)
            return (200 if ok else 422), {"ok": ok, "workers": outcomes}

        async def status():
            replies = await asyncio.gather(*(worker.ask("status") for worker in workers))
            return 200, {"started": logs.rfc3339(started), "uptime_seconds": round(time.time() - started, 3),
                         "workers": [{"index": worker.index, "pid": worker.process.pid, "starts": worker.starts,
                                      **(reply["value"] if reply["ok"] else {"error": reply["error"]})}
                                     for worker, reply in zip(workers, replies, strict=True)]}

        path = config.admin_socket
        try:
            server = await unixhttp.serve(path, 0o600, {("POST", "/reload"): reload, ("GET", "/status"): status})
        except OSError as err:
            log.error("cannot start", {"error": f"admin_socket: {path}: {err.strerror or err}"})
            return None
        closers.append(lambda: unixhttp.stop(server, path))
    return closers


def command_line(argv):
    """How to start a worker: this Python running fastfog with the same arguments."""
    return [sys.executable, "-m", "fastfog", *argv]
