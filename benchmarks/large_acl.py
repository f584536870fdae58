"""Start-up and reload with a large ACL: how long start-up takes, and how long any request
waits while SIGHUP reloads it.

    python benchmarks/large_acl.py [--roles 5000] [--globs 20] [--seconds 3]

The ACL has ``roles`` services of ``globs`` wildcard domains each (5,000 × 20 is a 4 MB file).
fastfog serves on 127.0.0.1 with ``--allow-range 127.0.0.0/8`` and a local echo origin; a
client opens one short tunnel after another and records each one's time, before, during and
after the reload. Nothing leaves the loopback interface.
"""

import argparse
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time


def write_acl(path, roles, globs):
    rng = random.Random(1)
    lines = ["version: v1", "services:"]
    for index in range(roles):
        lines.append(f"  - name: role-{index}\n    project: project-{index % 50}\n    action: enforce\n"
                     "    allowed_domains:")
        lines += [f'      - "*.{"".join(rng.choices(string.ascii_lowercase, k=10))}-{n}.example.com"'
                  for n in range(globs)]
    lines.append("default:\n  project: default\n  action: open")
    with open(path, "w", encoding="ascii") as file:
        file.write("\n".join(lines) + "\n")


def echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tunnel(proxy_port, target):
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        answer = sock.recv(100)
        assert answer.startswith(b"HTTP/1.0 200"), answer
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roles", type=int, default=5000)
    parser.add_argument("--globs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        acl, config = os.path.join(folder, "acl.yaml"), os.path.join(folder, "config.yaml")
        write_acl(acl, args.roles, args.globs)
        with open(config, "w", encoding="ascii") as file:
            file.write("allow_missing_role: true\n")
        port, target = free_port(), f"127.0.0.1:{echo_server()}"
        started = time.perf_counter()
        proxy = subprocess.Popen([sys.executable, "-m", "fastfog", "serve", "--listen-ip", "127.0.0.1",
                                  "--listen-port", str(port), "--allow-range", "127.0.0.0/8",
                                  "--config-file", config, "--egress-acl-file", acl],
                                 stderr=subprocess.PIPE, text=True)
        records = []
        for line in proxy.stderr:
            records.append(line)
            if '"msg":"listening"' in line:
                break
        startup = time.perf_counter() - started
        threading.Thread(target=lambda: records.extend(proxy.stderr), daemon=True).start()
        try:
            times = []  # (when, seconds)
            end = time.perf_counter() + args.seconds
            hup_at = time.perf_counter() + args.seconds / 3
            sent = False
            while time.perf_counter() < end:
                if not sent and time.perf_counter() >= hup_at:
                    proxy.send_signal(signal.SIGHUP)
                    sent = True
                times.append((time.perf_counter(), tunnel(port, target)))
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(30)
        reloads = [json.loads(line) for line in records if '"configuration reloaded"' in line]
        before = [seconds for when, seconds in times if when < hup_at]
        during = [seconds for when, seconds in times if when >= hup_at]
        print(f"ACL: {args.roles} roles x {args.globs} globs, {os.path.getsize(acl) / 1e6:.1f} MB")
        print(f"start-up until listening: {startup:.2f} s")
        print(f"reload: {reloads[0]['changes'] if reloads else 'NOT RELOADED'}")
        print(f"tunnels: {len(times)}; slowest before the reload {max(before) * 1000:.1f} ms, "
              f"from the reload on {max(during) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
