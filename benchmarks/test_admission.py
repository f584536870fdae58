"""What admission costs per request: role, port, limits and ACL, and then the address pick.

A webhook sender's CONNECT on the mTLS listener, decided by a rule with a few
globs among a hundred services; the limits count it and are released after.
Then the pick of its (cached) addresses, remembered by the policy, and the
same pick made afresh (a new policy each time, as after a reload).
"""

from types import MappingProxyType, SimpleNamespace

from fastfog.acl import parse_acl
from fastfog.admission import Admission, Admitted, Client
from fastfog.classify import AddressPolicy
from fastfog.hotpaths import parse_request_head
from fastfog.limits import Limits

SERVICES = [{"name": f"service-{index}", "project": f"p{index}", "action": "enforce",
             "allowed_domains": [f"*.partner{index}.example", f"hooks.partner{index}.example"]}
            for index in range(100)]
ACL = {"version": "v1", "services": SERVICES, "global_deny_list": ["*.internal.example"]}
HEAD = parse_request_head(bytearray(b"CONNECT api.partner42.example:443 HTTP/1.1\r\n"
                                    b"Host: api.partner42.example:443\r\n\r\n"))
CLIENT = Client(("192.0.2.7", 40000), True, {"subject": ()}, {"inbound_remote_x509_cn": "service-42"}, None)
ADDRESSES = ("203.0.113.9", "2001:db8::9")


def test_admit_an_allowed_connect(benchmark):
    benchmark.group = "admission"
    config = SimpleNamespace(acl=parse_acl(ACL), auth=None, role_plugin=None, allow_missing_role=False, mitm=None,
                             max_request_rate=1e9, max_request_burst=None, max_concurrent_requests=10_000,
                             max_concurrent_connect_tunnels=10_000, role_limits=MappingProxyType({}))
    limits = Limits(config)
    gate = Admission(config, limits, None)

    def admit_and_release():
        verdict = gate.admit(CLIENT, HEAD, True)
        limits.release(verdict.role)
        return verdict

    assert type(benchmark(admit_and_release)) is Admitted


def test_pick_remembered(benchmark):
    benchmark.group = "admission"
    policy = AddressPolicy()
    assert benchmark(policy.pick, ADDRESSES, 443).allowed


def test_pick_afresh(benchmark):
    """What ``pick`` costs the first time a policy sees a destination."""
    benchmark.group = "admission"
    policy = AddressPolicy()
    assert benchmark(policy._pick, ADDRESSES, 443).allowed
