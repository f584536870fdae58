"""The tests' private network: a namespace of their own with the test hosts on ``lo``.

At start-up the test process (as root) enters it (see fastfog.bench.netns).
Nothing it or its children send can leave the namespace, so a deny test that
goes wrong cannot reach a real address. Where namespaces are unavailable (not
root), the end-to-end tests are skipped, except under CI, where that is an error.
"""

from fastfog.bench import netns as namespace

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
    """Enter the tests' namespace; False (with ``unavailable_reason``) if not possible."""
    global unavailable_reason
    unavailable_reason = namespace.enter(ADDRESSES, ADDRESSES6)
    return unavailable_reason is None
