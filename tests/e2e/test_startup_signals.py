"""A signal that comes the instant the proxy's port accepts connections, before start-up has
finished, is handled, never the default action that would kill the process."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

import netns
from .conftest import DNS_PORT

ROUNDS = 8


def start(tmp_path, port, *flags):
    config = tmp_path / "config.yaml"
    config.write_text("allow_missing_role: true\n")
    return subprocess.Popen([sys.executable, "-m", "fastfog", "serve", "--config-file", str(config),
                             "--listen-ip", netns.PROXY, "--listen-port", str(port),
                             "--resolver-address", f"{netns.DNS}:{DNS_PORT}", *flags],
                            stderr=subprocess.PIPE, text=True)


def first_accept(process, port, timeout=20):
    """Poll the port until a connection is accepted (as a reload tool right after a start would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            socket.create_connection((netns.PROXY, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.001)
    raise AssertionError("the port never accepted a connection")


def messages(stderr):
    return [json.loads(line)["msg"] for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("flags, reloads", [((), 1), (("--workers", "2"), 2)])
def test_sighup_the_instant_the_port_accepts_reloads(dns, tmp_path, flags, reloads):
    for round_number in range(ROUNDS if not flags else 3):
        port = 4760 + round_number
        process = start(tmp_path, port, *flags)
        try:
            first_accept(process, port)
            process.send_signal(signal.SIGHUP)
            time.sleep(0.5 if not flags else 1.5)
            assert process.poll() is None, f"round {round_number}: died of SIGHUP during start-up"
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr
        assert messages(stderr).count("configuration reloaded") == reloads, stderr


def test_sigterm_the_instant_the_port_accepts_stops_gracefully(dns, tmp_path):
    for round_number in range(ROUNDS):
        port = 4770 + round_number
        process = start(tmp_path, port)
        first_accept(process, port)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "quitting gracefully" in messages(stderr)
