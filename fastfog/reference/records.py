"""What a request leaves behind on its common path, in pure Python: the twin of
fastfog/hot/records.pxi, which ``fastfog.hotpaths.RecordsCore`` is in the compiled build.

``RecordsCore(config, log, metrics)`` turns the events every tunnel and every
forwarded request goes through into their records, metrics and webhook events:

- ``request_fields(conn, proxy_type, head, started)``: the fields every record
  of a request carries, from its client and its head;
- ``decided(fields, verdict)``: an admission verdict's role and project in
  those fields and, once the ACL was reached, its metrics;
- ``started(fields)``: a tunnel or forwarded request begins (webhook
  connection-start);
- ``opened(fields, upstream, started)``: a tunnel is open, or a forwarded
  request answered: its decision record and proxy_duration_ms;
- ``forwarded(head, fields, upstream, started, status, content_length)``: a
  forwarded request's response has been passed on;
- ``tunnel_closed(tunnel)``: a tunnel's close record (Smokescreen's
  CANONICAL-PROXY-CN-CLOSE), metrics and events.

``fastfog.records.Records`` extends it with the records of requests that end
before an upstream is open. The helpers below build what both
implementations send (a decision's fields, the webhook events' details).
"""

import time

from fastfog import logs
from fastfog.reference.conntrack import CLOSE_FIELDS
from fastfog.reference.record import IdSource, rfc3339

TRACE_HEADER = b"x-smokescreen-trace-id"


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


def forwarded_events(webhooks, head, fields, upstream, started, status):
    """A forwarded request's webhook events: connection-stop and connection-info."""
    details = {**start_details(fields), "project": fields["project"], "method": head.method,
               "host": head.authority, "status": status, "content_length": fields["content_length"],
               "duration": time.time() - started, "decision": upstream.decision.reason,
               "destination": fields.get("outbound_remote_addr", "")}
    webhooks.emit("connection-stop", fields["id"], details)
    webhooks.emit("connection-info", fields["id"], info_details(fields, upstream, None))


def tunnel_events(webhooks, tunnel, record):
    """A closed tunnel's webhook events: connection-stop and connection-info."""
    fields, upstream = tunnel.details
    details = {**start_details(fields), "project": fields["project"], "bytes_up": record["bytes_out"],
               "bytes_down": record["bytes_in"], "duration": record["duration"],
               "decision": upstream.decision.reason if upstream is not None else "",
               "destination": fields.get("outbound_remote_addr", ""), "error": record["error"]}
    if tunnel.tls_sni is not None:
        details["tls_sni"] = tunnel.tls_sni
    webhooks.emit("connection-stop", fields["id"], details)
    webhooks.emit("connection-info", fields["id"], info_details(fields, upstream, record))


class RecordsCore:
    """Writes one worker's records, counts its metrics and sends its webhook events."""

    def __init__(self, config, log, metrics):
        self.config, self.log, self.metrics = config, log, metrics
        self.ids = IdSource()
        self.webhooks = None  # fastfog.webhooks.Webhooks when configured (set by the server)

    def request_fields(self, conn, proxy_type, head, started=None):
        fields = {
            "id": self.ids.next(),
            "inbound_remote_addr": conn.peer,
            "proxy_type": proxy_type,
            "requested_host": head.authority,
            "start_time": rfc3339(started or time.time()),
            "trace_id": head.header(TRACE_HEADER) or "",
        }
        if conn.x509_fields is not None:
            fields.update(conn.x509_fields)
        return fields

    def decided(self, fields, verdict):
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

    def started(self, fields):
        if self.webhooks is not None:
            self.webhooks.emit("connection-start", fields["id"], start_details(fields))

    def opened(self, fields, upstream, started):
        if self.log.info_enabled:  # (the record is not even built below the log level)
            self.log.info(logs.DECISION, {**fields, **decision_fields(upstream.decision, upstream.lookup_ms),
                                          "conn_establish_time_ms": upstream.connect_ms})
        self.metrics.observe("proxy_duration_ms", (time.time() - started) * 1000)

    def forwarded(self, head, fields, upstream, started, status, content_length):
        fields["status_code"] = status
        fields["content_length"] = -1 if content_length is None else content_length
        self.opened(fields, upstream, started)
        if self.webhooks is not None:
            forwarded_events(self.webhooks, head, fields, upstream, started, status)

    def tunnel_closed(self, tunnel):
        relay = tunnel.relay
        ended = time.time()
        record = dict(zip(CLOSE_FIELDS, tunnel.values, strict=True))
        record["bytes_in"] = relay.bytes_in
        record["bytes_out"] = relay.bytes_out
        record["end_time"] = rfc3339(ended)
        record["duration"] = ended - tunnel.started
        record["last_activity"] = rfc3339(ended - (time.monotonic() - relay.last_activity))
        record["error"] = relay.error or ""
        if tunnel.active_at_termination:
            record["active_at_termination"] = True
        if tunnel.tls_sni is not None:
            record["tls_sni"] = tunnel.tls_sni
        self.log.info(logs.CONNECTION_CLOSE, record)
        if self.webhooks is not None and tunnel.details is not None:
            tunnel_events(self.webhooks, tunnel, record)
        self.metrics.connection_closed(tunnel.role, tunnel.project, record["duration"], relay.bytes_in,
                                       relay.bytes_out, tunnel.active_at_termination)
