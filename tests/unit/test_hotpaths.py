"""Which implementation runs, and how the command line reports it (real subprocesses)."""

import asyncio
import os
import socket
import subprocess
import sys
import types

import pytest

import fastfog

BLOCK_CORE = """
import importlib.abc, sys
class BlockCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastfog._core":
            raise ImportError("No module named 'fastfog._core'")
sys.meta_path.insert(0, BlockCore())
"""


def run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_environment_switch_selects_the_reference():
    result = run("from fastfog import hotpaths; print(hotpaths.COMPILED, hotpaths.CidrTable.__module__)",
                 FASTFOG_NO_EXTENSIONS="1")
    assert result.stdout.split() == ["False", "fastfog.reference.cidr"]


@pytest.mark.skipif(os.environ.get("FASTFOG_NO_EXTENSIONS", "") not in ("", "0"),
                    reason="the compiled core is switched off in this run")
def test_compiled_core_is_the_default():
    result = run("from fastfog import hotpaths; print(hotpaths.COMPILED, hotpaths.CidrTable.__module__)",
                 FASTFOG_NO_EXTENSIONS="0")
    assert result.stdout.split() == ["True", "fastfog._core"]


def test_missing_extension_is_a_clear_error_not_a_fallback():
    result = run(BLOCK_CORE + "import fastfog.hotpaths", FASTFOG_NO_EXTENSIONS="")
    assert result.returncode != 0
    assert "fastfog's compiled core (fastfog._core) is not built" in result.stderr
    assert "FASTFOG_NO_EXTENSIONS=1" in result.stderr


def test_missing_extension_with_the_switch_runs_pure_python():
    result = run(BLOCK_CORE + "from fastfog import hotpaths; print(hotpaths.COMPILED)",
                 FASTFOG_NO_EXTENSIONS="1")
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("command", [["fastfog"], [sys.executable, "-m", "fastfog"]])
def test_version(command):
    expected_core = ("pure-Python core" if os.environ.get("FASTFOG_NO_EXTENSIONS", "") not in ("", "0")
                     else "compiled core")
    for flag in ("--version", "-v"):
        result = subprocess.run(command + [flag], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"fastfog {fastfog.__version__} ({expected_core})\n"


def test_unexpected_arguments_are_an_error():
    result = subprocess.run([sys.executable, "-m", "fastfog", "--no-such-flag"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


def stub_api():
    """{name: set of members} for every class and function in fastfog/_core.pyi."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(fastfog.__file__).with_name("_core.pyi").read_text())
    api = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            members |= {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
            for base in node.bases:
                members |= api.get(getattr(base, "id", None), set())
            api[node.name] = members
        elif isinstance(node, ast.FunctionDef):
            api[node.name] = set()
    return {name: members for name, members in api.items() if not name.startswith("_")}


def test_type_stubs_describe_both_implementations(impl):
    api = stub_api()
    assert set(api) == {"RequestHead", "ResponseHead", "CidrTable", "HostGlobSet", "SpliceRelay",
                        "BufferedRelay", "IdSource", "json_line", "parse_request_head", "parse_response_head",
                        "rfc3339", "client_hello_sni", "rewrite_head", "EdgePoller", "EdgeWatch", "poller_for", "Count",
                        "Histogram", "TunnelSeries", "open_upstream", "accept_batch", "Exchange",
                        "ClientConnection", "Deadline", "still_open", "RecordBatch",
                        "upstream_request", "client_response",
                        "TokenBucket", "Scope", "Limits", "RecordsCore",
                        "UpstreamPool", "ConntrackCore", "Tunnel", "Timers", "timers_for"}
    loop = asyncio.new_event_loop()
    client, upstream = socket.socketpair()
    samples = {
        "RequestHead": impl.parse_request_head(b"CONNECT h:1 HTTP/1.1\r\n\r\n"),
        "ResponseHead": impl.parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n"),
        "CidrTable": impl.CidrTable([]),
        "HostGlobSet": impl.HostGlobSet([]),
        "SpliceRelay": impl.SpliceRelay(loop, client, upstream, lambda relay: None),
        "BufferedRelay": impl.BufferedRelay(loop, lambda relay: None),
        "IdSource": impl.IdSource(),
        "EdgePoller": impl.poller_for(loop),
        "EdgeWatch": impl.EdgeWatch(impl.poller_for(loop), client.fileno()),
        "Count": impl.Count(),
        "Histogram": impl.Histogram((1, 2)),
        "TunnelSeries": impl.TunnelSeries(impl.Count(), impl.Count(), impl.Histogram((1,)), impl.Histogram((1,)),
                                          impl.Histogram((1,))),
        "Exchange": impl.Exchange(None, types.SimpleNamespace(watch=lambda: None), None, {}, None, 0.0, None),
        "Deadline": impl.Deadline(loop),
        "Timers": impl.timers_for(loop),
        "UpstreamPool": impl.UpstreamPool(),
        "RecordsCore": impl.RecordsCore(None, None, None),
        "TokenBucket": impl.TokenBucket(1.0, 2),
        "Scope": impl.Scope(0, None, 0, 0),
        "Limits": impl.Limits(types.SimpleNamespace(max_request_rate=0, max_request_burst=None,
                                                    max_concurrent_requests=0, max_concurrent_connect_tunnels=0,
                                                    role_limits={})),
        "RecordBatch": impl.RecordBatch(impl.json_line, lambda: None),
        "ConntrackCore": impl.ConntrackCore(None, None, lambda: None),
        "ClientConnection": impl.ClientConnection(types.SimpleNamespace(loop=loop, connections=set()), client,
                                                  ("127.0.0.1", 1)),
    }
    samples["Tunnel"] = impl.ConntrackCore(samples["Limits"], types.SimpleNamespace(webhooks=None),
                                           lambda: None).opened({"role": None}, 0.0, None)
    samples["EdgeWatch"].forget()
    samples["SpliceRelay"].close()
    loop.close()
    for name, members in api.items():
        assert hasattr(impl, name)
        for member in members - {"__init__"}:
            assert hasattr(samples[name], member), (name, member)
    public = {name for name in dir(samples["RequestHead"]) if not name.startswith("_")}
    assert public == api["RequestHead"]
