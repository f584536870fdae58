"""A private network namespace for ``fastfog bench`` and fastfog's tests.

The calling process (as root) unshares its network namespace, brings ``lo``
up and puts the given hosts, documentation addresses, on it. Nothing it or
its children send afterwards can leave the namespace, so no benchmark or test
ever reaches a real address.
"""

import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000
MARKER = "FASTFOG_NETNS"

# Connection-heavy runs close tens of thousands of connections a second: give them the
# whole ephemeral port range and let connect() reuse TIME_WAIT tuples on the loopback.
# The fixed ports that listeners of the benchmark and the tests bind are kept out of that range,
# so that no client's ephemeral port ever takes one first.
SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.ipv4.ip_local_reserved_ports": "4700-4799,5353,7000-7010,8080-8443,8125,9810",
    "net.ipv4.tcp_tw_reuse": "1",
}


def enter(addresses, addresses6=()):
    """Move this process into a new network namespace holding ``addresses``; None on success, else
    why it was not possible. Idempotent within one process."""
    if os.environ.get(MARKER) == str(os.getpid()):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return f"cannot create a network namespace: {os.strerror(ctypes.get_errno())}"
    commands = [["ip", "link", "set", "lo", "up"]]
    commands += [["ip", "addr", "add", f"{address}/32", "dev", "lo"] for address in addresses]
    commands += [["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"] for address in addresses6]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    for name, value in SYSCTLS.items():
        try:
            with open("/proc/sys/" + name.replace(".", "/"), "w", encoding="ascii") as knob:
                knob.write(value)
        except OSError:
            pass  # a tuning, not a requirement
    os.environ[MARKER] = str(os.getpid())
    return None
