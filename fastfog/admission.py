"""Admission: whether a request may go on, decided from its head and its client alone.

The steps before any DNS or dial, in Smokescreen's order (SPEC 3.1, 3.5):
the requested host's canonical form, the client's role, the port policy, the
limits, the ACL (and fastfog's interception check), and where the request is
dialed (the host itself, or the upstream proxy it names). Nothing here reads a
socket, logs a decision, builds an answer or counts a metric: ``admit``
returns a verdict, and records.py turns a refusal into its record, answer and
metrics. The one exception is a role plugin that fails, which is reported
as it happens (it is the plugin's problem, not the request's).

Once the destination's name is resolved, ``AddressPolicy.pick`` (classify.py)
is the last step; ``address_denial`` makes its refusal a Decision like the
ACL's.
"""

from typing import NamedTuple

from fastfog.acl import (
    AUTH_REQUIRED,
    NOT_CONFIGURED,
    ROLE_NOT_DETERMINED,
    Decision,
    UpstreamProxy,
    mitm_refused,
    parse_upstream_proxy,
    port_problem,
)
from fastfog.classify import Host, canonical_host
from fastfog.roles import RequestView

UPSTREAM_PROXY_HEADER = b"x-upstream-https-proxy"


class BadRequest(NamedTuple):
    """A request that cannot be decided at all (400)."""

    message: str


class Admitted(NamedTuple):
    """A request that may go on: it counts against the concurrency limit until released."""

    role: str
    decision: Decision  # allowed (or reported): its record's reason, rule and project
    requested: Host  # the host the client asked for, canonical
    host: Host  # what to resolve and dial: ``requested``, or the upstream proxy's host
    port: int
    via: UpstreamProxy | None  # the X-Upstream-Https-Proxy to chain through, if any
    role_problem: bool  # the role could not be determined (the acl.role_not_determined metric)
    error: str  # why the role is unknown, for the record ("" when it is known)


class Refused(NamedTuple):
    """A request refused before any DNS: by its role, its port, a limit or the ACL."""

    role: str
    reason: object  # a Decision (AUTH_REQUIRED, a port, the ACL's), a reasons.Refusal (a limit), or a BadRequest
    decision: Decision | None  # the ACL's, when it was reached: the request counts against the
    #                            concurrency limit then, until whoever answers it releases it
    role_problem: bool
    error: str


class Client(NamedTuple):
    """What admission reads of a client connection (a connection.ClientConnection has the same
    attributes, and is passed as it is)."""

    address: tuple  # (host, port) as accepted
    tls: bool
    peer_certificate: dict | None  # as ssl.getpeercert() gives it
    x509_fields: dict | None  # its record fields: inbound_remote_x509_cn (the Subject CN), ...
    mitm: object  # inside an intercepted tunnel, the mitm.Interception (whose ``role`` is the CONNECT's)


class Admission:
    """The admission steps for one configuration (a reload makes a new one)."""

    __slots__ = ("config", "limits", "log", "can_intercept")

    def __init__(self, config, limits, log):
        self.config, self.limits, self.log = config, limits, log
        self.can_intercept = config.mitm is not None

    def admit(self, client, head, connect):
        """Decide ``head`` (a parsed request) from ``client``: Admitted, Refused or BadRequest."""
        try:
            requested = canonical_host(head.host)
        except ValueError as err:
            return BadRequest(str(err))
        role, role_error, error = self.role(client, head)
        role_problem = role_error is ROLE_NOT_DETERMINED
        if role_error is AUTH_REQUIRED:
            return Refused(role, AUTH_REQUIRED, None, False, error)
        bad_port = port_problem(head.port)
        if bad_port is not None:
            return Refused(role, bad_port, None, False, error)
        refusal = self.limits.admit(role, connect)
        if refusal is not None:
            return Refused(role, refusal, None, False, error)
        upstream_proxy = head.header(UPSTREAM_PROXY_HEADER) if connect else None
        decision = self.decide(role, role_error, requested, head.port, upstream_proxy, connect)
        if not decision.allow:
            return Refused(role, decision, decision, role_problem, error)
        host, port, via = requested, head.port, None
        if upstream_proxy:
            # Through another proxy: its address is resolved, classified and dialed; the
            # requested host is that proxy's to resolve.
            via = parse_upstream_proxy(upstream_proxy)
            try:
                host, port = canonical_host(via.host), via.port
            except (AttributeError, ValueError):
                return Refused(role, BadRequest("invalid X-Upstream-Https-Proxy"), decision, role_problem, error)
        return Admitted(role, decision, requested, host, port, via, role_problem, error)

    def role(self, client, head):
        """(role, problem, error): the client's role, or the Decision that explains why it has none.

        A role plugin decides alone when configured. With proxy_auth, the role comes from the
        Proxy-Authorization credentials (AUTH_REQUIRED when they are wrong, or missing without
        allow_missing_role). Otherwise, on the TLS listener, it is the client certificate's
        Subject CN; without TLS there is none (``error`` says why, for the record).
        """
        config = self.config
        if client.mitm is not None:  # inside an intercepted tunnel: the CONNECT's role, always
            return client.mitm.role, None, ""
        if config.role_plugin is not None:
            return self._plugin_role(client, head)
        if config.auth is not None:
            header = head.header(b"proxy-authorization")
            if header is None:
                return ("", None, "") if config.allow_missing_role else ("", AUTH_REQUIRED, "")
            role = config.auth.role_of(header)
            return (role, None, "") if role is not None else ("", AUTH_REQUIRED, "")
        if client.tls:
            if client.peer_certificate is not None:
                return client.x509_fields["inbound_remote_x509_cn"], None, ""
            problem = "client did not provide certificate"
        else:
            problem = "defaultRoleFromRequest requires TLS"
        if config.allow_missing_role:
            return "", None, ""
        return "", ROLE_NOT_DETERMINED, problem

    def _plugin_role(self, client, head):
        """role_from_request: a str is the role; None is a missing role; raising denies."""
        certificate = client.peer_certificate  # shared by the certificate's connections: the plugin gets its own
        view = RequestView(client.address, head.method, head.target,
                           [(name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers],
                           None if certificate is None else dict(certificate))
        try:
            role = self.config.role_plugin(view)
        except Exception as err:  # the plugin's own way of saying no
            self.log.warning("role_from_request refused the request", {"error": f"{type(err).__name__}: {err}"})
            return "", ROLE_NOT_DETERMINED, ""
        if role is None:
            return ("", None, "") if self.config.allow_missing_role else ("", ROLE_NOT_DETERMINED, "")
        if not isinstance(role, str):
            self.log.error("role_from_request returned something other than a str or None",
                           {"error": repr(role)[:200]})
            return "", ROLE_NOT_DETERMINED, ""
        return role, None, ""

    def decide(self, role, role_error, host, port, upstream_proxy, connect):
        """The ACL's Decision (NOT_CONFIGURED without an ACL; the role's problem when it has one)."""
        acl = self.config.acl
        if acl is None:
            return NOT_CONFIGURED
        if role_error is not None:
            return role_error
        decision = acl.decide(role, host.name, port, upstream_proxy)
        if decision.mitm is not None and connect and not self.can_intercept:  # asked for, no CA
            return mitm_refused(decision)
        return decision


def address_denial(decision, pick):
    """An allowed decision turned into the deny for a destination address (classify.Pick)."""
    return Decision(False, pick.deny_reason, "deny", decision.project, decision.default_rule, True,
                    decision.rule, pick.address_class.code)


__all__ = ["Admission", "Admitted", "BadRequest", "Client", "Refused", "address_denial"]
