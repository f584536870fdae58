"""Admission: role, port, limits and ACL, in Smokescreen's order, as verdicts without I/O."""

import base64
from types import MappingProxyType, SimpleNamespace

import pytest

from fastfog import reasons
from fastfog.acl import AUTH_REQUIRED, NOT_CONFIGURED, ROLE_NOT_DETERMINED, parse_acl
from fastfog.admission import Admission, Admitted, BadRequest, Client, Refused
from fastfog.hotpaths import parse_request_head
from fastfog.limits import RATE_LIMITED, TOO_MANY_TUNNELS, Limits
from fastfog.roles import ProxyAuth

ACL = {
    "version": "v1",
    "services": [
        {"name": "enforcer", "project": "hooks", "action": "enforce", "allowed_domains": ["*.example.com"],
         "allowed_external_proxies": ["proxy.example.net"]},
        {"name": "ported", "project": "p", "action": "enforce", "allowed_domains": ["example.org"],
         "allowed_ports": [443]},
        {"name": "interceptor", "project": "m", "action": "enforce", "allowed_domains": ["mitm.example.com"],
         "mitm_domains": [{"domain": "mitm.example.com"}]},
    ],
}
PLAIN = Client(("192.0.2.7", 5555), False, None, None, None)
CERTIFIED = Client(("192.0.2.7", 5555), True, {"subject": ()}, {"inbound_remote_x509_cn": "enforcer"}, None)


def certified(cn):
    return CERTIFIED._replace(x509_fields={"inbound_remote_x509_cn": cn})


class Log:
    def __init__(self):
        self.records = []

    def warning(self, message, fields):
        self.records.append(("warning", message, fields))

    def error(self, message, fields):
        self.records.append(("error", message, fields))


def config(acl=ACL, **overrides):
    settings = dict(acl=parse_acl(acl) if acl else None, auth=None, role_plugin=None, allow_missing_role=False,
                    mitm=None, max_request_rate=0.0, max_request_burst=None, max_concurrent_requests=0,
                    max_concurrent_connect_tunnels=0, role_limits=MappingProxyType({}))
    settings.update(overrides)
    return SimpleNamespace(**settings)


def head(text):
    return parse_request_head(bytearray(text.encode("latin-1")))


def connect(authority, *headers):
    return head(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n" + "".join(h + "\r\n" for h in headers)
                + "\r\n")


def admission(settings=None):
    settings = settings or config()
    return Admission(settings, Limits(settings), Log())


def test_an_allowed_connect_is_admitted_and_counted():
    gate = admission()
    verdict = gate.admit(CERTIFIED, connect("api.example.com:443"), True)
    assert isinstance(verdict, Admitted)
    assert (verdict.role, verdict.decision.allow, verdict.decision.project) == ("enforcer", True, "hooks")
    assert verdict.host == verdict.requested and verdict.host.name == "api.example.com"
    assert (verdict.port, verdict.via, verdict.role_problem) == (443, None, False)
    assert gate.limits.proxy.requests == 1


def test_an_acl_deny_is_refused_after_the_limits_counted_it():
    gate = admission()
    verdict = gate.admit(CERTIFIED, connect("internal.corp:443"), True)
    assert isinstance(verdict, Refused)
    assert verdict.reason is verdict.decision and not verdict.decision.allow
    assert gate.limits.proxy.requests == 1  # whoever answers releases it


def test_no_role_without_tls_is_refused_with_the_reason_for_the_record():
    verdict = admission().admit(PLAIN, connect("api.example.com:443"), True)
    assert isinstance(verdict, Refused) and verdict.reason is ROLE_NOT_DETERMINED
    assert verdict.role_problem and verdict.error == "defaultRoleFromRequest requires TLS"


def test_without_an_acl_every_request_is_allowed_even_without_a_role():
    verdict = admission(config(acl=None)).admit(PLAIN, connect("api.example.com:443"), True)
    assert isinstance(verdict, Admitted) and verdict.decision is NOT_CONFIGURED and verdict.role_problem


def test_a_bad_host_is_a_bad_request_before_anything_is_counted():
    gate = admission()
    assert gate.admit(CERTIFIED, connect("1.2.3.999:443"), True) == BadRequest(
        "invalid IPv4 address: number out of range")
    assert gate.limits.proxy.requests == 0


@pytest.mark.parametrize("authority, reason", [("api.example.com", reasons.MISSING_PORT),
                                               ("api.example.com:70000", reasons.INVALID_PORT)])
def test_a_port_smokescreen_refuses_comes_before_the_limits(authority, reason):
    gate = admission()
    verdict = gate.admit(CERTIFIED, connect(authority), True)
    assert isinstance(verdict, Refused) and verdict.reason.reason == reason and verdict.decision is None
    assert gate.limits.proxy.requests == 0


def test_a_limit_refuses_before_the_acl():
    settings = config(max_request_rate=1.0, max_request_burst=1, max_concurrent_connect_tunnels=0)
    gate = admission(settings)
    assert isinstance(gate.admit(CERTIFIED, connect("api.example.com:443"), True), Admitted)
    verdict = gate.admit(CERTIFIED, connect("internal.corp:443"), True)
    assert isinstance(verdict, Refused) and verdict.reason is RATE_LIMITED and verdict.decision is None


def test_the_tunnel_limit_applies_to_connect_only():
    gate = admission(config(max_concurrent_connect_tunnels=1))
    gate.limits.tunnel_opened("enforcer")
    assert gate.admit(CERTIFIED, connect("api.example.com:443"), True).reason is TOO_MANY_TUNNELS
    request = head("GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert isinstance(gate.admit(CERTIFIED, request, False), Admitted)


def test_proxy_authorization_names_the_role():
    auth = ProxyAuth({"password_env": "PW", "role": "enforcer"}, environ={"PW": "s3cret"})
    gate = admission(config(auth=auth))
    good = "Proxy-Authorization: Basic " + base64.b64encode(b"anyone:s3cret").decode()
    bad = "Proxy-Authorization: Basic " + base64.b64encode(b"anyone:wrong").decode()
    assert gate.admit(PLAIN, connect("api.example.com:443", good), True).role == "enforcer"
    assert gate.admit(PLAIN, connect("api.example.com:443", bad), True).reason is AUTH_REQUIRED
    assert gate.admit(PLAIN, connect("api.example.com:443"), True).reason is AUTH_REQUIRED
    assert gate.limits.proxy.requests == 1  # only the admitted one counts


def test_a_rule_port_list_denies_other_ports():
    client = certified("ported")
    verdict = admission().admit(client, connect("example.org:8443"), True)
    assert isinstance(verdict, Refused) and verdict.reason.reason == reasons.PORT_NOT_ALLOWED


def test_an_upstream_proxy_is_what_gets_dialed():
    verdict = admission().admit(CERTIFIED, connect(
        "api.example.com:443", "X-Upstream-Https-Proxy: https://proxy.example.net:3128"), True)
    assert isinstance(verdict, Admitted)
    assert (verdict.host.name, verdict.port, verdict.requested.name) == ("proxy.example.net", 3128, "api.example.com")
    assert verdict.via.tls


def test_interception_without_a_ca_is_refused():
    client = certified("interceptor")
    verdict = admission().admit(client, connect("mitm.example.com:443"), True)
    assert isinstance(verdict, Refused) and verdict.reason.code == reasons.CODE_MITM_NOT_ENABLED


def test_inside_an_intercepted_tunnel_the_connect_role_decides():
    client = PLAIN._replace(mitm=SimpleNamespace(role="enforcer"))
    request = head("GET https://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert admission().admit(client, request, False).role == "enforcer"


@pytest.mark.parametrize("plugin_result, role, logged", [("enforcer", "enforcer", None), (None, "", None),
                                                         (42, "", "error"), (RuntimeError("no"), "", "warning")])
def test_a_role_plugin_decides_alone(plugin_result, role, logged):
    def plugin(view):
        assert view.client_address == PLAIN.address and view.method == "CONNECT"
        if isinstance(plugin_result, Exception):
            raise plugin_result
        return plugin_result

    gate = admission(config(role_plugin=plugin))
    verdict = gate.admit(PLAIN, connect("api.example.com:443"), True)
    assert verdict.role == role
    assert [record[0] for record in gate.log.records] == ([logged] if logged else [])
    if role == "":
        assert verdict.reason is ROLE_NOT_DETERMINED
