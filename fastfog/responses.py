"""The bytes fastfog answers with, built in one place (SPEC section 3.5).

Status lines, bodies and headers follow Smokescreen, whose clients and
dashboards match on them: a deny is ``407 Request rejected by proxy`` with the
message as body and in ``X-Smokescreen-Error``; connection failures are 502
``Bad gateway`` and 504 ``Gateway timeout``. Every deny also carries
``X-Fastfog-Reason``, a short code for machines.
"""

from fastfog import reasons

CONNECT_ESTABLISHED = b"HTTP/1.0 200 OK\r\n\r\n"

DENY_TEMPLATE = "Egress proxying is denied to host '{host}': {reason}."
NON_PROXY_MESSAGE = "This is a proxy server. Does not respond to non-proxy requests."


def _head(version, status, reason, headers, body):
    lines = [f"HTTP/{version} {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def _with_extra(message, extra):
    """Smokescreen's --additional-error-message-on-deny: body ``msg\\n\\nEXTRA\\n\\n``, header ``msg  EXTRA``."""
    if not extra:
        return message + "\n", message
    return f"{message}\n\n{extra}\n\n", f"{message}  {extra}"


def _header_safe(text):
    return text.replace("\r", " ").replace("\n", " ")


def rejection(version, status, reason_phrase, message, extra="", code=None, close=False, headers=()):
    """A text answer from the proxy: body ``message`` (plus the configured extra), mirrored in
    X-Smokescreen-Error, with X-Fastfog-Reason when ``code`` is given, and ``headers``."""
    body, header = _with_extra(message, extra)
    headers = [("Content-Type", "text/plain"), *headers]
    if code:
        headers.append(("X-Fastfog-Reason", code))
    headers.append(("X-Smokescreen-Error", _header_safe(header)))
    if close:
        headers.append(("Connection", "close"))
    return _head(version, status, reason_phrase, headers, body.encode("utf-8"))


def deny(version, requested_host, reason, extra="", code=None, close=False, phrase="Request rejected by proxy"):
    """407 for an ACL or address deny (a forwarded request's says ``Proxy Authentication Required``)."""
    message = DENY_TEMPLATE.format(host=requested_host, reason=reason)
    return rejection(version, 407, phrase, message, extra, code, close)


def bad_gateway(version, message, extra="", close=False):
    return rejection(version, 502, "Bad gateway", message, extra, None, close)


def gateway_timeout(version, message, extra="", close=False):
    return rejection(version, 504, "Gateway timeout", message, extra, None, close)


def internal_error(version, message, close=True):
    return rejection(version, 500, "Internal server error", f"An unexpected error occurred: {message}",
                     close=close)


def not_a_proxy_request(version):
    """Smokescreen's answer to an origin-form request (other than the health check)."""
    body = (NON_PROXY_MESSAGE + "\n").encode()
    return _head(version, 500, "Internal Server Error",
                 [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")], body)


def healthcheck(version, serving):
    """200 while serving; 503 once draining, so load balancers stop sending new work."""
    if serving:
        return _head(version, 200, "OK", [("Content-Type", "text/plain")], b"ok\n")
    return _head(version, 503, "Service Unavailable", [("Content-Type", "text/plain"), ("Connection", "close")],
                 b"shutting down\n")


def bad_request(reason):
    """400 for a request fastfog cannot parse; the connection is closed after it."""
    body = f"400 Bad Request: {reason}\n".encode("utf-8", "replace")
    return _head("1.1", 400, "Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                              ("X-Fastfog-Reason", reasons.CODE_BAD_REQUEST),
                                              ("Connection", "close")], body)


def limited(version, refusal, close):
    """429 or 503 from a rate, concurrency or tunnel limit: come back in a second."""
    return rejection(version, refusal.status, refusal.phrase, refusal.message, code=refusal.code, close=close,
                     headers=[("Retry-After", "1")])




def auth_required(version, realm, close):
    """407 asking for Basic credentials, so .NET and Java clients retry with them."""
    return rejection(version, 407, "Proxy Authentication Required", reasons.AUTH_REQUIRED,
                     code=reasons.CODE_AUTH_REQUIRED,
                     close=close, headers=[("Proxy-Authenticate", f'Basic realm="{realm}"')])
