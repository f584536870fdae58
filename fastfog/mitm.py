"""Per-domain TLS interception, Smokescreen's ``mitm_domains``: the MITM CA and what it mints.

A CONNECT allowed through a rule's ``mitm_domains`` entry is answered 200, then
fastfog completes TLS with the client itself, presenting a leaf certificate for
the CONNECT host signed by the MITM CA (``mitm_ca_cert_file`` and
``mitm_ca_key_file``), and forwards each HTTP/1.1 request inside to the origin
over a TLS connection of its own, verified against the system's roots (or
``SSL_CERT_FILE``) and the requested name (see proxy.py).

Leaves are ECDSA P-256, valid for ``LEAF_LIFETIME`` (backdated an hour for
clock skew), with the host as their only subject alternative name (an IP
address for an IP-literal host). Each host's server context (leaf, key, the CA
as chain, ALPN ``http/1.1`` only, so that HTTP/2 clients fall back cleanly) is
made once and cached, at most ``MAX_CACHED`` hosts, until a quarter of its
lifetime is left. Minting costs about a millisecond (``benchmarks/test_mitm.py``);
a cached context, a dictionary look-up.

``cryptography`` signs; Python's ``ssl`` loads a chain only from a file, so
each leaf goes through an anonymous in-memory file (``memfd_create``), never
the disk.
"""

import datetime
import ipaddress
import os
import ssl
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastfog.tls import ClientTLSSocket, read_file

LEAF_LIFETIME = datetime.timedelta(days=2)
BACKDATE = datetime.timedelta(hours=1)
MAX_CACHED = 4096
REDACTED = "[REDACTED]"


class MitmError(ValueError):
    """A MITM CA that cannot be used; the message names the key, the file and why."""


class MitmAuthority:
    """The MITM CA, and the server contexts of the hosts it has minted leaves for."""

    def __init__(self, cert_file, key_file):
        cert_pem = read_file(cert_file, "mitm_ca_cert_file", MitmError)
        key_pem = read_file(key_file, "mitm_ca_key_file", MitmError)
        try:
            self.cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as err:
            raise MitmError(f"mitm_ca_cert_file: {cert_file}: not a PEM certificate: {err}") from None
        try:
            self.key = serialization.load_pem_private_key(key_pem, None)
        except (ValueError, TypeError) as err:
            raise MitmError(f"mitm_ca_key_file: {key_file}: not an unencrypted PEM private key: {err}") from None
        if self.key.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo) != \
                self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo):
            raise MitmError(f"mitm_ca_key_file: {key_file}: not the key of {cert_file}")
        constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value \
            if _has(self.cert, x509.BasicConstraints) else None
        if constraints is None or not constraints.ca:
            raise MitmError(f"mitm_ca_cert_file: {cert_file}: not a CA certificate (basicConstraints CA:TRUE)")
        self._digest = None if isinstance(self.key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) \
            else hashes.SHA256()
        self._chain = self.cert.public_bytes(serialization.Encoding.PEM)
        self._contexts = {}  # host -> (context, renew after: time.time())
        self.minted = 0

    def context_for(self, host):
        """The server context presenting a leaf for ``host`` (canonical: lowercase, no brackets)."""
        cached = self._contexts.get(host)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        context, renew = self._mint(host)
        if len(self._contexts) >= MAX_CACHED:
            del self._contexts[next(iter(self._contexts))]  # the oldest
        self._contexts[host] = (context, renew)
        return context

    def _mint(self, host):
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, self._digest)
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION
        context.set_alpn_protocols(["http/1.1"])
        context.sslsocket_class = ClientTLSSocket
        context.sni_callback = _note_server_name
        pem = (leaf.public_bytes(serialization.Encoding.PEM) + self._chain +
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()))
        fd = os.memfd_create("fastfog-mitm-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self.minted += 1
        return context, time.time() + LEAF_LIFETIME.total_seconds() * 3 / 4


def _note_server_name(sock, server_name, context):
    """The ClientHello's server name, kept on the socket for the SNI check after the handshake."""
    sock.server_name_received = server_name


def _has(certificate, kind):
    try:
        certificate.extensions.get_extension_for_class(kind)
        return True
    except x509.ExtensionNotFound:
        return False


def origin_context():
    """How an intercepted request's origin is reached: TLS verified against the system's roots
    (or SSL_CERT_FILE) and the requested name, HTTP/1.1."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def logged_headers(headers, full_headers):
    """A request's headers for ``mitm_req_headers``: {name: [values]}, every value redacted but
    those of the names in ``full_headers`` (lowercase)."""
    found = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1") if name.lower() in full_headers else REDACTED
        found.setdefault(name, []).append(value)
    return found


class Interception:
    """An intercepted tunnel, as its requests see it: the CONNECT's role (never derived again
    from inside the tunnel), host and port, its decision's MitmDomain, and its CONNECT's id."""

    __slots__ = ("role", "host", "port", "authority", "domain", "connect_id")

    def __init__(self, role, host, port, authority, domain, connect_id):
        self.role, self.host, self.port, self.authority = role, host, port, authority
        self.domain, self.connect_id = domain, connect_id


class InterceptedHead:
    """A request read inside an intercepted tunnel, as one to forward: an origin-form request
    goes to the CONNECT's host and port (an absolute-form one names its own), over https."""

    __slots__ = ("method", "target", "version", "headers", "form", "scheme", "host", "port", "authority", "path",
                 "content_length", "chunked", "keep_alive", "header")

    def __init__(self, head, interception):
        self.method, self.target, self.version, self.headers = head.method, head.target, head.version, head.headers
        self.header = head.header
        self.content_length, self.chunked, self.keep_alive = head.content_length, head.chunked, head.keep_alive
        self.form, self.scheme = "absolute", "https"
        if head.form == "absolute":
            self.host, self.port, self.authority, self.path = head.host, head.port, head.authority, head.path
        else:
            self.host, self.port = interception.host, interception.port
            self.authority, self.path = interception.authority, head.path

    @property
    def url(self):
        return f"https://{self.authority}{self.path}"
