"""``fastfog bench``: the proxy path against a direct connection, in one run.

Everything runs on this machine: in a private network namespace when run as
root (the origin, stub DNS and proxy on documentation addresses on ``lo``),
else on loopback only. The proxy under test is pinned to its own CPU and the
load generator and origins to the others, when there are at least two.
"""

import asyncio
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import uvloop

from fastfog import hotpaths, stubdns
from fastfog.bench import load, netns, servers

if hotpaths.COMPILED:  # the same switch as the proxy's core: FASTFOG_NO_EXTENSIONS=1 selects the twin
    from fastfog.bench import _engine as engine
else:
    engine = None

PROXY_HOST, ORIGIN_HOST, DNS_HOST = "203.0.113.1", "203.0.113.10", "203.0.113.53"
LOOPBACK = "127.0.0.1"
PORTS = {"reply": 7001, "http": 8080, "bulk": 7003, "dns": 5353, "proxy": 4750, "proxy_tls": 4760}
ORIGIN_NAME = "origin.bench.test"
INSTALLED_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds fastfog/


class Bench:
    """Where everything lives for one run, and which CPUs each side gets."""

    def __init__(self, load_processes=None, namespace=True, proxy_cpus=1):
        self.namespaced = (namespace and os.geteuid() == 0
                           and netns.enter([PROXY_HOST, ORIGIN_HOST, DNS_HOST]) is None)
        self.proxy_host = PROXY_HOST if self.namespaced else LOOPBACK
        self.origin_host = ORIGIN_HOST if self.namespaced else LOOPBACK
        self.dns_host = DNS_HOST if self.namespaced else LOOPBACK
        # In a namespace of its own every port is free; on the shared loopback each is checked
        # first, so that a proxy or server already there is never what gets measured.
        self.ports = dict(PORTS)
        if not self.namespaced:
            for kind, port in PORTS.items():
                kind_of_socket = socket.SOCK_DGRAM if kind == "dns" else socket.SOCK_STREAM
                self.ports[kind] = _free_port(LOOPBACK, port, kind_of_socket)
        cpus = sorted(os.sched_getaffinity(0))
        self.proxy_cpus = cpus[:proxy_cpus] if len(cpus) > proxy_cpus else cpus
        self.load_cpus = cpus[len(self.proxy_cpus):] or cpus  # none left: they share
        self.load_processes = load_processes or len(self.load_cpus)
        self.children = []
        self.folders = []  # temporary ones, removed at the end

    def origin(self, kind):
        return (self.origin_host, self.ports[kind])

    def start_origins(self, bulk_size):
        """The origin servers and stub DNS, in a process of their own on the load CPUs."""
        ready = multiprocessing.get_context("fork").Event()
        process = multiprocessing.get_context("fork").Process(
            target=_serve_origins, args=(self, bulk_size, ready), daemon=True)
        process.start()
        if not ready.wait(10):
            raise RuntimeError("the origin servers did not start")
        self.children.append(process)

    def start_fastfog(self, extra_flags=(), port="proxy"):
        """This very installation of fastfog (this interpreter, started where this package lives,
        so a source tree in the working directory is never what runs), pinned to its CPU."""
        args = [sys.executable, "-m", "fastfog", "serve", "--listen-ip", self.proxy_host,
                "--listen-port", str(self.ports[port]),
                "--resolver-address", f"{self.dns_host}:{self.ports['dns']}",
                "--allow-range", f"{self.origin_host}/32", *extra_flags]
        return self.start_proxy(args, self.ports[port])

    def start_fastfog_tls(self, extra_flags=()):
        """fastfog with a TLS listener that asks for client certificates (Smokescreen's mTLS), and a
        throwaway CA, proxy certificate and client certificate for it: (process, pki paths)."""
        from fastfog.bench.pki import write_bench_pki

        folder = tempfile.mkdtemp(prefix="fastfog-bench-pki-")
        self.folders.append(folder)
        pki = write_bench_pki(folder, self.proxy_host)
        flags = ["--tls-server-bundle-file", pki["proxy"], "--tls-client-ca-file", pki["ca"], *extra_flags]
        return self.start_fastfog(flags, "proxy_tls"), pki

    def start_proxy(self, args, port):
        """A proxy process pinned to the proxy CPU, its standard error kept for when it fails."""
        errors = tempfile.TemporaryFile()
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors, cwd=INSTALLED_ROOT,
                                   preexec_fn=lambda: os.sched_setaffinity(0, self.proxy_cpus))
        process.errors = errors
        self.children.append(process)
        _wait_listening((self.proxy_host, port), process)
        return process

    def run_load(self, workload, target, processes=None, **options):
        """Run ``workload`` in ``processes`` (default load_processes) pinned processes; the merged tally."""
        context = multiprocessing.get_context("fork")
        count = 1 if workload == "bulk" else processes or self.load_processes
        pipes, children = [], []
        share = max(1, options.pop("concurrency", 1) // count)
        for index in range(count):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=_load_process, daemon=True,
                                      args=(self, index, workload, target, share, options, sending))
            process.start()
            pipes.append(receiving)
            children.append(process)
        seconds = options.get("seconds", 0.0)
        started = time.monotonic()
        tallies = []
        for pipe in pipes:
            while not pipe.poll(0.25):
                self.progress(time.monotonic() - started, seconds)
            tallies.append(pipe.recv())
        for process in children:
            process.join()
        return merge(tallies)

    progress_label = ""

    def progress(self, elapsed, seconds):
        """On a terminal, the running workload's elapsed and remaining seconds, on one line."""
        if sys.stderr.isatty() and self.progress_label:
            print(f"\r  {self.progress_label}: {elapsed:4.1f} s, {max(seconds - elapsed, 0):4.1f} s to go   ",
                  end="", file=sys.stderr, flush=True)

    def close(self):
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        for child in self.children:
            if isinstance(child, subprocess.Popen):
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
            else:
                child.terminate()
                child.join(5)


class BenchError(Exception):
    """What stops a run, said plainly (a port taken, a proxy that would not start)."""


def _free_port(host, preferred, kind=socket.SOCK_STREAM):
    """``preferred`` when nothing uses it on ``host``, else one the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise BenchError(f"no free port on {host}")


def _last_lines(process, count=15):
    process.errors.seek(0)
    lines = process.errors.read().decode("utf-8", "replace").splitlines()
    return "\n".join("    " + line for line in lines[-count:]) or "    (nothing on its standard error)"


def _wait_listening(address, process, seconds=20):
    deadline = time.monotonic() + seconds
    where = f"{address[0]}:{address[1]}"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the proxy meant to listen on {where} exited with status {process.returncode}; "
                             f"the last lines of its standard error:\n{_last_lines(process)}")
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"the proxy did not listen on {where} within {seconds}s; the last lines of its standard "
                     f"error:\n{_last_lines(process)}")


def _serve_origins(bench, bulk_size, ready):
    os.sched_setaffinity(0, bench.load_cpus)
    if engine is not None:  # the reply and http origins in C, in a process of their own
        stop_read, stop_write = os.pipe()  # closed (so readable) when this process ends
        if os.fork() == 0:
            os.close(stop_write)
            try:
                engine.serve_origins(bench.origin("reply"), bench.origin("http"), servers.REQUEST_SIZE,
                                     b"r" * servers.REPLY_SIZE, servers.http_response(servers.REPLY_SIZE), stop_read)
            finally:
                os._exit(0)
        os.close(stop_read)

    async def main():
        if engine is None:
            await servers.start("reply", *bench.origin("reply"))
            await servers.start("http", *bench.origin("http"))
        bulk = socket.create_server(bench.origin("bulk"), backlog=16)
        threading.Thread(target=servers.serve_bulk, args=(bulk, bulk_size), daemon=True).start()
        await stubdns.start(bench.dns_host, bench.ports["dns"], {ORIGIN_NAME: [bench.origin_host]}, ttl=300)
        ready.set()
        await asyncio.get_running_loop().create_future()

    uvloop.run(main())


def _load_process(bench, index, workload, target, concurrency, options, pipe):
    os.sched_setaffinity(0, [bench.load_cpus[index % len(bench.load_cpus)]])
    started = time.process_time()
    if workload in ("connect", "http") and engine is not None:
        result = _engine_load(workload, target, concurrency, options)
    else:
        if workload.startswith("connect-tls"):
            tally = uvloop.run(load.run_connect_tls(target, options["origin"], concurrency, options["seconds"],
                                                    options["request_size"], options["reply_size"],
                                                    options["pki"]["ca"], options["pki"]["client"],
                                                    workload == "connect-tls-resumed"))
        elif workload == "connect":
            tally = uvloop.run(load.run_connect(target, options["origin"], concurrency, options["seconds"],
                                                options["request_size"], options["reply_size"], options.get("rate"),
                                                options.get("by_name")))
        elif workload == "http":
            tally = uvloop.run(load.run_http(target, options["origin"], concurrency, options["seconds"]))
        else:
            tally = load.run_bulk(target, options["origin"], options["size"])
        result = tally.as_dict()
    result["cpu"] = time.process_time() - started
    pipe.send(result)


def _engine_load(workload, target, concurrency, options):
    """A connect or http workload on the compiled engine: the same transactions as load.py's."""
    origin = options["origin"]
    if workload == "connect":
        head = None if target is None else load.connect_head(options.get("by_name") or origin[0], origin[1])
        return engine.run_load(engine.TUNNEL, target or origin, head, b"q" * options["request_size"],
                               options["reply_size"], concurrency, options["seconds"], options.get("rate") or 0.0)
    return engine.run_load(engine.HTTP, target or origin, None, load.http_request(target, origin), 0,
                           concurrency, options["seconds"])


def merge(tallies):
    merged = {"done": 0, "latency_counts": {}, "errors": {}, "cpu": 0.0, "resumed": 0,
              "bytes_up": 0, "bytes_down": 0, "seconds_up": 0.0, "seconds_down": 0.0}
    latencies = load.Latencies()
    for tally in tallies:
        merged["done"] += tally["done"]
        merged["resumed"] += tally.get("resumed", 0)
        latencies.add(tally.get("latency_counts", {}))
        merged["cpu"] += tally["cpu"]
        for kind, count in tally["errors"].items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + count
        for key in ("bytes_up", "bytes_down"):
            merged[key] += tally.get(key, 0)
        for key in ("seconds_up", "seconds_down"):
            merged[key] = max(merged[key], tally.get(key, 0.0))
    merged["latency_counts"] = latencies.counts
    return merged


def cpu_times():
    """{cpu: (busy, total)} in clock ticks since boot, from /proc/stat."""
    found = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(field) for field in fields]
                found[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))  # less idle, iowait
    return found


def busy_share(before, after, cpus):
    """How busy ``cpus`` were between two cpu_times() readings (0 to 1), or None."""
    busy = sum(after[cpu][0] - before[cpu][0] for cpu in cpus if cpu in before and cpu in after)
    total = sum(after[cpu][1] - before[cpu][1] for cpu in cpus if cpu in before and cpu in after)
    return busy / total if total else None


SATURATED = 0.9


def bound(bench, target, before, after):
    """Which side limited a figure: the proxy's CPUs or the load side's (the load generator and
    the origins), by how busy each was. A figure where the load side was saturated shows the
    load generator's limit, not the proxy's: it is flagged."""
    load = busy_share(before, after, bench.load_cpus)
    proxy = None if target.address is None or bench.proxy_cpus == bench.load_cpus else busy_share(
        before, after, bench.proxy_cpus)
    load_saturated = load is not None and load >= SATURATED
    if target.address is None or proxy is None:
        side = "load" if load_saturated else None
    else:
        side = "proxy" if proxy >= max(load or 0, SATURATED * 0.95) else "load" if load_saturated else None
    return {"load_cpu_busy": load, "proxy_cpu_busy": proxy, "bound_by": side, "load_saturated": load_saturated}


def proxy_cpu_seconds(pid):
    """User + system CPU seconds of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Target:
    """What a workload runs against: ``direct`` (address None), fastfog, or another proxy."""

    def __init__(self, name, address=None, process=None, tls=None):
        """``tls``: (address, process, pki paths) of the same proxy listening with TLS, if any."""
        self.name, self.address, self.process, self.tls = name, address, process, tls

    @property
    def pid(self):
        return None if self.process is None else self.process.pid


WORKLOADS = ("connect", "http", "bulk", "fixed-rate", "idle", "dns", "connect-tls", "connect-tls-resumed",
             "idle-tls")
PROXY_ONLY = frozenset({"idle", "dns"})
TLS_WORKLOADS = frozenset({"connect-tls", "connect-tls-resumed", "idle-tls"})  # fastfog's TLS listener only
UNITS = {"connect": "tunnels/s", "http": "requests/s", "bulk": "GB/s up", "fixed-rate": "p99 ms",
         "idle": "KiB/tunnel", "dns": "name/IP", "connect-tls": "tunnels/s", "connect-tls-resumed": "tunnels/s",
         "idle-tls": "KiB/tunnel"}


def _latencies(tally):
    """p50, p99 and p99.9 in ms (None where nothing was measured)."""
    latencies = load.Latencies(tally["latency_counts"])
    found = {}
    for key, fraction in (("p50_ms", .5), ("p99_ms", .99), ("p999_ms", .999)):
        seconds = latencies.percentile(fraction)
        found[key] = None if seconds is None else seconds * 1e3
    return found


def measure(bench, workload, target, args):
    """One workload against one target: a result dict (``value`` in UNITS[workload], errors…)."""
    origin = bench.origin("http" if workload == "http" else "bulk" if workload == "bulk" else "reply")
    options = {"seconds": args.seconds, "concurrency": args.concurrency, "request_size": servers.REQUEST_SIZE,
               "reply_size": servers.REPLY_SIZE, "size": args.bulk_size, "origin": origin}
    cpu_before = proxy_cpu_seconds(target.pid) if target.pid else None
    busy_start = cpu_times()  # (connect and http take their own reading, after the warm-up)
    result = {"workload": workload, "target": target.name, "unit": UNITS[workload]}
    if workload in ("connect-tls", "connect-tls-resumed"):
        address, process, options["pki"] = target.tls
        cpu_before = proxy_cpu_seconds(process.pid)
        if args.warmup:
            bench.run_load(workload, address, **{**options, "seconds": args.warmup})
        tally = bench.run_load(workload, address, **options)
        result.update(value=tally["done"] / args.seconds, **_latencies(tally),
                      resumed_share=tally["resumed"] / tally["done"] if tally["done"] else None)
        if tally["done"]:
            result["proxy_cpu_us_per_op"] = (proxy_cpu_seconds(process.pid) - cpu_before) / tally["done"] * 1e6
    elif workload in ("connect", "http"):
        if args.warmup:
            bench.run_load(workload, target.address, **{**options, "seconds": args.warmup})
        busy_before = cpu_times()
        tally = bench.run_load(workload, target.address, **options)
        result.update(value=tally["done"] / args.seconds, **_latencies(tally))
        result.update(bound(bench, target, busy_before, cpu_times()))
    elif workload == "bulk":
        tally = bench.run_load("bulk", target.address, **options)
        result.update(value=tally["bytes_up"] / max(tally["seconds_up"], 1e-9) / 1e9,
                      down=tally["bytes_down"] / max(tally["seconds_down"], 1e-9) / 1e9)
    elif workload == "fixed-rate":
        tally = bench.run_load("connect", target.address, **{**options, "rate": args.rate}, processes=1)
        result.update(**_latencies(tally), rate=args.rate)
        result["value"] = result["p99_ms"]
    elif workload in ("idle", "idle-tls"):
        address, pid, tls = target.address, target.pid, None
        if workload == "idle-tls":
            address, process, pki = target.tls
            pid, tls = process.pid, load.client_tls(pki["ca"], pki["client"])
        before = rss_kib(pid) if pid else None
        sockets, errors = load.open_idle(address, origin, args.idle, tls=tls)
        time.sleep(0.2)
        after = rss_kib(pid) if pid else None
        open_at_end = sum(load.still_open(sock) for sock in sockets)
        for sock in sockets:
            sock.close()
        tally = {"done": open_at_end, "errors": dict(errors), "cpu": 0.0}
        if open_at_end < len(sockets):
            tally["errors"]["closed while idle"] = len(sockets) - open_at_end
        result.update(value=(after - before) / max(len(sockets), 1) if before is not None else None,
                      tunnels=len(sockets))
    else:  # dns: CONNECT by host name through the stub resolver, then by IP literal
        if args.warmup:  # both measured runs start warm (the name cached, the proxy busy already)
            bench.run_load("connect", target.address, **{**options, "seconds": args.warmup, "by_name": ORIGIN_NAME})
        by_name = bench.run_load("connect", target.address, **{**options, "by_name": ORIGIN_NAME})
        by_ip = bench.run_load("connect", target.address, **options)
        tally = merge([by_name, by_ip])
        result.update(value=(by_name["done"] / max(by_ip["done"], 1)), by_name=by_name["done"] / args.seconds,
                      by_ip=by_ip["done"] / args.seconds)
    if "bound_by" not in result:  # every workload says which side bound it
        result.update(bound(bench, target, busy_start, cpu_times()))
    result["errors"] = tally["errors"]
    if not tally["done"] and not tally["errors"]:
        result["errors"] = {"nothing completed": 1}
    result["load_cpu_seconds"] = round(tally["cpu"], 2)
    if cpu_before is not None and workload in ("connect", "http") and tally["done"]:
        result["proxy_cpu_us_per_op"] = (proxy_cpu_seconds(target.pid) - cpu_before) / tally["done"] * 1e6
    return result


HIGHER_IS_BETTER = frozenset({"connect", "http", "bulk", "dns", "connect-tls", "connect-tls-resumed"})


def _format(result, direct, others=()):
    """One cell: the figure, its ratio to direct, and for fastfog how it compares with each other
    proxy (``others``: their results), as "N.NNx name" (above 1: fastfog is better)."""
    value = result.get("value")
    if value is None:  # not measured for this target
        text = "-"
    elif result["workload"] in ("connect", "http", "connect-tls", "connect-tls-resumed"):
        text = f"{value:,.0f}"
    else:
        text = f"{value:.2f}"
    if direct is not None and result["workload"] in ("connect", "http", "bulk") and direct.get("value"):
        text += f" ({value / direct['value']:.2f}x)"
    if direct is not None and result["workload"] == "fixed-rate" and direct.get("value") is not None:
        text += f" (+{value - direct['value']:.2f})"
    for other in others:
        theirs = other.get("value")
        if value and theirs:
            better = value / theirs if result["workload"] in HIGHER_IS_BETTER else theirs / value
            text += f" [{better:.2f}x {other['target']}]"
    if result.get("load_saturated") and result.get("target") != "direct":
        text += " (load-bound)"
    if result["errors"]:
        text += " ERRORS"
    return text


DETAILED = frozenset({"connect", "http", "connect-tls", "connect-tls-resumed"})


def _detail(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"


def report(results, targets, out=sys.stdout):
    """The table: one row per workload, one column per target, ratios to direct (and, in
    fastfog's column, to each other proxy)."""
    names = [target.name for target in targets]
    rows = [["workload", "unit"] + names]
    for workload in dict.fromkeys(result["workload"] for result in results):
        by_target = {result["target"]: result for result in results if result["workload"] == workload}
        direct = by_target.get("direct")
        others = [result for name, result in by_target.items() if name not in ("direct", "fastfog")]
        cells = []
        for name in names:
            if name not in by_target:
                cells.append("-")
                continue
            cells.append(_format(by_target[name], direct if name != "direct" else None,
                                 others if name == "fastfog" else ()))
        rows.append([workload, UNITS[workload]] + cells)
        if workload in DETAILED:  # its latency and the proxy's CPU per operation, below it
            for key, unit, digits in (("p50_ms", "p50 ms", 2), ("p99_ms", "p99 ms", 2),
                                      ("proxy_cpu_us_per_op", "proxy CPU us/op", 0)):
                row = [_detail(by_target.get(name, {}).get(key), digits) for name in names]
                if any(cell != "-" for cell in row):
                    rows.append(["", unit] + row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
        if index == 0:
            print("  ".join("-" * width for width in widths), file=out)


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each workload runs (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before connect and http (default 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="transactions in flight (default 64)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)} (default all)")
    parser.add_argument("--bulk-size", type=int, default=1 << 30, help="bytes each way for bulk (default 1 GiB)")
    parser.add_argument("--rate", type=float, default=1000.0, help="tunnels/s for fixed-rate (default 1000)")
    parser.add_argument("--idle", type=int, default=1000, help="idle tunnels to open (default 1000)")
    parser.add_argument("--load-processes", type=int, default=None,
                        help="load generator processes (default: one per load CPU)")
    parser.add_argument("--fastfog-flags", default="", help="extra flags for fastfog serve, one string")
    parser.add_argument("--no-fastfog", action="store_true", help="measure only direct and the --vs targets")
    parser.add_argument("--vs", action="append", default=[], metavar="NAME='COMMAND {port}'",
                        help="another proxy to start and measure; {port} is replaced by its port")
    parser.add_argument("--vs-address", action="append", default=[], metavar="NAME=HOST:PORT",
                        help="another proxy already running")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--proxy-cpus", type=int, default=1,
                        help="CPUs for the proxy (with --fastfog-flags '--workers N'); the rest load it (default 1)")
    parser.add_argument("--no-namespace", action="store_true",
                        help="run on loopback even as root (free ports are checked and picked)")


def _start_targets(bench, args, workloads):
    targets = [Target("direct")]
    if not args.no_fastfog:
        flags = shlex.split(args.fastfog_flags)
        proxy = bench.start_fastfog(flags)
        tls = None
        if TLS_WORKLOADS & set(workloads):
            tls_proxy, pki = bench.start_fastfog_tls(flags)
            tls = ((bench.proxy_host, bench.ports["proxy_tls"]), tls_proxy, pki)
        targets.append(Target("fastfog", (bench.proxy_host, bench.ports["proxy"]), proxy, tls))
    for index, spec in enumerate(args.vs):
        name, _, command = spec.partition("=")
        port = bench.ports["proxy"] + 1 + index
        if not bench.namespaced:
            port = _free_port(LOOPBACK, port)
        process = bench.start_proxy(shlex.split(command.replace("{port}", str(port))), port)
        targets.append(Target(name, (bench.proxy_host, port), process))
    for spec in args.vs_address:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        targets.append(Target(name, (host.strip("[]"), int(port))))
    return targets


def main(args):
    workloads = [workload.strip() for workload in args.workloads.split(",") if workload.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        print(f"fastfog bench: unknown workloads: {', '.join(unknown)}", file=sys.stderr)
        return 2
    bench = Bench(args.load_processes, namespace=not args.no_namespace, proxy_cpus=max(1, args.proxy_cpus))
    where = "a private network namespace" if bench.namespaced else "loopback (not root: no namespace)"
    print(f"fastfog bench: in {where}; proxy on CPU {','.join(map(str, bench.proxy_cpus))}, load generator "
          f"({bench.load_processes} processes) and origins on CPU {','.join(map(str, bench.load_cpus))}"
          + ("" if len(os.sched_getaffinity(0)) > 1 else " (one CPU: they share it)"), file=sys.stderr)
    results = []
    try:
        bench.start_origins(args.bulk_size)
        try:
            targets = _start_targets(bench, args, workloads)
        except BenchError as err:
            print(f"fastfog bench: {err}", file=sys.stderr)
            return 1
        for workload in workloads:
            for target in targets:
                if (target.address is None and workload in PROXY_ONLY) or (
                        workload in TLS_WORKLOADS and target.tls is None):
                    continue
                bench.progress_label = f"{workload} / {target.name}"
                if not sys.stderr.isatty():
                    print(f"  {workload} / {target.name} …", file=sys.stderr, flush=True)
                results.append(measure(bench, workload, target, args))
                if sys.stderr.isatty():
                    print(f"\r  {workload} / {target.name}: done" + " " * 30, file=sys.stderr, flush=True)
    finally:
        bench.close()
    report(results, targets)
    print("load generator CPU seconds: " + ", ".join(
        f"{result['workload']}/{result['target']} {result['load_cpu_seconds']:.1f}" for result in results),
        file=sys.stderr)
    per_op = [result for result in results if result.get("proxy_cpu_us_per_op")]
    if per_op:
        print("proxy CPU per tunnel or request: " + ", ".join(
            f"{result['workload']}/{result['target']} {result['proxy_cpu_us_per_op']:.0f} us" for result in per_op),
            file=sys.stderr)
    for workload in ("connect", "http"):
        direct = next((r for r in results if r["workload"] == workload and r["target"] == "direct"), None)
        best = max((r["value"] for r in results if r["workload"] == workload and r["target"] != "direct"),
                   default=0)
        if direct and best and direct["value"] < 1.5 * best:
            print(f"warning: {workload}: direct is not far above the proxies: the load generator or the "
                  "origin may be the bottleneck (see load_cpu_seconds in --json)", file=sys.stderr)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"results": results, "proxy_cpus": bench.proxy_cpus, "load_cpus": bench.load_cpus,
                       "namespaced": bench.namespaced, "ports": bench.ports,
                       "load_generator": "compiled" if engine is not None else "pure-Python"}, out, indent=1,
                      allow_nan=False)  # what could not be measured is null, never NaN
    failed = [result for result in results if result["errors"]]
    for result in failed:
        print(f"errors: {result['workload']} / {result['target']}: {result['errors']}", file=sys.stderr)
    return 1 if failed else 0
