"""The SNI check for CONNECT tunnels (``sni_check: report|enforce``, SPEC 5.4).

A client allowed to tunnel to ``hooks.example.com:443`` could send a
ClientHello for another name, and some CDNs and shared front ends route by
SNI: the check closes that hole without decrypting anything. After the 200,
before any byte goes upstream, the client's first bytes are read and, when
they are a TLS ClientHello, its server name (fastfog.hotpaths.client_hello_sni)
is compared with the CONNECT host, case-insensitively and without a trailing
dot. A mismatch, or a ClientHello without SNI when the CONNECT host is a
name, is reported in the decision record (``decision_reason`` and
``tls_sni``); ``enforce`` closes the tunnel before the ClientHello reaches the
upstream, ``report`` lets it through. For an IP-literal CONNECT host only a
ClientHello that names a server is compared.

First bytes that are not TLS pass in ``report``. In ``enforce`` they pass only
to port 80 (plain HTTP through CONNECT is legitimate there, and so is an HTTP
upgrade) and are closed elsewhere. A client that sends nothing for
``WAIT_SECONDS`` (a protocol where the server speaks first) is treated the
same way: let through in ``report`` and to port 80, closed otherwise.
"""

from fastfog import reasons
from fastfog.connection import ClientStep
from fastfog.hotpaths import client_hello_sni

WAIT_SECONDS = 2.0
MAX_HELLO = 65536
READ_SIZE = 65536


def sni_matches(connect_host, server_name, host_is_address):
    """Whether a ClientHello's ``server_name`` (None: no SNI) fits the CONNECT host."""
    if server_name is None:
        return host_is_address
    return server_name.rstrip(".").lower() == connect_host.rstrip(".").lower()


class SniCheck(ClientStep):
    """Reads a new tunnel's first client bytes and decides; then ``done(verdict, data)``.

    ``verdict``: None (let through), or the decision reason to report; ``data``: the bytes
    read, to be sent upstream first. ``enforce`` decides whether a reported tunnel is closed.
    The check owns the client socket until it is done (no relay runs yet).
    """

    __slots__ = ("buffer", "host", "host_is_address", "port", "done", "hello", "server_name", "upstream", "closed")

    def __init__(self, proxy, sock, buffered, host, host_is_address, port, upstream, done):
        """``upstream``: the dialed upstream socket, closed with the client's on shutdown."""
        super().__init__(proxy, sock)
        self.upstream = upstream
        self.buffer = bytearray(buffered)
        self.host, self.host_is_address, self.port, self.done = host, host_is_address, port, done
        self.hello = False  # the first bytes were a whole ClientHello
        self.server_name = None
        self.closed = False

    def start(self):
        self._start(WAIT_SECONDS, self._waited, self._advance)

    def _advance(self):
        found = client_hello_sni(self.buffer, MAX_HELLO) if self.buffer else ("more", None)
        while found[0] == "more":
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                self._read_when_ready(self._advance)
                return
            except OSError:
                data = b""
            if not data:  # the client ended (or broke) before a whole ClientHello: nothing more to see
                found = ("not-tls", None)
                break
            self.buffer += data
            found = client_hello_sni(self.buffer, MAX_HELLO)
        self._decide(*found)

    def _waited(self):
        self._decide("not-tls" if not self.buffer else "malformed", None)

    def _decide(self, state, server_name):
        self._stop()
        if state == "hello":
            self.hello, self.server_name = True, server_name
            verdict = None if sni_matches(self.host, server_name, self.host_is_address) else reasons.SNI_MISMATCH
        else:
            verdict = reasons.SNI_NOT_TLS
        self.done(self, verdict, bytes(self.buffer))

    def enforced(self, verdict):
        """Whether ``verdict`` closes the tunnel under ``enforce``: a mismatch always does; bytes that
        are not TLS do except to port 80."""
        return verdict == reasons.SNI_MISMATCH or (verdict == reasons.SNI_NOT_TLS and self.port != 80)

    def close(self):
        """Shutdown while checking: the tunnel never opens."""
        if not self.closed:
            self.closed = True
            self._stop()
            self.sock.close()
            self.upstream.close()
