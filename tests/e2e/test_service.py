"""Running under systemd (the notify protocol on a real datagram socket, socket activation) and
``fastfog healthcheck``."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from pki import make_pki

from .client import connect
from .conftest import DNS_PORT

import netns


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def next_state(sock):
    return sock.recv(4096).decode()


def test_notify_datagrams_go_to_a_path_and_to_an_abstract_name(notify_socket, monkeypatch):
    from fastfog import service

    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert service.notify("READY=1") and next_state(sock) == "READY=1"
    assert service.reloading()
    state = next_state(sock)
    assert state.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(state.split("=")[-1]) > 0
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind("\0fastfog-test-notify")
    abstract.settimeout(10)
    with abstract:
        monkeypatch.setenv("NOTIFY_SOCKET", "@fastfog-test-notify")
        assert service.notify("STOPPING=1") and abstract.recv(100) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert service.notify("READY=1") is False  # no service manager: nothing to do


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_and_stopping_are_announced(dns, tmp_path, notify_socket, workers):
    path, sock = notify_socket
    config = tmp_path / "config.yaml"
    config.write_text("allow_missing_role: true\n")
    process = subprocess.Popen([sys.executable, "-m", "fastfog", "serve", "--config-file", str(config),
                                "--listen-ip", netns.PROXY, "--listen-port", "4791", "--workers", str(workers),
                                "--resolver-address", f"{netns.DNS}:{DNS_PORT}"],
                               stderr=subprocess.DEVNULL, env={**os.environ, "NOTIFY_SOCKET": path})
    try:
        assert next_state(sock) == "READY=1"
        socket.create_connection((netns.PROXY, 4791), timeout=5).close()  # listening by then
        process.send_signal(signal.SIGHUP)
        assert next_state(sock).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert next_state(sock) == "READY=1"
        process.send_signal(signal.SIGTERM)
        assert next_state(sock) == "STOPPING=1"
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_socket_activation(dns, echo, tmp_path):
    """systemd's LISTEN_FDS: the listener passed as descriptor 3 is the one served."""
    listener = socket.create_server((netns.PROXY, 4792))
    fd = listener.fileno()
    launcher = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
                "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
                "os.execv(sys.executable, [sys.executable, '-m', 'fastfog', 'serve', *sys.argv[2:]])")
    process = subprocess.Popen(  # as systemd starts it: the listener on descriptor 3, LISTEN_PID its own
        [sys.executable, "-c", launcher, str(fd), "--resolver-address", f"{netns.DNS}:{DNS_PORT}",
         "--listen-port", "9"], stderr=subprocess.DEVNULL, pass_fds=(fd,))
    try:
        deadline = time.monotonic() + 20
        while True:  # the listener already accepts; fastfog answers once it serves it
            try:
                sock, head, _ = connect((netns.PROXY, 4792), "origin.test:7", timeout=2)
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        with sock:
            assert head.status == 200
            sock.sendall(b"activated")
            assert sock.recv(20) == b"activated"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        listener.close()


def healthcheck(*flags):
    return subprocess.run([sys.executable, "-m", "fastfog", "healthcheck", *flags], capture_output=True,
                          text=True, timeout=30)


def test_healthcheck_follows_the_config_plain_or_tls(start_proxy, tmp_path):
    proxy = start_proxy()
    assert healthcheck("--listen-ip", netns.PROXY, "--listen-port", "4750").returncode == 0
    proxy.stop()
    down = healthcheck("--listen-ip", netns.PROXY, "--listen-port", "4750")
    assert down.returncode == 1 and "Connection refused" in down.stderr
    pki = make_pki(tmp_path, proxy_ips=(netns.PROXY,))
    tls = ["--listen-ip", netns.PROXY, "--listen-port", "4753", "--tls-server-bundle-file", pki["proxy"],
           "--tls-client-ca-file", pki["ca"], "--tls-crl-file", pki["ca.crl"]]
    start_proxy(*tls[4:], port=4753)
    assert healthcheck(*tls).returncode == 0
