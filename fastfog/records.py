"""Records: what a decision, a refusal or a finished connection leaves behind.

Each event of a request's life is turned here, in one place, into everything
it produces besides bytes on the wire to its upstream: its log record (with
Smokescreen's fields and messages), the answer the client gets when the
request ends there, the metric increments and the webhook events. The
transport (connection.py, proxy.py, the exchange) only says what happened.
"""

import time

from fastfog import logs, responses
from fastfog.acl import AUTH_REQUIRED
from fastfog.admission import BadRequest
from fastfog.conntrack import CLOSE_FIELDS
from fastfog.reasons import Refusal

TRACE_HEADER = b"x-smokescreen-trace-id"


def body_length(answer):
    return len(answer) - answer.index(b"\r\n\r\n") - 4


def answer_version(head):
    return head.version if head.version == "1.0" else "1.1"


def decision_fields(decision, lookup_ms):
    return {
        "decision_reason": decision.reason,
        "allow": decision.allow,
        "enforce_would_deny": decision.enforce_would_deny,
        "dns_lookup_time_ms": lookup_ms,
    }


def start_details(fields):
    return {"role": fields["role"], "client": fields["inbound_remote_addr"], "host": fields["requested_host"],
            "proxy_type": fields["proxy_type"]}


def info_details(fields, upstream, record):
    """fastfog's own figures for a connection (webhook connection-info)."""
    details = {"lookup_ms": upstream.lookup_ms if upstream is not None else None,
               "connect_ms": upstream.connect_ms if upstream is not None else None,
               "reused_upstream": upstream.reused if upstream is not None else False,
               "access_response": fields.get("access_response"),
               "intercepted_in": fields.get("mitm_connect_id")}  # the CONNECT's id, for an intercepted request
    if record is not None:
        details["last_activity"] = record["last_activity"]
        details["active_at_termination"] = record.get("active_at_termination", False)
    return details


class Records:
    """Writes one worker's records, counts its metrics and sends its webhook events."""

    def __init__(self, config, log, metrics):
        self.config, self.log, self.metrics = config, log, metrics
        self.ids = logs.IdSource()
        self.webhooks = None  # fastfog.webhooks.Webhooks when configured (set by the server)

    # --- a request's fields -----------------------------------------------------------------

    def request_fields(self, conn, proxy_type, head, started=None):
        """The fields every record of a request carries, from its client and its head."""
        fields = {
            "id": self.ids.next(),
            "inbound_remote_addr": conn.peer,
            "proxy_type": proxy_type,
            "requested_host": head.authority,
            "start_time": logs.rfc3339(started or time.time()),
            "trace_id": head.header(TRACE_HEADER) or "",
        }
        if conn.x509_fields is not None:
            fields.update(conn.x509_fields)
        return fields

    # --- requests that end before an upstream is open ---------------------------------------

    def bad_request(self, fields, message):
        """A request that could not be decided: logged, answered 400 (and the connection closed)."""
        self.log.warning("bad request", {**fields, "error": message})
        return responses.bad_request(message)

    def decided(self, fields, verdict):
        """An admission verdict's role and project in the request's fields and, once the ACL
        was reached, its metrics (acl.<result>, acl.role_not_determined)."""
        fields["role"] = verdict.role
        if verdict.error:
            fields["error"] = verdict.error
        decision = verdict.decision
        if decision is None:
            fields["project"] = ""
            return
        if verdict.role_problem:
            self.metrics.incr("acl.role_not_determined")
        self.metrics.acl_decision(decision, verdict.role)
        fields["project"] = decision.project

    def refused(self, head, fields, refused, connect, close):
        """An admission.Refused request: its record, metrics and answer (407, 429, 503 or 400)."""
        self.decided(fields, refused)
        reason = refused.reason
        if isinstance(reason, BadRequest):
            return self.bad_request(fields, reason.message)
        if isinstance(reason, Refusal):
            self.metrics.incr(reason.metric)
            return self.limited(head, fields, reason, close)
        if reason is AUTH_REQUIRED:
            return self.auth_required(head, fields, close)
        return self.denied(head, fields, reason, 0, connect, close)

    def auth_required(self, head, fields, close):
        """Missing or wrong credentials: 407 with Proxy-Authenticate. The connection stays open
        (unless a body is unread) so the client can retry on it with credentials."""
        answer = responses.auth_required(answer_version(head), self.config.auth.realm, close)
        self.log.warning(logs.DECISION, {**fields, **decision_fields(AUTH_REQUIRED, 0), "status_code": 407,
                                         "content_length": body_length(answer)})
        return answer

    def denied(self, head, fields, decision, lookup_ms, connect, close):
        """A deny and its 407, with Smokescreen's text."""
        phrase = "Request rejected by proxy" if connect else "Proxy Authentication Required"
        answer = responses.deny(answer_version(head), head.authority, decision.reason, self.config.deny_message_extra,
                                decision.code, close=close, phrase=phrase)
        self.log.warning(logs.DECISION, {**fields, **decision_fields(decision, lookup_ms),
                                         "status_code": 407, "content_length": body_length(answer)})
        return answer

    def limited(self, head, fields, refusal, close):
        """A request refused by a limit: its 429 or 503."""
        answer = responses.limited(answer_version(head), refusal, close)
        self.log.warning(logs.DECISION, {**fields, "decision_reason": refusal.message, "allow": False,
                                         "enforce_would_deny": False, "dns_lookup_time_ms": 0,
                                         "status_code": refusal.status, "content_length": body_length(answer)})
        return answer

    def failed(self, head, fields, decision, lookup_ms, status, message, close):
        """A failure after an allowed decision (502, 504, 500) and its answer."""
        version = answer_version(head)
        if status == 500:
            answer = responses.internal_error(version, message, close=close)
        else:
            builder = responses.gateway_timeout if status == 504 else responses.bad_gateway
            answer = builder(version, message, self.config.deny_message_extra, close=close)
        self.log.error(logs.DECISION, {**fields, **decision_fields(decision, lookup_ms),
                                       "status_code": status, "error": message,
                                       "content_length": body_length(answer)})
        return answer

    # --- open connections and their ends ------------------------------------------------------

    def started(self, fields):
        """A tunnel or forwarded request begins (webhook connection-start)."""
        if self.webhooks is not None:
            self.webhooks.emit("connection-start", fields["id"], start_details(fields))

    def opened(self, fields, upstream, started):
        """A tunnel is open (relayed or intercepted), or a forwarded request answered: its
        decision record and proxy_duration_ms."""
        if self.log.info_enabled:  # (the record is not even built below the log level)
            self.log.info(logs.DECISION, {**fields, **decision_fields(upstream.decision, upstream.lookup_ms),
                                          "conn_establish_time_ms": upstream.connect_ms})
        self.metrics.observe("proxy_duration_ms", (time.time() - started) * 1000)

    def sni_refused(self, fields, upstream):
        """A tunnel closed by the SNI check under enforce (its decision already the deny)."""
        self.log.warning(logs.DECISION, {**fields, **decision_fields(upstream.decision, upstream.lookup_ms),
                                         "conn_establish_time_ms": upstream.connect_ms})
        self.metrics.incr("sni.deny")

    def forwarded(self, head, fields, upstream, started, status, content_length):
        """A forwarded request's response has been passed on."""
        fields["status_code"] = status
        fields["content_length"] = -1 if content_length is None else content_length
        self.opened(fields, upstream, started)
        if self.webhooks is not None:
            details = {**start_details(fields), "project": fields["project"], "method": head.method,
                       "host": head.authority, "status": status, "content_length": fields["content_length"],
                       "duration": time.time() - started, "decision": upstream.decision.reason,
                       "destination": fields.get("outbound_remote_addr", "")}
            self.webhooks.emit("connection-stop", fields["id"], details)
            self.webhooks.emit("connection-info", fields["id"], info_details(fields, upstream, None))

    def tunnel_closed(self, tunnel):
        """A tunnel's close record (Smokescreen's CANONICAL-PROXY-CN-CLOSE), metrics and events."""
        relay = tunnel.relay
        ended = time.time()
        record = dict(zip(CLOSE_FIELDS, tunnel.values, strict=True))
        record["bytes_in"] = relay.bytes_in
        record["bytes_out"] = relay.bytes_out
        record["end_time"] = logs.rfc3339(ended)
        record["duration"] = ended - tunnel.started
        record["last_activity"] = logs.rfc3339(ended - (time.monotonic() - relay.last_activity))
        record["error"] = relay.error or ""
        if tunnel.active_at_termination:
            record["active_at_termination"] = True
        if tunnel.tls_sni is not None:
            record["tls_sni"] = tunnel.tls_sni
        self.log.info(logs.CONNECTION_CLOSE, record)
        if self.webhooks is not None and tunnel.details is not None:
            self._tunnel_events(tunnel, record)
        self.metrics.connection_closed(tunnel.role, tunnel.project, record["duration"], relay.bytes_in,
                                       relay.bytes_out, tunnel.active_at_termination)

    def _tunnel_events(self, tunnel, record):
        fields, upstream = tunnel.details
        details = {**start_details(fields), "project": fields["project"], "bytes_up": record["bytes_out"],
                   "bytes_down": record["bytes_in"], "duration": record["duration"],
                   "decision": upstream.decision.reason if upstream is not None else "",
                   "destination": fields.get("outbound_remote_addr", ""), "error": record["error"]}
        if tunnel.tls_sni is not None:
            details["tls_sni"] = tunnel.tls_sni
        self.webhooks.emit("connection-stop", fields["id"], details)
        self.webhooks.emit("connection-info", fields["id"], info_details(fields, upstream, record))
