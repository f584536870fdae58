"""Plain-HTTP forwarding: what goes upstream, what comes back, and where each body ends.

A forwarded request goes upstream in origin form, in the client's HTTP version
(so an HTTP/1.0 client never gets a chunked body back), with ``Host`` taken from the
requested URL, without hop-by-hop headers (those RFC 9110 names and those the
``Connection`` header lists), without ``Proxy-*`` headers and without
Smokescreen's role and trace headers; HTTP/1.1 upstream connections are kept
for reuse (see pool.py). The response comes back without hop-by-hop
headers and without ``X-Smokescreen-Error``: the heads are written by
``upstream_request`` and ``client_response`` (hot/forwardhead.pxi, whose twin
reference/forwardhead.py documents them). Bodies keep their framing and
stream through in pieces, never whole: the framing objects below only say how
many of the bytes read belong to the message.
"""

from fastfog.chunked import ChunkedBody
from fastfog.hotpaths import client_response, upstream_request  # noqa: F401  (the heads, with the framing)

# fastfog answers a client's ``100-continue`` itself and sends the body on at once (as Smokescreen's
# Go server does), so the upstream is never asked to wait: ``Expect`` does not go on.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expects_continue(head):
    """An HTTP/1.1 request with a body whose client waits for ``100 Continue`` before sending it."""
    if head.version == "1.0" or not (head.content_length or head.chunked):
        return False
    expect = head.header(b"expect")
    return expect is not None and expect.strip(" \t").lower() == "100-continue"


class LengthBody:
    """A body of a known length (Content-Length; 0 for none)."""

    __slots__ = ("remaining",)

    def __init__(self, length):
        self.remaining = length

    @property
    def done(self):
        return self.remaining == 0

    def feed(self, data, start=0):
        taken = min(self.remaining, len(data) - start)
        self.remaining -= taken
        return taken


class UntilClose:
    """A response body delimited by the upstream closing its connection."""

    __slots__ = ()
    done = False

    def feed(self, data, start=0):
        return len(data) - start


def request_body(head):
    if head.chunked:
        return ChunkedBody()
    return LengthBody(head.content_length or 0)


def response_body(head, method):
    """RFC 9112 section 6.3: which framing the response to ``method`` has."""
    if method == "HEAD" or head.status in (204, 304) or head.status < 200:
        return LengthBody(0)
    if head.chunked:
        return ChunkedBody()
    if head.content_length is not None:
        return LengthBody(head.content_length)
    return UntilClose()
