# What a request leaves behind on its common path, compiled. Twin, and the
# description of every event: fastfog/reference/records.py, whose helpers also
# build the webhook events' details here (they are sent only when webhooks are
# configured). The fields and records are made by C calls on typed values: the
# id, the timestamps and the clocks without a Python call, the records handed
# to the log's batch (hot/record.pxi).

cdef bytes _TRACE_HEADER = b"x-smokescreen-trace-id"

cdef class RecordsCore:
    """Writes one worker's records, counts its metrics and sends its webhook events (same API
    as fastfog.reference.records.RecordsCore, which documents it)."""
    cdef public object config, log, metrics, webhooks
    cdef public IdSource ids

    def __init__(self, config, log, metrics):
        if not _imported:
            _import_python()
        self.config, self.log, self.metrics = config, log, metrics
        self.ids = IdSource()
        self.webhooks = None

    def request_fields(self, conn, proxy_type, head, started=None):
        cdef dict fields = {
            "id": self.ids._next(),
            "inbound_remote_addr": conn.peer,
            "proxy_type": proxy_type,
            "requested_host": head.authority,
            "start_time": _rfc3339(started or _now()),
            "trace_id": head.header(_TRACE_HEADER) or "",
        }
        x509_fields = conn.x509_fields
        if x509_fields is not None:
            fields.update(x509_fields)
        return fields

    def decided(self, dict fields, verdict):
        fields["role"] = verdict.role
        error = verdict.error
        if error:
            fields["error"] = error
        decision = verdict.decision
        if decision is None:
            fields["project"] = ""
            return
        if verdict.role_problem:
            self.metrics.incr("acl.role_not_determined")
        self.metrics.acl_decision(decision, verdict.role)
        fields["project"] = decision.project

    def started(self, dict fields):
        if self.webhooks is not None:
            self.webhooks.emit("connection-start", fields["id"], _start_details(fields))

    def opened(self, dict fields, upstream, double started):
        cdef dict record
        if self.log.info_enabled:  # (the record is not even built below the log level)
            decision = upstream.decision
            record = dict(fields)
            record["decision_reason"] = decision.reason
            record["allow"] = decision.allow
            record["enforce_would_deny"] = decision.enforce_would_deny
            record["dns_lookup_time_ms"] = upstream.lookup_ms
            record["conn_establish_time_ms"] = upstream.connect_ms
            self.log.info(_DECISION, record)
        self.metrics.observe("proxy_duration_ms", (_now() - started) * 1000)

    def forwarded(self, head, dict fields, upstream, double started, status, content_length):
        fields["status_code"] = status
        fields["content_length"] = -1 if content_length is None else content_length
        self.opened(fields, upstream, started)
        if self.webhooks is not None:
            _forwarded_events(self.webhooks, head, fields, upstream, started, status)

    def tunnel_closed(self, tunnel):
        relay = tunnel.relay
        cdef double ended = _now()
        cdef tuple values = tunnel.values
        cdef dict record = {}
        cdef Py_ssize_t index
        for index in range(len(_TUNNEL_FIELDS)):
            record[_TUNNEL_FIELDS[index]] = values[index]
        bytes_in, bytes_out = relay.bytes_in, relay.bytes_out
        record["bytes_in"] = bytes_in
        record["bytes_out"] = bytes_out
        record["end_time"] = _rfc3339(ended)
        cdef double duration = ended - <double>tunnel.started
        record["duration"] = duration
        record["last_activity"] = _rfc3339(ended - (_monotonic() - <double>relay.last_activity))
        record["error"] = relay.error or ""
        active = tunnel.active_at_termination
        if active:
            record["active_at_termination"] = True
        tls_sni = tunnel.tls_sni
        if tls_sni is not None:
            record["tls_sni"] = tls_sni
        self.log.info(_CONNECTION_CLOSE, record)
        if self.webhooks is not None and tunnel.details is not None:
            _tunnel_events(self.webhooks, tunnel, record)
        self.metrics.connection_closed(tunnel.role, tunnel.project, duration, bytes_in, bytes_out, active)
