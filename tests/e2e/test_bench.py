"""``fastfog bench`` end to end: a short run of every workload, direct and through fastfog.

Speed is never asserted here: only that each workload completes work without errors.
"""

import json
import subprocess
import sys


def run_bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "fastfog", "bench", "--seconds", "0.3", "--warmup", "0.1",
                             "--concurrency", "4", "--bulk-size", "2000000", "--rate", "50", "--idle", "20",
                             "--json", str(out), *extra], capture_output=True, text=True, timeout=180)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_a_short_run_of_every_workload(tmp_path):
    result, data = run_bench(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = {(row["workload"], row["target"]): row for row in data["results"]}
    expected = {(workload, target) for workload in ("connect", "http", "bulk", "fixed-rate")
                for target in ("direct", "fastfog")} | {("idle", "fastfog"), ("dns", "fastfog"),
                                                        ("connect-tls", "fastfog"), ("connect-tls-resumed", "fastfog"),
                                                        ("idle-tls", "fastfog")}
    assert set(seen) == expected
    assert all(row["errors"] == {} for row in data["results"])
    assert all("bound_by" in row and "load_cpu_busy" in row for row in data["results"])  # every workload says
    for target in ("direct", "fastfog"):
        assert seen[("connect", target)]["value"] > 0 and seen[("http", target)]["value"] > 0
        assert seen[("bulk", target)]["value"] > 0 and seen[("bulk", target)]["down"] > 0
        assert seen[("fixed-rate", target)]["p99_ms"] > 0
    assert seen[("idle", "fastfog")]["tunnels"] == 20 and seen[("idle-tls", "fastfog")]["tunnels"] == 20
    assert seen[("dns", "fastfog")]["by_name"] > 0 and seen[("dns", "fastfog")]["by_ip"] > 0
    table = result.stdout.splitlines()
    assert table[0].split() == ["workload", "unit", "direct", "fastfog"]
    assert [line.split()[0] for line in table[2:] if not line.startswith(" ")] == [
        "connect", "http", "bulk", "fixed-rate", "idle", "dns", "connect-tls", "connect-tls-resumed",
        "idle-tls"]
    details = [line.split()[:2] for line in table[2:] if line.startswith(" ")]
    assert details[:3] == [["p50", "ms"], ["p99", "ms"], ["proxy", "CPU"]]  # under connect
    assert seen[("connect-tls", "fastfog")]["value"] > 0 and seen[("connect-tls", "fastfog")]["resumed_share"] == 0
    assert seen[("connect-tls-resumed", "fastfog")]["resumed_share"] > 0.5  # sessions are resumed
    assert "x)" in table[2]  # the ratio to direct
    assert "load generator CPU seconds: connect/direct " in result.stderr
    assert seen[("connect", "fastfog")]["proxy_cpu_us_per_op"] > 0
    assert "proxy CPU per tunnel or request: connect/fastfog " in result.stderr


def test_another_proxy_by_address_and_errors_set_the_exit_code(tmp_path):
    # Nothing listens there: every transaction fails, and the exit code says so.
    result, data = run_bench(tmp_path, "--workloads", "connect", "--no-fastfog", "--vs-address",
                             "nothing=203.0.113.1:4999")
    assert result.returncode == 1
    [direct, nothing] = data["results"]
    assert direct["errors"] == {} and nothing["errors"]
    assert "errors: connect / nothing" in result.stderr


def test_another_proxy_started_by_command_gets_its_column_and_comparison(tmp_path):
    command = (f"{sys.executable} -m fastfog serve --listen-ip 203.0.113.1 --listen-port {{port}} "
               "--resolver-address 203.0.113.53:5353 --allow-range 203.0.113.10/32")
    result, data = run_bench(tmp_path, "--workloads", "connect,dns", "--vs", f"again={command}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {(row["workload"], row["target"]) for row in data["results"]} == {
        ("connect", "direct"), ("connect", "fastfog"), ("connect", "again"), ("dns", "fastfog"), ("dns", "again")}
    header, _, connect_row = result.stdout.splitlines()[:3]
    assert header.split() == ["workload", "unit", "direct", "fastfog", "again"]
    assert "x again]" in connect_row


def test_a_port_already_taken_is_never_what_gets_measured(tmp_path):
    """On loopback, a proxy of someone else's on the usual port is left alone: fastfog bench
    starts its own on a free port and measures that one."""
    import socket

    with socket.create_server(("127.0.0.1", 4750)):  # listening, and never answering
        result, data = run_bench(tmp_path, "--no-namespace", "--workloads", "connect")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not data["namespaced"] and data["ports"]["proxy"] != 4750
    assert all(row["errors"] == {} and row["value"] > 0 for row in data["results"])


def test_a_proxy_that_exits_at_once_is_reported_with_its_stderr(tmp_path):
    result, data = run_bench(tmp_path, "--workloads", "connect", "--fastfog-flags=--no-such-flag")
    assert result.returncode == 1 and data is None
    assert "exited with status 2" in result.stderr
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_latency_figures_are_in_the_json_and_the_load_generator_is_named(tmp_path):
    result, data = run_bench(tmp_path, "--workloads", "connect,http,fixed-rate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert data["load_generator"] in ("compiled", "pure-Python")
    for row in data["results"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"], row
