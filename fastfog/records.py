"""Records: what a decision, a refusal or a finished connection leaves behind.

Each event of a request's life is turned here, in one place, into everything
it produces besides bytes on the wire to its upstream: its log record (with
Smokescreen's fields and messages), the answer the client gets when the
request ends there, the metric increments and the webhook events. The
transport (connection.py, proxy.py, the exchange) only says what happened.
"""

from fastfog import logs, responses
from fastfog.acl import AUTH_REQUIRED
from fastfog.admission import BadRequest
from fastfog.hotpaths import RecordsCore
from fastfog.reasons import Refusal
from fastfog.reference.records import decision_fields


def body_length(answer):
    return len(answer) - answer.index(b"\r\n\r\n") - 4


def answer_version(head):
    return head.version if head.version == "1.0" else "1.1"


class Records(RecordsCore):
    """Writes one worker's records, counts its metrics and sends its webhook events: the common
    path's events come from RecordsCore (compiled in hot/records.pxi; its twin,
    reference/records.py, documents them), the rest are here."""

    # --- requests that end before an upstream is open ---------------------------------------

    def bad_request(self, fields, message):
        """A request that could not be decided: logged, answered 400 (and the connection closed)."""
        self.log.warning("bad request", {**fields, "error": message})
        return responses.bad_request(message)

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

    def sni_refused(self, fields, upstream):
        """A tunnel closed by the SNI check under enforce (its decision already the deny)."""
        self.log.warning(logs.DECISION, {**fields, **decision_fields(upstream.decision, upstream.lookup_ms),
                                         "conn_establish_time_ms": upstream.connect_ms})
        self.metrics.incr("sni.deny")
