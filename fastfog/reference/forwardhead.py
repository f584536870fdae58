"""Which header lines of a forwarded message go on: the twin of fastfog/hot/forwardhead.pxi.

A proxy does not forward hop-by-hop headers: the names of RFC 9110 section
7.6.1 and those a ``Connection`` header lists. ``rewrite_head`` keeps every
other header line in order and byte for byte, between the lines the proxy
writes itself.
"""

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})


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
