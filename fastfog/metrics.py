"""Smokescreen's metrics (SPEC 4.2), counted in-process, exposed to Prometheus and sent to DogStatsD.

Every metric has Smokescreen's name and tags, so dashboards and alerts keep
working. ``Metrics`` counts into plain dicts on the connection path (a dict
update per event); the exporters read them:

- Prometheus (``--expose-prometheus-metrics``): text format on its own HTTP
  listener, names with ``.`` → ``_`` and no ``_total`` added (Smokescreen's
  Go client adds none), timings as ``<name>_timer`` histograms in
  milliseconds, a ``# HELP`` line for every family. fastfog renders the text
  format itself: prometheus-client appends ``_total`` to every counter, which
  would rename ``acl_allow`` and break every existing dashboard. The standard
  ``process_*`` families come from prometheus-client's process collector
  (per worker, labelled, under ``--workers``), with ``fastfog_build_info``.
- DogStatsD (``--statsd-address``): ``smokescreen.``-prefixed lines with
  ``k:v`` tags, gathered while the loop runs and sent in as few UDP datagrams
  as fit, once per loop iteration; a send never blocks, and datagrams the
  kernel refuses are counted (``fastfog.statsd.dropped``), never retried.

Label values are bounded: roles are sanitised (``|@#:"{}\\`` and control
characters become ``_``), at most ``MAX_ROLES`` distinct roles are kept per
metric (later ones count as ``_overflow_``), and nothing unbounded (host
names, addresses) is ever a label.

Several worker processes: each keeps its own counts; ``snapshot()`` and
``merge()`` turn them into one view (counters and histogram buckets add up,
gauges add up), which is how a parent process would serve one endpoint.
"""

import asyncio
import math
import socket

from fastfog.hotpaths import Count, Histogram, TunnelSeries

MAX_ROLES = 256
OVERFLOW = "_overflow_"
_UNSAFE = frozenset('|@#:"{}\\')
TIME_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
BYTE_BUCKETS = tuple(256 * 4 ** power for power in range(12))  # 256 B to 1 GiB
SECOND_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
HISTOGRAMS = {"cn.duration": SECOND_BUCKETS, "cn.bytes_in": BYTE_BUCKETS, "cn.bytes_out": BYTE_BUCKETS}
TIMINGS = frozenset({"resolver.lookup_time", "cn.atpt.connect.time", "proxy_duration_ms"})
STATSD_PREFIX = "smokescreen."
DATAGRAM = 1432  # fits an Ethernet MTU with IP and UDP headers


# The # HELP text of every family (Smokescreen's names first); a name missing here still gets one.
HELP = {
    "acl.allow": "Requests the ACL allowed, by role, project and whether the default rule decided.",
    "acl.report": "Requests allowed by a report policy that enforce would have denied.",
    "acl.deny": "Requests the ACL denied.",
    "acl.role_not_determined": "Requests whose client role could not be determined.",
    "resolver.attempts_total": "Host name lookups, answers from the cache included.",
    "resolver.errors_total": "Lookups that failed, and destinations whose every address was denied.",
    "resolver.lookup_time": "Time to resolve a host name, in milliseconds.",
    "resolver.allow.default": "Destination addresses allowed by the default address policy.",
    "resolver.allow.user_configured": "Destination addresses allowed by allow_ranges or allow_addresses.",
    "cn.atpt.total": "Upstream connection attempts, by success.",
    "cn.atpt.connect.err": "Failed upstream connection attempts, by error type.",
    "cn.atpt.connect.time": "Time to connect upstream (with time_connect), in milliseconds.",
    "cn.close": "CONNECT tunnels closed, by role and project.",
    "cn.active_at_termination": "Tunnels still active when a shutdown closed them.",
    "cn.duration": "How long tunnels lasted, in seconds.",
    "cn.bytes_in": "Bytes each tunnel received from its upstream.",
    "cn.bytes_out": "Bytes each tunnel sent to its upstream.",
    "proxy_duration_ms": "Time from a request's arrival to its tunnel or forwarding starting, in milliseconds.",
    "requests.rate_limited": "Requests refused by the request rate limit (429).",
    "requests.concurrency_limited": "Requests refused by the concurrency limit (503).",
    "tunnels.concurrency_limited": "CONNECTs refused by the tunnel limit (429).",
    "requests.concurrent": "Requests being processed now.",
    "sni.report": "Tunnels whose TLS server name did not match the CONNECT host (reported).",
    "sni.deny": "Tunnels closed because their TLS server name did not match the CONNECT host.",
    "webhook.sent": "Webhook events delivered.",
    "webhook.dropped": "Webhook events dropped (queue full or delivery failed).",
    "webhook.access_request.requests": "Access-request webhook calls made.",
    "webhook.access_request.accepts": "Access-request webhook calls answered accept.",
    "webhook.access_request.errors": "Access-request webhook calls that failed.",
    "webhook.access_request.timeouts": "Access-request webhook calls that timed out.",
    "webhook.access_request.cache_hits": "Access-request answers taken from the cache.",
    "fastfog.statsd.dropped": "DogStatsD datagrams the kernel refused.",
    "fastfog.log.dropped": "Log records dropped because the log reader was too slow.",
    "fastfog.accept.exhausted": "Accepts refused for want of descriptors or memory.",
    "fastfog.dns.cache.hits": "Host name lookups answered by the DNS cache.",
    "fastfog.dns.cache.misses": "Host name lookups the DNS cache could not answer.",
    "fastfog.dns.cache.entries": "Names in the DNS cache.",
    "fastfog.dns.cache.bytes": "Memory the DNS cache's entries take, as fastfog counts them.",
    "fastfog.mitm.requests": "Requests inside intercepted tunnels, by outcome and role.",
    "fastfog.workers.unreachable": "Worker processes that did not answer the last scrape.",
}
_DENY_HELP = "Destination addresses denied: "
VISIBLE_FROM_START = ("fastfog.accept.exhausted", "fastfog.log.dropped", "fastfog.dns.cache.misses")
# Counters that follow from others, made when exported rather than counted per request: every
# resolver attempt is a cache hit or a miss.
DERIVED = {"fastfog.dns.cache.hits": ("resolver.attempts_total", "fastfog.dns.cache.misses")}


def help_text(name):
    found = HELP.get(name)
    if found is not None:
        return found
    if name.startswith("resolver.deny."):
        return _DENY_HELP + name[len("resolver.deny."):].replace("_", " ") + "."
    return f"fastfog's {name}."


def process_figures():
    """This process's standard figures (prometheus-client's process collector): {family: (type,
    help, value)}, with ``process_cpu_seconds_total`` as a counter."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    found = {}
    for family in ProcessCollector(registry=CollectorRegistry()).collect():
        for sample in family.samples:
            found[sample.name] = (family.type, family.documentation, sample.value)
    return found


def sanitise(value):
    """A label value safe for both exporters."""
    if all(c not in _UNSAFE and c.isprintable() for c in value):
        return value
    return "".join("_" if c in _UNSAFE or not c.isprintable() else c for c in value)


def prometheus_name(name):
    return name.replace(".", "_").replace("-", "_")


class Metrics:
    """Counts events into series (hotpaths.Count, Histogram: C counters in the compiled core);
    ``statsd`` (a StatsdSink) also receives each one as it happens."""

    def __init__(self, statsd=None, max_roles=MAX_ROLES):
        self.counters = {}  # (name, labels) -> Count; labels: tuple of (key, value) pairs, sorted
        self.histograms = {}  # (name, labels) -> Histogram
        self.gauges = {}  # name -> function returning the current value
        self.statsd = statsd
        self.max_roles = max_roles
        self._roles = {}  # metric name -> {raw role: label value}
        self._acl = {}  # (role, project, default rule, result) -> (its Count, its labels) (bounded)
        self._tunnels = {}  # (role, project) -> (its TunnelSeries, its labels) (bounded)
        self._until_counted = {}  # (name, labels) -> Count of a counter exported once it is not 0
        # fastfog's own label-less counters are shown from the start, at 0 (alerts on them work
        # before the first event); Smokescreen's appear once first counted, as in Smokescreen.
        for name in VISIBLE_FROM_START:
            self.counter(name)

    def role(self, metric, raw):
        """The label value for ``raw`` in ``metric``: sanitised, and capped per metric."""
        seen = self._roles.get(metric)
        if seen is None:
            seen = self._roles[metric] = {}
        value = seen.get(raw)
        if value is None:
            value = sanitise(raw) if len(seen) < self.max_roles else OVERFLOW
            if len(seen) < 4 * self.max_roles:  # remember overflowing names too, up to a bound
                seen[raw] = value
        return value

    def counter(self, name, labels=()):
        """The Count of ``name`` with ``labels``, made at first use."""
        key = (name, labels)
        count = self.counters.get(key)
        if count is None:
            count = self.counters[key] = Count()
        return count

    def histogram(self, name, labels=()):
        """The Histogram of ``name`` with ``labels`` (its buckets by its name), made at first use."""
        key = (name, labels)
        histogram = self.histograms.get(key)
        if histogram is None:
            histogram = self.histograms[key] = Histogram(HISTOGRAMS.get(name, TIME_BUCKETS_MS))
        return histogram

    def incr(self, name, labels=(), value=1):
        count = self.counters.get((name, labels))
        if count is None:
            count = self.counter(name, labels)
        count.add(value)
        if self.statsd is not None:
            self.statsd.add(name, value, "c", labels)

    def observe(self, name, value, labels=()):
        """A timing (ms) or a distribution (bytes, seconds)."""
        histogram = self.histograms.get((name, labels))
        if histogram is None:
            histogram = self.histogram(name, labels)
        histogram.observe(value)
        if self.statsd is not None:
            self.statsd.add(name, value, "ms" if name in TIMINGS else "h", labels)

    def count_locally(self, name, value=1):
        """A counter of fastfog's own (not sent to statsd: it may be about statsd, or the log)."""
        self.counter(name).add(value)

    def gauge(self, name, read):
        """A gauge read when exported (``read()`` returns its value)."""
        self.gauges[name] = read

    # --- the events, with Smokescreen's names and tags -------------------------------------

    def _remembered(self, memory, key, make):
        """``make()``, remembered under ``key`` in ``memory`` (up to a bound; past it, made each time)."""
        found = memory.get(key)
        if found is None:
            found = make()
            if len(memory) < 16 * self.max_roles:
                memory[key] = found
        return found

    def acl_decision(self, decision, role):
        result = decision.result
        if result is None:
            return
        project, default_rule = decision.project, decision.default_rule
        key = (role, project, default_rule, result)
        found = self._acl.get(key)  # (the common case, without making the closure below)
        if found is None:
            found = self._remembered(self._acl, key, lambda: self._acl_series(result, role, project, default_rule))
        count, labels = found
        count.add(1)
        if self.statsd is not None:
            self.statsd.add("acl." + result, 1, "c", labels)

    def _acl_series(self, result, role, project, default_rule):
        labels = (("def_rule", "true" if default_rule else "false"), ("project", sanitise(project or "")),
                  ("role", self.role("acl", role)))
        return self.counter("acl." + result, labels), labels

    def connection_closed(self, role, project, duration, bytes_in, bytes_out, active_at_termination):
        series, labels = self._remembered(self._tunnels, (role, project), lambda: self._tunnel_series(role, project))
        series.closed(duration, bytes_in, bytes_out, active_at_termination)
        statsd = self.statsd
        if statsd is not None:
            statsd.add("cn.close", 1, "c", labels)
            if active_at_termination:
                statsd.add("cn.active_at_termination", 1, "c", labels)
            statsd.add("cn.duration", duration, "h", labels)
            statsd.add("cn.bytes_in", bytes_in, "h", labels)
            statsd.add("cn.bytes_out", bytes_out, "h", labels)

    def _tunnel_series(self, role, project):
        labels = (("project", sanitise(project or "")), ("role", self.role("cn", role)))
        # cn.active_at_termination appears once a shutdown first closes a tunnel, as in Smokescreen.
        active = self._until_counted.get(("cn.active_at_termination", labels))
        if active is None:
            active = self._until_counted[("cn.active_at_termination", labels)] = Count()
        series = TunnelSeries(self.counter("cn.close", labels), active, self.histogram("cn.duration", labels),
                              self.histogram("cn.bytes_in", labels), self.histogram("cn.bytes_out", labels))
        return series, labels

    # --- export --------------------------------------------------------------------------------

    def snapshot(self):
        """Plain data of everything counted (gauges read now), for merging across processes;
        ``process``: [(labels, process_figures())], this process's own."""
        counters = {key: count.value for key, count in self.counters.items()}
        counters.update({key: count.value for key, count in self._until_counted.items() if count.value})
        for name, (total, part) in DERIVED.items():
            counters[(name, ())] = counters.get((total, ()), 0) - counters.get((part, ()), 0)
        return {
            "counters": counters,
            "histograms": {key: histogram.slots() for key, histogram in self.histograms.items()},
            "gauges": {name: read() for name, read in self.gauges.items()},
            "process": [((), process_figures())],
        }

    def prometheus_text(self):
        return render_prometheus(self.snapshot())


def merge(snapshots):
    """Several processes' snapshots as one: everything adds up; process figures are kept apart
    (each snapshot's labelled by the caller, e.g. with its worker)."""
    merged = {"counters": {}, "histograms": {}, "gauges": {}, "process": []}
    for snapshot in snapshots:
        merged["process"] += snapshot.get("process", [])
        for key, value in snapshot["counters"].items():
            merged["counters"][key] = merged["counters"].get(key, 0) + value
        for key, slots in snapshot["histograms"].items():
            total = merged["histograms"].setdefault(key, [0] * len(slots))
            for index, value in enumerate(slots):
                total[index] += value
        for name, value in snapshot["gauges"].items():
            merged["gauges"][name] = merged["gauges"].get(name, 0) + value
    return merged


def _labels(pairs, extra=()):
    pairs = tuple(pairs) + tuple(extra)
    if not pairs:
        return ""
    text = ",".join('{}="{}"'.format(key, str(value).replace("\\", "\\\\").replace('"', '\\"')
                                      .replace("\n", "\\n")) for key, value in pairs)
    return "{" + text + "}"


def _number(value):
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)


def render_prometheus(snapshot):
    """The Prometheus text format (0.0.4) of a snapshot, with # HELP for every family."""
    lines = []
    by_name = {}
    for (name, labels), value in sorted(snapshot["counters"].items()):
        by_name.setdefault(name, []).append((labels, value))
    for name, series in by_name.items():
        exported = prometheus_name(name)
        lines.append(f"# HELP {exported} {help_text(name)}")
        lines.append(f"# TYPE {exported} counter")
        lines += [f"{exported}{_labels(labels)} {_number(value)}" for labels, value in series]
    by_name = {}
    for (name, labels), slots in sorted(snapshot["histograms"].items()):
        by_name.setdefault(name, []).append((labels, slots))
    for name, series in by_name.items():
        exported = prometheus_name(name) + ("_timer" if name in TIMINGS else "")
        buckets = HISTOGRAMS.get(name, TIME_BUCKETS_MS)
        lines.append(f"# HELP {exported} {help_text(name)}")
        lines.append(f"# TYPE {exported} histogram")
        for labels, slots in series:
            cumulative = 0
            for bound, count in zip(buckets, slots, strict=False):  # slots: one more each for sum, count
                cumulative += count
                lines.append(f"{exported}_bucket{_labels(labels, (('le', _number(float(bound))),))} {cumulative}")
            lines.append(f"{exported}_bucket{_labels(labels, (('le', '+Inf'),))} {slots[-1]}")
            lines.append(f"{exported}_sum{_labels(labels)} {_number(slots[-2])}")
            lines.append(f"{exported}_count{_labels(labels)} {slots[-1]}")
    for name, value in sorted(snapshot["gauges"].items()):
        exported = prometheus_name(name)
        lines += [f"# HELP {exported} {help_text(name)}", f"# TYPE {exported} gauge", f"{exported} {_number(value)}"]
    families = {}
    for labels, figures in snapshot.get("process", ()):
        for sample, (kind, text, value) in figures.items():
            family = families.setdefault(sample, (kind, text, []))
            family[2].append((labels, value))
    for sample, (kind, text, series) in sorted(families.items()):
        lines += [f"# HELP {sample} {text}", f"# TYPE {sample} {kind}"]  # (as prometheus-client writes them)
        lines += [f"{sample}{_labels(labels)} {_number(value)}" for labels, value in series]
    lines += [f"# HELP fastfog_build_info {BUILD_INFO_HELP}", "# TYPE fastfog_build_info gauge",
              f"fastfog_build_info{_labels(build_labels())} 1"]
    return "\n".join(lines) + "\n"


BUILD_INFO_HELP = "The fastfog that runs: its version, its core (compiled or pure) and Python's version."


def build_labels():
    import platform

    from fastfog import __version__, hotpaths

    return (("core", "compiled" if hotpaths.COMPILED else "pure"), ("python", platform.python_version()),
            ("version", __version__))


class StatsdSink:
    """DogStatsD over UDP: lines gathered during a loop iteration, sent at its end, never blocking."""

    def __init__(self, loop, address, on_drop=None):
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((host, int(port)))
        self.loop = loop
        self.pending = []
        self._formats = {}
        self.dropped = 0
        self.sent = 0
        self.on_drop = on_drop

    def add(self, name, value, kind, labels):
        key = (name, kind, labels)
        parts = self._formats.get(key)
        if parts is None:  # each series is formatted once; label values are bounded (see Metrics.role)
            tags = ",".join(f"{tag}:{tag_value}" for tag, tag_value in labels)
            parts = self._formats[key] = (f"{STATSD_PREFIX}{name}:", f"|{kind}" + (f"|#{tags}" if tags else ""))
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(parts[0] + (str(value) if type(value) is int else _number(value)) + parts[1])

    def flush(self):
        lines, self.pending = self.pending, []
        datagram = ""
        for line in lines:
            if datagram and len(datagram) + 1 + len(line) > DATAGRAM:
                self._send(datagram)
                datagram = ""
            datagram = f"{datagram}\n{line}" if datagram else line
        if datagram:
            self._send(datagram)

    def _send(self, datagram):
        try:
            self.sock.send(datagram.encode("utf-8", "replace"))
            self.sent += 1
        except OSError:  # full buffer, nobody listening (ECONNREFUSED): the datagram is gone
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()

    def close(self):
        self.flush()
        self.sock.close()


async def serve_prometheus(render, host, port, endpoint):
    """The scrape endpoint: GET ``endpoint`` answers ``render()`` (the text format; a coroutine
    function too, for the supervisor that asks its workers); anything else 404."""
    async def answer(reader, writer):
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = request.split(b"\r\n", 1)[0].split(b" ")
            if len(line) == 3 and line[0] in (b"GET", b"HEAD") and line[1].split(b"?")[0] == endpoint.encode():
                text = render()
                body = (await text if asyncio.iscoroutine(text) else text).encode()
                status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, kind = b"not found\n", "404 Not Found", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + (body if line[0] != b"HEAD" else b""))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, reuse_address=True)
