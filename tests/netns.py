"""The private network the tests run in: a network namespace of their own.

At start-up the test process (as root) unshares its network namespace, brings
``lo`` up and puts the test hosts on documentation addresses there. Nothing it
or its children send can leave the namespace, so a deny test that goes wrong
cannot reach a real address. Where namespaces are unavailable (not root), the
end-to-end tests are skipped, except under CI, where that is an error.
"""

import ctypes
import os
import subprocess

CLONE_NEWNET = 0x40000000

PROXY = "203.0.113.1"
PROXY6 = "2001:db8::1"
ORIGIN = "203.0.113.10"
ORIGIN6 = "2001:db8::10"
DNS = "203.0.113.53"
OTHER = "198.51.100.1"
BLACKHOLE = "198.51.100.9"
UPSTREAM_PROXY = "203.0.113.11"
ADDRESSES = [PROXY, ORIGIN, DNS, OTHER, BLACKHOLE, UPSTREAM_PROXY, "203.0.113.12"]
ADDRESSES6 = [PROXY6, ORIGIN6]

unavailable_reason = None


def enter():
    """Move this process into a new network namespace with the test hosts; False if not possible."""
    global unavailable_reason
    if os.environ.get("FASTFOG_TEST_NETNS") == str(os.getpid()):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        unavailable_reason = f"cannot create a network namespace: {os.strerror(ctypes.get_errno())}"
        return False
    commands = [["ip", "link", "set", "lo", "up"]]
    commands += [["ip", "addr", "add", f"{address}/32", "dev", "lo"] for address in ADDRESSES]
    commands += [["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"] for address in ADDRESSES6]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    os.environ["FASTFOG_TEST_NETNS"] = str(os.getpid())
    return True
