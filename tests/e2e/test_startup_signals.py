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
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        try:
            socket.create_connection((netns.PROXY, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.001)
    stop(process)
    raise AssertionError("the port never accepted a connection")


def stop(process):
    """SIGTERM and wait (a kill if it will not stop); its standard error."""
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return stderr


def messages(stderr):
    return [json.loads(line)["msg"] for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("flags, reloads", [((), 1), (("--workers", "2"), 2)])
def test_sighup_the_instant_the_port_accepts_reloads(dns, tmp_path, flags, reloads):
    for round_number in range(ROUNDS if not flags else 3):
        port = 4760 + round_number
        process = start(tmp_path, port, *flags)
        first_accept(process, port)
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5 if not flags else 1.5)
        alive = process.poll() is None
        stderr = stop(process)
        assert alive, f"round {round_number}: died of SIGHUP during start-up"
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


def test_log_level_and_format_flags(dns, echo, tmp_path):
    """--log-level warn: an allowed tunnel's info record is not written, a deny's warning is;
    --log-format logfmt: lines of key=value; an unknown level is refused."""
    process = start(tmp_path, 4790, "--log-level", "warn", "--log-format", "logfmt")
    first_accept(process, 4790)
    for target in (b"origin.test:7", b"private.test:7"):
        with socket.create_connection((netns.PROXY, 4790), timeout=10) as sock:
            sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\n\r\n")
            sock.recv(1000)
    time.sleep(0.3)
    lines = stop(process).splitlines()
    assert all(line.startswith("time=") for line in lines), lines
    assert not any(" level=info " in line for line in lines)
    assert any("msg=CANONICAL-PROXY-DECISION" in line and "requested_host=private.test:7" in line for line in lines)
    refused = subprocess.run([sys.executable, "-m", "fastfog", "serve", "--log-level", "verbose"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "--log-level: 'verbose' is not one of debug, info" in refused.stderr
