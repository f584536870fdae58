"""``fastfog bench``: the proxy path against a direct connection, in one run.

Everything runs on this machine: in a private network namespace when run as
root (the origin, stub DNS and proxy on documentation addresses on ``lo``),
else on loopback only. The proxy under test is pinned to its own CPU and the
load generator and origins to the others, when there are at least two.
"""

import asyncio
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import uvloop

from fastfog import stubdns
from fastfog.bench import load, netns, servers

PROXY_HOST, ORIGIN_HOST, DNS_HOST = "203.0.113.1", "203.0.113.10", "203.0.113.53"
LOOPBACK = "127.0.0.1"
PORTS = {"reply": 7001, "http": 8080, "bulk": 7003, "dns": 5353, "proxy": 4750}
ORIGIN_NAME = "origin.bench.test"


class Bench:
    """Where everything lives for one run, and which CPUs each side gets."""

    def __init__(self, load_processes=None):
        self.namespaced = os.geteuid() == 0 and netns.enter([PROXY_HOST, ORIGIN_HOST, DNS_HOST]) is None
        self.proxy_host = PROXY_HOST if self.namespaced else LOOPBACK
        self.origin_host = ORIGIN_HOST if self.namespaced else LOOPBACK
        self.dns_host = DNS_HOST if self.namespaced else LOOPBACK
        cpus = sorted(os.sched_getaffinity(0))
        self.proxy_cpus = cpus[:1] if len(cpus) > 1 else cpus
        self.load_cpus = cpus[1:] if len(cpus) > 1 else cpus
        self.load_processes = load_processes or len(self.load_cpus)
        self.children = []

    def origin(self, kind):
        return (self.origin_host, PORTS[kind])

    def start_origins(self, bulk_size):
        """The origin servers and stub DNS, in a process of their own on the load CPUs."""
        ready = multiprocessing.get_context("fork").Event()
        process = multiprocessing.get_context("fork").Process(
            target=_serve_origins, args=(self, bulk_size, ready), daemon=True)
        process.start()
        if not ready.wait(10):
            raise RuntimeError("the origin servers did not start")
        self.children.append(process)

    def start_fastfog(self, extra_flags=()):
        args = [sys.executable, "-m", "fastfog", "serve", "--listen-ip", self.proxy_host,
                "--listen-port", str(PORTS["proxy"]),
                "--resolver-address", f"{self.dns_host}:{PORTS['dns']}",
                "--allow-range", f"{self.origin_host}/32", *extra_flags]
        proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn=lambda: os.sched_setaffinity(0, self.proxy_cpus))
        self.children.append(proxy)
        _wait_listening((self.proxy_host, PORTS["proxy"]), proxy)
        return proxy

    def run_load(self, workload, target, **options):
        """Run ``workload`` in ``load_processes`` pinned processes; the merged tally."""
        context = multiprocessing.get_context("fork")
        pipes, processes = [], []
        share = max(1, options.pop("concurrency", 1) // self.load_processes)
        for index in range(self.load_processes if workload != "bulk" else 1):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=_load_process, daemon=True,
                                      args=(self, index, workload, target, share, options, sending))
            process.start()
            pipes.append(receiving)
            processes.append(process)
        tallies = [pipe.recv() for pipe in pipes]
        for process in processes:
            process.join()
        return merge(tallies)

    def close(self):
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


def _wait_listening(address, process, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode}")
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the proxy did not listen on {address[0]}:{address[1]} within {seconds}s")


def _serve_origins(bench, bulk_size, ready):
    os.sched_setaffinity(0, bench.load_cpus)

    async def main():
        await servers.start("reply", *bench.origin("reply"))
        await servers.start("http", *bench.origin("http"))
        bulk = socket.create_server(bench.origin("bulk"), backlog=16)
        threading.Thread(target=servers.serve_bulk, args=(bulk, bulk_size), daemon=True).start()
        await stubdns.start(bench.dns_host, PORTS["dns"], {ORIGIN_NAME: [bench.origin_host]}, ttl=300)
        ready.set()
        await asyncio.get_running_loop().create_future()

    uvloop.run(main())


def _load_process(bench, index, workload, target, concurrency, options, pipe):
    os.sched_setaffinity(0, [bench.load_cpus[index % len(bench.load_cpus)]])
    started = time.process_time()
    if workload == "connect":
        tally = uvloop.run(load.run_connect(target, options["origin"], concurrency, options["seconds"],
                                            options["request_size"], options["reply_size"]))
    elif workload == "http":
        tally = uvloop.run(load.run_http(target, options["origin"], concurrency, options["seconds"]))
    else:
        tally = load.run_bulk(target, options["origin"], options["size"])
    result = tally.as_dict()
    result["cpu"] = time.process_time() - started
    pipe.send(result)


def merge(tallies):
    merged = {"done": 0, "latencies": [], "errors": {}, "cpu": 0.0,
              "bytes_up": 0, "bytes_down": 0, "seconds_up": 0.0, "seconds_down": 0.0}
    for tally in tallies:
        merged["done"] += tally["done"]
        merged["latencies"] += tally["latencies"]
        merged["cpu"] += tally["cpu"]
        for kind, count in tally["errors"].items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + count
        for key in ("bytes_up", "bytes_down"):
            merged[key] += tally[key]
        for key in ("seconds_up", "seconds_down"):
            merged[key] = max(merged[key], tally[key])
    return merged


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def proxy_cpu_seconds(pid):
    """User + system CPU seconds of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each workload runs (default 5)")
    parser.add_argument("--concurrency", type=int, default=64, help="transactions in flight (default 64)")
    parser.add_argument("--workloads", default="connect,http,bulk",
                        help="comma-separated: connect, http, bulk (default all)")
    parser.add_argument("--bulk-size", type=int, default=1 << 30, help="bytes each way for bulk (default 1 GiB)")
    parser.add_argument("--fastfog-flags", default="", help="extra flags for fastfog serve, one string")


def main(args):
    bench = Bench()
    bench.start_origins(args.bulk_size)
    proxy = bench.start_fastfog(shlex.split(args.fastfog_flags))
    proxy_address = (bench.proxy_host, PORTS["proxy"])
    failed = False
    try:
        for workload in args.workloads.split(","):
            for name, target in (("direct", None), ("fastfog", proxy_address)):
                options = {"seconds": args.seconds, "concurrency": args.concurrency,
                           "request_size": servers.REQUEST_SIZE, "reply_size": servers.REPLY_SIZE,
                           "size": args.bulk_size, "origin": bench.origin(
                               {"connect": "reply", "http": "http", "bulk": "bulk"}[workload])}
                cpu_before = proxy_cpu_seconds(proxy.pid)
                tally = bench.run_load(workload, target, **options)
                cpu = proxy_cpu_seconds(proxy.pid) - cpu_before
                if workload == "bulk":
                    figure = (f"up {tally['bytes_up'] / tally['seconds_up'] / 1e9:.2f} GB/s "
                              f"down {tally['bytes_down'] / max(tally['seconds_down'], 1e-9) / 1e9:.2f} GB/s")
                else:
                    rate = tally["done"] / args.seconds
                    lat = tally["latencies"]
                    figure = (f"{rate:9.0f}/s p50 {percentile(lat, .5) * 1e3:.2f} ms "
                              f"p99 {percentile(lat, .99) * 1e3:.2f} ms")
                    if target is not None and tally["done"]:
                        figure += f" proxy cpu {cpu / tally['done'] * 1e6:.0f} us/op"
                print(f"{workload:8} {name:8} {figure}  load cpu {tally['cpu']:.1f}s errors {tally['errors']}",
                      flush=True)
                failed = failed or bool(tally["errors"]) or not tally["done"]
    finally:
        bench.close()
    return 1 if failed else 0
