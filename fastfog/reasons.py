"""Every decision reason fastfog reports, in one place.

The ``decision_reason`` strings are Smokescreen's, byte for byte: clients,
log pipelines and dashboards match on them. Each deny also has a short
machine-readable code, sent as ``X-Fastfog-Reason``.
"""

from typing import NamedTuple

# ACL decisions (Smokescreen's pkg/smokescreen/acl/v1 and its request checks).
ACL_NOT_CONFIGURED = "Egress ACL is not configured"
ROLE_NOT_DETERMINED = "Client role cannot be determined"
DESTINATION_NOT_DETERMINED = "Destination host cannot be determined"
NO_RULE_MATCHED = "no rule matched"
EXTERNAL_PROXY_NOT_ALLOWED = "connect proxy host not allowed in rule"
ALLOWED_DOMAIN = "host matched allowed domain in rule"
GLOBAL_DENY = "host matched rule in global deny list"
GLOBAL_ALLOW = "host matched rule in global allow list"
REPORT_POLICY = "rule has allow and report policy"
ENFORCE_POLICY = "rule has enforce policy"
OPEN_POLICY = "rule has open enforcement policy"
DEFAULT_RULE_POLICY = "default rule policy used"

# A destination port Smokescreen refuses before any ACL rule (a 407, as its deny).
MISSING_PORT = "missing port in address"
INVALID_PORT = "invalid port number"
MAX_PORT = 65535

# A CONNECT whose rule asks for interception (mitm_domains) without a MITM CA configured.
MITM_NOT_ENABLED = "ACLDecision specified MITM but Smokescreen doesn't have MITM enabled"

# fastfog's own reasons: its port policy, Proxy-Authorization, the access-request webhook, and an
# intercepted request whose origin's TLS failed.
PORT_NOT_ALLOWED = "port not allowed in rule"
AUTH_REQUIRED = "Proxy authentication required"
REJECTED_BY_WEBHOOK = "rejected by access-request webhook"
ORIGIN_TLS_FAILED = "origin TLS failed: "  # + what failed

# X-Fastfog-Reason codes for ACL denials.
CODE_ROLE_NOT_DETERMINED = "acl_role_unknown"
CODE_DESTINATION_NOT_DETERMINED = "acl_destination_unknown"
CODE_NO_RULE = "acl_no_rule"
CODE_EXTERNAL_PROXY = "acl_external_proxy"
CODE_GLOBAL_DENY = "acl_global_deny"
CODE_ENFORCE = "acl_enforce"
CODE_BAD_PORT = "bad_port"
CODE_PORT = "acl_port"
CODE_AUTH_REQUIRED = "auth_required"
CODE_ACCESS_REJECTED = "access_rejected"
CODE_ORIGIN_TLS = "mitm_origin_tls"
CODE_BAD_REQUEST = "bad_request"
CODE_MITM_NOT_ENABLED = "mitm_not_enabled"



class AddressClass(NamedTuple):
    """What a destination address is, and whether it may be dialed."""

    text: str  # Smokescreen's name for the class, as it appears in deny reasons
    allowed: bool
    metric: str  # counted once per decision under this name
    code: str | None  # X-Fastfog-Reason when denied

    def __str__(self):
        return self.text


SELF_CONNECTION = AddressClass("Deny: Self Connection", False, "resolver.deny.self_connection",
                               "addr_self_connection")
NOT_GLOBAL_UNICAST = AddressClass("Deny: Not Global Unicast", False, "resolver.deny.not_global_unicast",
                                  "addr_not_global_unicast")
USER_ALLOWED = AddressClass("Allow: User Configured", True, "resolver.allow.user_configured", None)
USER_DENIED = AddressClass("Deny: User Configured", False, "resolver.deny.user_configured",
                           "addr_user_configured")
IPV6_EMBEDDING = AddressClass("Deny: IPv6 Embedding", False, "resolver.deny.ipv6_embedding",
                              "addr_ipv6_embedding")
PRIVATE_RANGE = AddressClass("Deny: Private Range", False, "resolver.deny.private_range", "addr_private")
CGNAT_RANGE = AddressClass("Deny: CGNAT Range", False, "resolver.deny.cgnat_range", "addr_cgnat")
SPECIAL_PURPOSE = AddressClass("Deny: Special Purpose", False, "resolver.deny.special_purpose",
                               "addr_special_purpose")
DEFAULT_ALLOWED = AddressClass("Allow: Default", True, "resolver.allow.default", None)


def address_deny_reason(ip, address_class):
    """Smokescreen's reason when no resolved address may be dialed; note the trailing space."""
    return f"no valid IP found among resolved addresses - {ip} denied by rule '{address_class}'. "

# fastfog's SNI check for CONNECT tunnels (SPEC 5.4).
SNI_MISMATCH = "tls server name does not match CONNECT host"
SNI_NOT_TLS = "tunnel did not start with a TLS ClientHello"
CODE_SNI = "sni_mismatch"


class Refusal(NamedTuple):
    """A request refused by a limit (limits.py): its answer's status, phrase and message, its
    reason code and the metric it counts."""

    status: int
    phrase: str
    message: str
    code: str
    metric: str


RATE_LIMITED = Refusal(429, "Too Many Requests", "Proxy rate limit exceeded. Please retry later.",
                       "rate_limited", "requests.rate_limited")
OVERLOADED = Refusal(503, "Service Unavailable", "Proxy overloaded. Please retry later.",
                     "concurrency_limited", "requests.concurrency_limited")
TOO_MANY_TUNNELS = Refusal(429, "Too Many Requests", "maximum concurrent connect tunnels exceeded",
                           "tunnels_limited", "tunnels.concurrency_limited")
