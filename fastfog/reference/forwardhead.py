"""The heads of forwarded messages: the twin of fastfog/hot/forwardhead.pxi.

A proxy does not forward hop-by-hop headers: the names of RFC 9110 section
7.6.1 and those a ``Connection`` header lists. ``rewrite_head`` keeps every
other header line in order and byte for byte, between the lines the proxy
writes itself. ``upstream_request`` and ``client_response`` are the two heads
fastfog forwards (see fastfog/forward.py).
"""

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
# The request headers that never go upstream: Smokescreen's own, ``Host`` (written from the URL),
# and ``Expect`` (fastfog answers a ``100-continue`` itself: see forward.CONTINUE).
REQUEST_ONLY = frozenset({b"host", b"x-smokescreen-role", b"x-smokescreen-trace-id", b"x-upstream-https-proxy",
                          b"expect"})
RESPONSE_ONLY = frozenset({b"x-smokescreen-error"})


def _listed_names(headers):
    """The lowercase names that the message's ``Connection`` headers list."""
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip(b" \t").lower() for token in value.split(b","))
    return tokens


def rewrite_head(before, headers, dropped, drop_proxy, after):
    """A head: ``before`` (the start line and lines of the proxy's own, each ending in CRLF), the
    lines of ``headers`` that go on, ``after`` (more lines of the proxy's own) and the empty line.

    A header does not go on when its name, in any case, is hop-by-hop, is in ``dropped`` (a
    frozenset of lowercase names), is listed by a ``Connection`` header or, with
    ``drop_proxy``, starts with ``Proxy-``.
    """
    named = _listed_names(headers)
    lines = [before]
    for name, value in headers:
        lower = name.lower()
        if (lower in HOP_BY_HOP or lower in dropped or lower in named
                or (drop_proxy and lower.startswith(b"proxy-"))):
            continue
        lines.append(name + b": " + value + b"\r\n")
    lines.append(after)
    lines.append(b"\r\n")
    return b"".join(lines)


def upstream_request(head, add_headers=()):
    """The request head to send upstream: origin form in the client's version, ``Host`` from the
    URL, ``Connection: close`` for HTTP/1.0 (whose upstream connections are not pooled);
    ``add_headers``: (name, value) pairs that replace any the client sent under those names (an
    intercepted request's ``add_headers``)."""
    before = f"{head.method} {head.path} HTTP/{head.version}\r\nHost: {head.authority}\r\n".encode("ascii")
    after = b"Connection: close\r\n" if head.version == "1.0" else b""
    removed = REQUEST_ONLY
    if add_headers:
        removed = REQUEST_ONLY | {name.lower().encode("latin-1") for name, _ in add_headers}
        after += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in add_headers)
    return rewrite_head(before, head.headers, removed, True, after)


def client_response(head, close, client_version):
    """The response head to send the client, in fastfog's own version (RFC 9110 section 2.5; a
    reason phrase is optional); ``close`` when the client connection ends after it."""
    start = f"HTTP/1.1 {head.status} {head.reason}".rstrip() + "\r\n"
    if close:
        after = b"Connection: close\r\n"
    elif client_version == "1.0":
        after = b"Connection: keep-alive\r\n"
    else:
        after = b""
    return rewrite_head(start.encode("latin-1"), head.headers, RESPONSE_ONLY, False, after)
