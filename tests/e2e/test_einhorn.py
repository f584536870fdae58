"""Einhorn: fastfog serves on the listener its master passes down and acknowledges on its socket."""

import json
import os
import socket
import subprocess
import sys
import threading

import netns

from .client import connect


def test_inherited_listener_and_worker_ack(tmp_path, dns, echo):
    listener = socket.create_server((netns.PROXY, 4760))
    control = socket.socket(socket.AF_UNIX)
    control_path = str(tmp_path / "einhorn.sock")
    control.bind(control_path)
    control.listen(1)
    control.settimeout(20)
    acks = []

    def receive():
        connection, _ = control.accept()
        with connection:
            acks.append(connection.makefile("rb").readline())

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    env = {**os.environ, "EINHORN_FD_0": str(listener.fileno()), "EINHORN_FD_COUNT": "1",
           "EINHORN_MASTER_PID": str(os.getpid()), "EINHORN_SOCK_PATH": control_path}
    # --listen-port is not what it serves on: Einhorn's socket wins.
    process = subprocess.Popen([sys.executable, "-m", "fastfog", "serve", "--listen-port", "1",
                                "--resolver-address", f"{netns.DNS}:53"], env=env, pass_fds=[listener.fileno()],
                               stderr=subprocess.DEVNULL)
    try:
        receiver.join(20)
        assert len(acks) == 1
        assert json.loads(acks[0]) == {"command": "worker:ack", "pid": process.pid}
        listener.close()  # the worker's copy keeps it open
        sock, head, _ = connect((netns.PROXY, 4760), "origin.test:7")
        sock.close()
        assert head.status == 200
    finally:
        process.terminate()
        process.wait(10)
        control.close()
