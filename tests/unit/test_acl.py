"""ACL v1: loading, validation messages and the decision order (SPEC section 3.2)."""

import re
import textwrap

import pytest
import yaml

from fastfog import acl as acl_module
from fastfog.acl import AclError, MitmDomain, load_acl, mitm_refused, parse_acl, parse_upstream_proxy

ACL = """
version: v1
services:
  - name: enforcer
    project: payments
    action: enforce
    allowed_domains: [hooks.slack.com, "*.stripe.com", "api.github.com.", "203.0.113.7"]
    allowed_external_proxies: [proxy.partner.example, "*.proxies.example"]
  - name: reporter
    project: security
    action: report
    allowed_domains: [example.org]
  - name: opener
    project: growth
    action: open
    allowed_domains: []
  - name: porter
    project: ports
    action: enforce
    allowed_domains: [example.com]
    allowed_ports: [443, 8443]
default:
  project: other
  action: enforce
  allowed_domains: [default.example.com]
global_deny_list: ["*.internal.example", "metadata.google.internal", "evil.example.org"]
global_allow_list: [status.example.net, "*.stripe.com"]
"""


@pytest.fixture(scope="module")
def acl():
    return parse_acl(yaml.safe_load(ACL), "acl.yaml")


# (role, host, expected allow, reason, result, project, default rule, enforce_would_deny, code)
CASES = [
    # step 3: the rule's allowed domains, exact and glob, normalised host
    ("enforcer", "hooks.slack.com", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    ("enforcer", "HOOKS.Slack.com.", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    ("enforcer", "api.stripe.com", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    ("enforcer", "a.b.c.stripe.com", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    ("enforcer", "api.github.com", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    ("enforcer", "203.0.113.7", True, "host matched allowed domain in rule", "allow", "payments", False, False, None),
    # the apex is not matched by its wildcard: falls through to the global lists, then the policy
    ("enforcer", "stripe.com", False, "rule has enforce policy", "deny", "payments", False, True, "acl_enforce"),
    ("enforcer", "slack.com", False, "rule has enforce policy", "deny", "payments", False, True, "acl_enforce"),
    ("enforcer", "xhooks.slack.com", False, "rule has enforce policy", "deny", "payments", False, True, "acl_enforce"),
    # step 4 and 5: global deny beats global allow; the rule's own domains beat both
    ("enforcer", "db.internal.example", False, "host matched rule in global deny list", "deny", "payments", False, True,
     "acl_global_deny"),
    ("enforcer", "status.example.net", True, "host matched rule in global allow list", "allow", "payments", False, False,
     None),
    ("reporter", "evil.example.org", False, "host matched rule in global deny list", "deny", "security", False, True,
     "acl_global_deny"),
    ("reporter", "example.org", True, "host matched allowed domain in rule", "allow", "security", False, False, None),
    # step 6: policies
    ("reporter", "unlisted.example", True, "rule has allow and report policy", "report", "security", False, True, None),
    ("opener", "unlisted.example", True, "rule has open enforcement policy", "allow", "growth", False, False, None),
    ("opener", "metadata.google.internal", False, "host matched rule in global deny list", "deny", "growth", False, True,
     "acl_global_deny"),
    # the default rule: unknown roles, the empty role
    ("stranger", "default.example.com", True, "host matched allowed domain in rule", "allow", "other", True, False, None),
    ("stranger", "unlisted.example", False, "default rule policy used", "deny", "other", True, True, "acl_enforce"),
    ("", "unlisted.example", False, "default rule policy used", "deny", "other", True, True, "acl_enforce"),
    ("stranger", "x.stripe.com", True, "host matched rule in global allow list", "allow", "other", True, False, None),
    # IPv6 literal destinations, as Smokescreen
    ("opener", "2001:db8::1", False, "Destination host cannot be determined", None, "", False, False,
     "acl_destination_unknown"),
]


@pytest.mark.parametrize("role, host, allow, reason, result, project, default_rule, would_deny, code", CASES)
def test_decision_order(acl, role, host, allow, reason, result, project, default_rule, would_deny, code):
    decision = acl.decide(role, host, 443)
    assert (decision.allow, decision.reason, decision.result, decision.project, decision.default_rule,
            decision.enforce_would_deny, decision.code) == (
        allow, reason, result, project, default_rule, would_deny, code)
    assert decision.rule == (None if default_rule or result is None else role)


def test_no_rule_without_default():
    bare = parse_acl({"version": "v1", "services": [{"name": "a", "action": "open"}]})
    decision = bare.decide("b", "example.com", 443)
    assert (decision.allow, decision.reason, decision.result, decision.code, decision.enforce_would_deny) == (
        False, "no rule matched", "deny", "acl_no_rule", True)
    assert bare.warnings == ["no default rule set. any services without a rule will be denied."]


@pytest.mark.parametrize("header, allow, reason", [
    ("https://proxy.partner.example:8443", True, "host matched allowed domain in rule"),
    ("https://user:pw@PROXY.partner.example.:443/", True, "host matched allowed domain in rule"),
    ("https://eu.proxies.example:443", True, "host matched allowed domain in rule"),
    ("https://proxies.example:443", False, "connect proxy host not allowed in rule"),
    ("https://evil.example:443", False, "connect proxy host not allowed in rule"),
    ("http://proxy.partner.example:8080", True, "host matched allowed domain in rule"),  # as Smokescreen
    ("socks5://proxy.partner.example:1080", False, "connect proxy host not allowed in rule"),
    ("https://proxy.partner.example", False, "connect proxy host not allowed in rule"),
    ("proxy.partner.example:443", False, "connect proxy host not allowed in rule"),
    ("https://proxy.partner.example:99999", False, "connect proxy host not allowed in rule"),
    ("https://[::1:443", False, "connect proxy host not allowed in rule"),
])
def test_upstream_proxy_header(acl, header, allow, reason):
    """Step 2 comes before the host checks: even an allowed host is denied through an unlisted proxy."""
    decision = acl.decide("enforcer", "hooks.slack.com", 443, header)
    assert (decision.allow, decision.reason) == (allow, reason)
    if not allow:
        assert decision.code == "acl_external_proxy" and decision.enforce_would_deny


def test_upstream_proxy_parse():
    proxy = parse_upstream_proxy("https://u%40x:p%3Ass@Proxy.Example:3128")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == ("proxy.example", 3128, "u%40x", "p%3Ass")
    assert parse_upstream_proxy("https://[2001:db8::1]:443").host == "2001:db8::1"
    assert parse_upstream_proxy("https://proxy.example:443").tls
    assert not parse_upstream_proxy("HTTP://proxy.example:8080").tls


def test_allowed_ports(acl):
    assert acl.decide("porter", "example.com", 443).allow
    assert acl.decide("porter", "example.com", 8443).allow
    denied = acl.decide("porter", "example.com", 80)
    assert (denied.allow, denied.reason, denied.code, denied.result, denied.project) == (
        False, "port not allowed in rule", "acl_port", "deny", "ports")
    assert acl.decide("opener", "example.com", 22).allow  # no key: every port


def test_allowed_ports_on_default_rule():
    doc = {"version": "v1", "services": [], "default": {"action": "open", "allowed_ports": [443]}}
    ported = parse_acl(doc)
    assert ported.decide("anyone", "example.com", 443).allow
    assert ported.decide("anyone", "example.com", 80).reason == "port not allowed in rule"


def test_decisions_are_prebuilt(acl):
    assert acl.decide("enforcer", "hooks.slack.com", 443) is acl.decide("enforcer", "api.stripe.com", 443)


def document(text):
    return yaml.safe_load(textwrap.dedent(text))


@pytest.mark.parametrize("text, message", [
    ("version: v2\nservices: []", 'expected version "v1" got "v2"'),
    ("services: []", 'expected version "v1" got ""'),
    ("version: v1", "Top level list 'services' is missing"),
    ("version: v1\nservices:\n  - {name: a, action: open}\n  - {name: a, action: report}",
     "rule already exists for service a"),
    ("version: v1\nservices:\n  - {name: a, action: block}", "unknown action block"),
    ("version: v1\nservices:\n  - {name: a}", "unknown action "),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['']}", "glob cannot be empty"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['*']}",
     "a: *: domain glob must not match everything"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['*.']}",
     "a: *.: domain glob must not match everything"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['*example.com']}",
     "a: *example.com: domain glob must represent a full prefix (sub)domain"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['a.*.example.com']}",
     "a: a.*.example.com: domain globs are only supported as prefix"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['*.*.example.com']}",
     "a: *.*.example.com: domain globs are only supported as prefix"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['Example.com']}",
     'a: Example.com: incorrect ACL entry; use "example.com"'),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['*.BÜCHER.example']}",
     'a: *.BÜCHER.example: incorrect ACL entry; use "*.xn--bcher-kva.example"'),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['münchen.de']}",
     'a: münchen.de: incorrect ACL entry; use "xn--mnchen-3ya.de"'),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: ['exa mple.com']}",
     "a: exa mple.com: incorrect ACL entry: invalid domain 'exa mple.com': disallowed character ' '"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_external_proxies: ['*']}",
     "a: *: domain glob must not match everything"),
    ("version: v1\nservices: []\ndefault: {action: open, allowed_domains: ['*']}",
     "default_rule: *: domain glob must not match everything"),
    ("version: v1\nservices: []\nglobal_deny_list: ['*']", "global_deny_list: *: domain glob must not match everything"),
    ("version: v1\nservices: []\nglobal_allow_list: ['Bad.com']",
     'global_allow_list: Bad.com: incorrect ACL entry; use "bad.com"'),
    ("version: v1\nservices:\n  - name: a\n    action: open\n    allowed_domains: [a.com]\n"
     "    mitm_domains: [{domain: b.com}]", "domain b.com was added to mitm_domains but is missing in allowed_domains"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_ports: []}",
     "services[0].allowed_ports: expected a non-empty list of ports"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_ports: [0]}",
     "services[0].allowed_ports: invalid port 0: must be an integer from 1 to 65535"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_ports: [443, 443]}",
     "services[0].allowed_ports: port 443 is listed twice"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_ports: ['443']}",
     "services[0].allowed_ports: invalid port '443': must be an integer from 1 to 65535"),
    ("version: v1\nservices: {a: 1}", "services: expected a list"),
    ("version: v1\nservices:\n  - {name: a, action: open, allowed_domains: a.com}",
     "services[0].allowed_domains: expected a list of strings"),
    ("- just a list", "expected a mapping at the top level"),
])
def test_invalid_acl_files(text, message):
    with pytest.raises(AclError) as caught:
        parse_acl(document(text), "acl.yaml")
    assert str(caught.value) == f"acl.yaml: {message}"


def test_disabled_actions():
    doc = document("version: v1\nservices:\n  - {name: a, action: report}\ndefault: {action: open}")
    with pytest.raises(AclError, match=r"^acl.yaml: rule for svc:a utilizes a disabled policy:Report$"):
        parse_acl(doc, "acl.yaml", disabled_actions=["report"])
    with pytest.raises(AclError, match=r"^acl.yaml: rule for svc:default_rule utilizes a disabled policy:Open$"):
        parse_acl(doc, "acl.yaml", disabled_actions=["open"])
    with pytest.raises(AclError, match=r"^acl.yaml: unknown action allow$"):
        parse_acl(doc, "acl.yaml", disabled_actions=["allow"])
    assert parse_acl(doc, "acl.yaml", disabled_actions=["enforce"]).decide("a", "x.com", 1).result == "report"


def test_trailing_dots_accepted():
    doc = document("""
        version: v1
        services:
          - name: a
            action: enforce
            allowed_domains: [example.com., "*.example.net."]
    """)
    loaded = parse_acl(doc)
    assert loaded.decide("a", "example.com", 443).allow
    assert loaded.decide("a", "x.example.net", 443).allow
    assert not loaded.decide("a", "example.net", 443).allow


@pytest.mark.parametrize("text, message", [
    ("version: v1\nextra_top_level: yes\nservices: []\n",
     "line 2, column 1: top level: unknown key 'extra_top_level'"),
    ("version: v1\nservices:\n  - name: a\n    action: enforce\n    alowed_domains: [example.com]\n",
     "line 5, column 5: services[0]: unknown key 'alowed_domains' (did you mean 'allowed_domains'?)"),
    ("version: v1\nservices: []\ndefault: {action: open, projet: p}\n",
     "line 3, column 25: default: unknown key 'projet' (did you mean 'project'?)"),
    ("version: v1\nservices:\n  - name: a\n    action: open\n    allowed_domains: [a.com]\n"
     "    mitm_domains: [{domain: a.com, add_header: {X: y}}]\n",
     "line 6, column 36: services[0].mitm_domains[0]: unknown key 'add_header' (did you mean 'add_headers'?)"),
    # A duplicate at any depth: the last one would otherwise win, here switching enforcement off.
    ("version: v1\nservices:\n  - name: a\n    action: enforce\n    allowed_domains: [a.com]\n"
     "    action: open\n",
     "line 6, column 5: action: duplicate key (first given on line 4)"),
    ("version: v1\nservices: []\nversion: v1\n", "line 3, column 1: version: duplicate key (first given on line 1)"),
    ("version: v1\nservices:\n  - name: a\n    action: open\n"
     "    mitm_domains: [{domain: a.com, domain: b.com}]\n",
     "line 5, column 36: domain: duplicate key (first given on line 5)"),
])
def test_unknown_and_duplicate_keys_are_errors_with_their_line(tmp_path, text, message):
    """Smokescreen ignores unknown keys and lets a duplicate win; a typo in an egress ACL must
    never pass, so fastfog refuses both (a deliberate difference, see the README)."""
    path = tmp_path / "acl.yaml"
    path.write_text(text)
    with pytest.raises(AclError) as caught:
        load_acl(str(path))
    assert str(caught.value) == f"{path}: {message}"


def test_mitm_domains_are_parsed_onto_the_decision_of_their_domain():
    """Smokescreen's example: a header added, detailed logs with one full header."""
    doc = document("""
        version: v1
        services:
          - name: a
            action: enforce
            allowed_domains: [example-mitm.com, "*.partner.example", plain.example]
            mitm_domains:
              - domain: example-mitm.com
                add_headers: {Accept-Language: el}
                detailed_http_logs: true
                detailed_http_logs_full_headers: [User-Agent]
              - domain: "*.partner.example"
        default: {action: enforce}
    """)
    loaded = parse_acl(doc)
    assert loaded.warnings == []
    decision = loaded.decide("a", "example-mitm.com", 443)
    assert decision.allow and decision.reason == "host matched allowed domain in rule"
    assert decision.mitm == MitmDomain("example-mitm.com", (("Accept-Language", "el"),), True,
                                       frozenset({"user-agent"}))
    assert loaded.decide("a", "api.partner.example", 443).mitm == MitmDomain("*.partner.example")
    assert loaded.decide("a", "plain.example", 443).mitm is None
    refused = mitm_refused(decision)
    assert (refused.allow, refused.reason, refused.code, refused.result) == (
        False, "ACLDecision specified MITM but Smokescreen doesn't have MITM enabled", "mitm_not_enabled", "deny")


@pytest.mark.parametrize("entry, message", [
    ("{domain: a.com, add_headers: [x]}", "services[0].mitm_domains[0].add_headers: expected a mapping"),
    ("{domain: a.com, detailed_http_logs: yes please}", "services[0].mitm_domains[0].detailed_http_logs: expected"),
    ("{domain: a.com, detailed_http_logs_full_headers: x}",
     "services[0].mitm_domains[0].detailed_http_logs_full_headers: expected a list of strings"),
])
def test_bad_mitm_entries(entry, message):
    doc = document(f"""
        version: v1
        services:
          - name: a
            action: open
            allowed_domains: [a.com]
            mitm_domains: [{entry}]
    """)
    with pytest.raises(AclError, match=re.escape(message)):
        parse_acl(doc)


def test_load_from_files(tmp_path):
    path = tmp_path / "acl.yaml"
    path.write_text(ACL)
    assert load_acl(str(path)).decide("enforcer", "hooks.slack.com", 443).allow
    with pytest.raises(AclError, match=r"^.*missing.yaml: No such file or directory$"):
        load_acl(str(tmp_path / "missing.yaml"))
    path.write_text("version: v1\nservices: [unclosed")
    with pytest.raises(AclError, match=r"acl.yaml: invalid YAML: "):
        load_acl(str(path))


def test_large_acl_decides_by_lookup_not_scan():
    services = [{"name": f"svc{i}", "action": "enforce", "allowed_domains": [f"host{i}.example.com", f"*.t{i}.example"]}
                for i in range(5000)]
    loaded = parse_acl({"version": "v1", "services": services})
    assert loaded.decide("svc4999", "deep.t4999.example", 443).allow
    assert not loaded.decide("svc4999", "deep.t4998.example", 443).allow


def test_module_constants():
    assert acl_module.NOT_CONFIGURED.allow and acl_module.NOT_CONFIGURED.reason == "Egress ACL is not configured"
    assert acl_module.ROLE_NOT_DETERMINED.reason == "Client role cannot be determined"
    assert not acl_module.ROLE_NOT_DETERMINED.allow
