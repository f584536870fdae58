"""Running under a service manager: systemd's notify protocol and socket activation, and
``fastfog healthcheck``.

- ``notify(state)``: with ``Type=notify``, systemd waits for ``READY=1`` before it counts the
  service as started, and is told ``RELOADING=1`` (with ``MONOTONIC_USEC``) then ``READY=1``
  around a reload and ``STOPPING=1`` at a graceful stop. A datagram to ``NOTIFY_SOCKET`` (a
  path, or an abstract name starting with ``@``) is the whole protocol: written here rather
  than taking a dependency for it. Without ``NOTIFY_SOCKET`` it does nothing.
- ``activated_listener()``: the listening socket systemd passed (``LISTEN_FDS``, first
  descriptor 3, ``LISTEN_PID`` ours), as Einhorn's is taken.
- ``healthcheck(config)``: ``GET /healthcheck`` on the proxy's own port, over TLS when the
  listener speaks it, as a container's or an orchestrator's probe runs it.
"""

import os
import socket
import ssl
import time

FIRST_ACTIVATED_FD = 3


def notify(state):
    """Send ``state`` (e.g. ``READY=1``) to the service manager; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def reloading():
    """``RELOADING=1`` with the monotonic time systemd asks for."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def activated_listener():
    """The listening socket systemd passed this process, or None."""
    count, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
    if not count or not count.isdigit() or int(count) < 1 or pid is None or pid != str(os.getpid()):
        return None
    sock = socket.socket(fileno=FIRST_ACTIVATED_FD)
    sock.setblocking(False)
    return sock


def healthcheck(config, timeout=3.0):
    """0 when the proxy answers ``GET /healthcheck`` with 200 on its port, else 1 (and why)."""
    host = config.ip or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    try:
        sock = socket.create_connection((host, config.port), timeout)
        if config.server_tls is not None:  # our own listener: its certificate is not what is probed
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        with sock:
            sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: fastfog\r\nConnection: close\r\n\r\n")
            answer = sock.recv(64)
    except OSError as err:
        return 1, f"{host}:{config.port}: {err.strerror or err}"
    if answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
        return 0, "serving"
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    return 1, f"{host}:{config.port} answered {status_line!r}"
