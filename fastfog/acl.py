"""Egress ACLs in Smokescreen's v1 YAML format: loading, validation, decisions.

A file names one rule per service (role), an optional default rule and global
allow and deny lists of host globs. Loading validates everything Smokescreen
validates, with its messages, and compiles every list into a host-glob set
once; ``Acl.decide`` is then a few dictionary probes and returns one of the
rule's prebuilt decisions, allocating nothing.

fastfog extends a rule with ``allowed_ports`` (a CONNECT or request to another
port is denied, ``port not allowed in rule``). Smokescreen ignores keys it does
not know, so a file using it still loads there.

Unlike Smokescreen, fastfog refuses a key it does not know (at the top level,
in a rule, in a ``mitm_domains`` entry) and a key given twice: a misspelled
``alowed_domains:`` would otherwise leave a rule empty, and a second
``action:`` would silently replace the first. The error names the file, the
line and the key, with the nearest known key when there is one.
"""

import difflib

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastfog import reasons
from fastfog.hotpaths import HostGlobSet
from fastfog.yamlfile import line_of, read_yaml

log = logging.getLogger(__name__)

ACTIONS = ("open", "report", "enforce")

# The keys the loader knows, with their JSON Schemas: the one table behind the unknown-key errors
# and ``fastfog schema acl``.
_GLOBS = {"type": "array", "items": {"type": "string"}}
MITM_SCHEMA = {
    "domain": {"type": "string"},
    "add_headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "detailed_http_logs": {"type": "boolean"},
    "detailed_http_logs_full_headers": {"type": "array", "items": {"type": "string"}},
}
RULE_SCHEMA = {
    "name": {"type": "string"},
    "project": {"type": "string"},
    "action": {"enum": list(ACTIONS)},
    "allowed_domains": _GLOBS,
    "allowed_external_proxies": _GLOBS,
    "mitm_domains": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                "required": ["domain"], "properties": MITM_SCHEMA}},
    "allowed_ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                      "description": "fastfog's: the only ports a rule allows (no key: every port)"},
}
_RULE = {"type": "object", "additionalProperties": False, "required": ["action"], "properties": RULE_SCHEMA}
TOP_LEVEL_SCHEMA = {
    "version": {"const": "v1"},
    "services": {"type": "array", "items": _RULE},
    "default": _RULE,
    "global_allow_list": _GLOBS,
    "global_deny_list": _GLOBS,
}
TOP_LEVEL_KEYS, RULE_KEYS, MITM_KEYS = tuple(TOP_LEVEL_SCHEMA), tuple(RULE_SCHEMA), tuple(MITM_SCHEMA)


def json_schema():
    """The ACL file's JSON Schema (Smokescreen's v1 format, as fastfog reads it), for editors."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "fastfog egress ACL (v1)",
            "type": "object", "additionalProperties": False, "required": ["version", "services"],
            "properties": TOP_LEVEL_SCHEMA}
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


class AclError(ValueError):
    """An ACL file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an ACL check, with the fields logs and metrics report."""

    allow: bool
    reason: str
    result: str | None = None  # "allow", "report" or "deny": the acl.<result> metric; None: no ACL
    project: str = ""
    default_rule: bool = False
    enforce_would_deny: bool = False
    rule: str | None = None  # the service whose rule decided, None for the default rule
    code: str | None = None  # X-Fastfog-Reason when denied
    mitm: object = None  # the MitmDomain a CONNECT allowed by this decision is intercepted with


@dataclass(frozen=True, slots=True)
class MitmDomain:
    """A ``mitm_domains`` entry: a CONNECT to this allowed domain is intercepted (TLS terminated by
    the proxy), ``add_headers`` set on each request inside, and with ``detailed_http_logs`` each
    request logged with every header value redacted but those of ``full_headers`` (lowercase)."""

    domain: str
    add_headers: tuple = ()  # (name, value) pairs
    detailed_http_logs: bool = False
    full_headers: frozenset = frozenset()


def mitm_refused(decision):
    """The deny for a CONNECT whose rule asks for interception when no MITM CA is configured."""
    return Decision(False, reasons.MITM_NOT_ENABLED, "deny", decision.project, decision.default_rule, True,
                    decision.rule, reasons.CODE_MITM_NOT_ENABLED)


NOT_CONFIGURED = Decision(True, reasons.ACL_NOT_CONFIGURED)
ROLE_NOT_DETERMINED = Decision(False, reasons.ROLE_NOT_DETERMINED, code=reasons.CODE_ROLE_NOT_DETERMINED)
DESTINATION_NOT_DETERMINED = Decision(False, reasons.DESTINATION_NOT_DETERMINED,
                                      code=reasons.CODE_DESTINATION_NOT_DETERMINED)
NO_RULE = Decision(False, reasons.NO_RULE_MATCHED, "deny", enforce_would_deny=True, code=reasons.CODE_NO_RULE)
AUTH_REQUIRED = Decision(False, reasons.AUTH_REQUIRED, code=reasons.CODE_AUTH_REQUIRED)
MISSING_PORT = Decision(False, reasons.MISSING_PORT, code=reasons.CODE_BAD_PORT)
INVALID_PORT = Decision(False, reasons.INVALID_PORT, code=reasons.CODE_BAD_PORT)


def port_problem(port):
    """The deny for a destination port Smokescreen refuses before any rule (none, or past
    65535), or None. Port 0 is not one: its dial fails (502), as Smokescreen's does."""
    if port is None:
        return MISSING_PORT
    if port > reasons.MAX_PORT:
        return INVALID_PORT
    return None


class Rule:
    """One service's rule (or the default rule), with its decisions built in advance."""

    __slots__ = ("name", "project", "action", "domains", "external_proxies", "ports", "mitm_domains",
                 "allowed", "global_allow", "global_deny", "policy", "proxy_denied", "port_denied", "fingerprint",
                 "mitm_allowed")

    def __init__(self, name, project, action, domains, external_proxies, ports, mitm_domains):
        """``mitm_domains``: MitmDomain entries, each for a glob of ``domains``."""
        # What the rule says, comparable: a reload reports the rules whose fingerprint changed.
        self.fingerprint = (project, action, tuple(sorted(domains)), tuple(sorted(external_proxies)),
                            None if ports is None else tuple(sorted(ports)),
                            tuple(sorted(mitm_domains, key=lambda entry: entry.domain)))
        self.name = name  # None for the default rule
        self.project = project
        self.action = action
        self.domains = HostGlobSet(domains)
        self.external_proxies = HostGlobSet(external_proxies)
        self.ports = ports
        self.mitm_domains = mitm_domains
        is_default = name is None

        def decision(allow, reason, result, code=None):
            return Decision(allow, reason, result, project, is_default, result != "allow", name,
                            None if allow else code)

        self.allowed = decision(True, reasons.ALLOWED_DOMAIN, "allow")
        self.mitm_allowed = {entry.domain: Decision(True, reasons.ALLOWED_DOMAIN, "allow", project, is_default,
                                                    False, name, None, entry) for entry in mitm_domains}
        self.global_deny = decision(False, reasons.GLOBAL_DENY, "deny", reasons.CODE_GLOBAL_DENY)
        self.global_allow = decision(True, reasons.GLOBAL_ALLOW, "allow")
        self.proxy_denied = decision(False, reasons.EXTERNAL_PROXY_NOT_ALLOWED, "deny",
                                     reasons.CODE_EXTERNAL_PROXY)
        self.port_denied = decision(False, reasons.PORT_NOT_ALLOWED, "deny", reasons.CODE_PORT)
        allow, reason, result = {
            "open": (True, reasons.OPEN_POLICY, "allow"),
            "report": (True, reasons.REPORT_POLICY, "report"),
            "enforce": (False, reasons.ENFORCE_POLICY, "deny"),
        }[action]
        self.policy = decision(allow, reasons.DEFAULT_RULE_POLICY if is_default else reason, result,
                               reasons.CODE_ENFORCE)

    def summary(self):
        """What check-config and reload logs show of the rule."""
        found = {"project": self.project, "action": self.action}
        for key, value in (("allowed_domains", self.domains), ("allowed_external_proxies", self.external_proxies)):
            found[key] = len(value)
        if self.ports is not None:
            found["allowed_ports"] = sorted(self.ports)
        return found


class Acl:
    """A loaded, validated ACL."""

    __slots__ = ("path", "rules", "default", "global_allow", "global_deny", "warnings", "lists")

    def __init__(self, path, rules, default, global_allow, global_deny, warnings):
        self.lists = (tuple(sorted(global_allow)), tuple(sorted(global_deny)))
        self.path = path
        self.rules = rules
        self.default = default
        self.global_allow = HostGlobSet(global_allow)
        self.global_deny = HostGlobSet(global_deny)
        self.warnings = warnings

    def decide(self, role, host, port=None, upstream_proxy=None):
        """Decide for ``role`` reaching ``host`` (canonical, see classify.canonical_host) at ``port``.

        ``upstream_proxy`` is the X-Upstream-Https-Proxy header value, if the request has one.
        Smokescreen's order: rule (or default, or deny), upstream proxy, the rule's domains,
        the global deny list, the global allow list, the rule's policy. fastfog's port policy
        comes right after the rule is chosen.
        """
        if ":" in host:  # IPv6 literals, as Smokescreen (backwards compatibility)
            return DESTINATION_NOT_DETERMINED
        rule = self.rules.get(role, self.default)
        if rule is None:
            return NO_RULE
        if rule.ports is not None and port not in rule.ports:
            return rule.port_denied
        if upstream_proxy:
            proxy = parse_upstream_proxy(upstream_proxy)
            if proxy is None or rule.external_proxies.match(proxy.host) is None:
                return rule.proxy_denied
        host = host.lower().rstrip(".")
        matched = rule.domains.match(host)
        if matched is not None:
            return rule.mitm_allowed.get(matched, rule.allowed) if rule.mitm_allowed else rule.allowed
        if self.global_deny.match(host) is not None:
            return rule.global_deny
        if self.global_allow.match(host) is not None:
            return rule.global_allow
        return rule.policy

    def summary(self):
        found = {"path": self.path, "services": {name: rule.summary() for name, rule in self.rules.items()}}
        found["default"] = None if self.default is None else self.default.summary()
        found["global_allow_list"] = len(self.global_allow)
        found["global_deny_list"] = len(self.global_deny)
        return found


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    """A parsed X-Upstream-Https-Proxy value."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool  # https:// (the usual case); http:// speaks CONNECT to it in the clear


def parse_upstream_proxy(value):
    """``https://[user:pass@]host:port`` (or ``http://``, as Smokescreen also accepts) →
    UpstreamProxy, or None when it cannot be used."""
    try:
        url = urlsplit(value.strip())
        port = url.port
    except ValueError:
        return None
    scheme = url.scheme.lower()
    if scheme not in ("https", "http") or not url.hostname or port is None or url.path not in ("", "/"):
        return None
    return UpstreamProxy(url.hostname.lower().rstrip("."), port, url.username, url.password, scheme == "https")


# --- loading -----------------------------------------------------------------------------

def _string(value, where):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AclError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _strings(value, where):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AclError(f"{where}: expected a list of strings")
    return value


def validate_glob(owner, glob):
    """Smokescreen's domain-glob checks; returns the entry as matched (trailing dots dropped)."""
    if glob == "":
        raise AclError("glob cannot be empty")
    if glob in ("*", "*."):
        raise AclError(f"{owner}: {glob}: domain glob must not match everything")
    wildcard = glob.startswith("*.")
    if glob.startswith("*") and not wildcard:
        raise AclError(f"{owner}: {glob}: domain glob must represent a full prefix (sub)domain")
    domain = glob[2:] if wildcard else glob
    if "*" in domain:
        raise AclError(f"{owner}: {glob}: domain globs are only supported as prefix")
    normalized = domain.lower()
    if not domain.isascii():
        try:
            normalized = domain.encode("idna").decode("ascii").lower()
        except UnicodeError as err:
            raise AclError(f"{owner}: {glob}: incorrect ACL entry: invalid domain '{domain}': {err}") from None
    if normalized != domain:
        suggestion = ("*." if wildcard else "") + normalized
        raise AclError(f'{owner}: {glob}: incorrect ACL entry; use "{suggestion}"')
    for char in domain:
        if char not in _HOST_CHARS:
            raise AclError(f"{owner}: {glob}: incorrect ACL entry: invalid domain '{domain}': "
                           f"disallowed character {char!r}")
    stripped = domain.rstrip(".")
    if not stripped:
        raise AclError(f"{owner}: {glob}: domain glob must not match everything")
    return ("*." if wildcard else "") + stripped


def _ports(value, where):
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise AclError(f"{where}: expected a non-empty list of ports")
    ports = set()
    for port in value:
        if type(port) is not int or not 1 <= port <= 65535:
            raise AclError(f"{where}: invalid port {port!r}: must be an integer from 1 to 65535")
        if port in ports:
            raise AclError(f"{where}: port {port} is listed twice")
        ports.add(port)
    return frozenset(ports)


def known_keys(mapping, known, where):
    """AclError for the first key of ``mapping`` not in ``known`` (with the nearest known one)."""
    for key in mapping:
        if key not in known:
            nearest = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
            raise AclError(f"{line_of(mapping, key)}{where}: unknown key {key!r}{hint}")


def _rule(raw, where, owner, name, disabled):
    if not isinstance(raw, dict):
        raise AclError(f"{where}: expected a mapping")
    known_keys(raw, RULE_KEYS, where)
    action = _string(raw.get("action"), f"{where}.action")
    if action not in ACTIONS:
        raise AclError(f"unknown action {action}")
    if action in disabled:
        raise AclError(f"rule for svc:{owner} utilizes a disabled policy:{action.capitalize()}")
    domains = [validate_glob(owner, glob) for glob in _strings(raw.get("allowed_domains"), f"{where}.allowed_domains")]
    proxies = [validate_glob(owner, glob)
               for glob in _strings(raw.get("allowed_external_proxies"), f"{where}.allowed_external_proxies")]
    mitm = raw.get("mitm_domains") or []
    if not isinstance(mitm, list):
        raise AclError(f"{where}.mitm_domains: expected a list")
    mitm_domains = []
    for index, entry in enumerate(mitm):
        at = f"{where}.mitm_domains[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("domain"), str):
            raise AclError(f"{at}: expected a mapping with a 'domain'")
        known_keys(entry, MITM_KEYS, at)
        domain = entry["domain"]
        glob = validate_glob(owner, domain)
        if domain not in (raw.get("allowed_domains") or []):
            raise AclError(f"domain {domain} was added to mitm_domains but is missing in allowed_domains")
        headers = entry.get("add_headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(name, str) and isinstance(value, str)
                                                    for name, value in headers.items()):
            raise AclError(f"{at}.add_headers: expected a mapping of header names to strings")
        detailed = entry.get("detailed_http_logs", False)
        if not isinstance(detailed, bool):
            raise AclError(f"{at}.detailed_http_logs: expected true or false")
        full = _strings(entry.get("detailed_http_logs_full_headers"), f"{at}.detailed_http_logs_full_headers")
        mitm_domains.append(MitmDomain(glob, tuple(headers.items()), detailed, frozenset(h.lower() for h in full)))
    ports = _ports(raw.get("allowed_ports"), f"{where}.allowed_ports")
    project = _string(raw.get("project"), f"{where}.project")
    return Rule(name, project, action, domains, proxies, ports, tuple(mitm_domains))


def parse_acl(document, path="<acl>", disabled_actions=()):
    """A parsed YAML document → Acl; AclError names ``path`` and what is wrong."""
    try:
        return _parse(document, path, disabled_actions)
    except AclError as err:
        raise AclError(f"{path}: {err}") from None


def acl_problems(document, path="<acl>", disabled_actions=()):
    """Every problem of an ACL document, not only the first (for check-config): each rule and
    list is checked on its own, each message naming the file and, for a rule, its service."""
    problems = []
    try:
        _parse(document, path, disabled_actions, problems)
    except AclError as err:
        problems.append(str(err))
    return [f"{path}: {problem}" for problem in problems]


def _parse(document, path, disabled_actions, problems=None):
    """``problems``: a list to gather the errors of each rule and list in, going on past them."""
    def checked(step, owner=None):
        try:
            return step()
        except AclError as err:
            if problems is None:
                raise
            problems.append(f"service {owner!r}: {err}" if owner is not None else str(err))
            return None

    for action in disabled_actions:
        if action not in ACTIONS:
            raise AclError(f"unknown action {action}")
    disabled = frozenset(disabled_actions)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise AclError("expected a mapping at the top level")
    known_keys(document, TOP_LEVEL_KEYS, "top level")
    version = document.get("version")
    if version != "v1":
        raise AclError(f'expected version "v1" got "{"" if version is None else version}"')
    services = document.get("services")
    if services is None:
        raise AclError("Top level list 'services' is missing")
    if not isinstance(services, list):
        raise AclError("services: expected a list")
    rules = {}
    for index, raw in enumerate(services):
        where = f"services[{index}]"
        name = checked(lambda raw=raw, where=where: _string(raw.get("name") if isinstance(raw, dict) else None,
                                                            f"{where}.name"))
        if name is None:
            continue
        rule = checked(lambda raw=raw, where=where, name=name: _rule(raw, where, name, name, disabled), name)
        if name in rules:
            checked(lambda name=name: _raise(f"rule already exists for service {name}"))
        elif rule is not None:
            rules[name] = rule
    default = None
    warnings = []
    if document.get("default") is not None:
        default = checked(lambda: _rule(document["default"], "default", "default_rule", None, disabled), "default")
    else:
        warnings.append("no default rule set. any services without a rule will be denied.")
    lists = {}
    for key in ("global_deny_list", "global_allow_list"):
        lists[key] = checked(lambda key=key: [validate_glob(key, glob) for glob in _strings(document.get(key), key)]) \
            or []
    return Acl(path, rules, default, lists["global_allow_list"], lists["global_deny_list"], warnings)


def _raise(message):
    raise AclError(message)


def load_acl(path, disabled_actions=()):
    """Read and validate an ACL file; AclError names the file and what is wrong."""
    return parse_acl(read_yaml(path, AclError), path, disabled_actions)
