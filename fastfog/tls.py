"""The mTLS listener's TLS: the server context, client CAs, and the revocation set.

As Smokescreen does:

- client certificates are optional at the handshake (``CERT_OPTIONAL``): a
  client without one connects and has no role; one that presents a
  certificate not signed by a configured CA fails the handshake;
- the role is the certificate's Subject CN;
- a certificate whose serial is listed in a CRL of its issuer is rejected; a
  CA with no CRL is accepted, with a warning at start-up.

OpenSSL's own CRL checking would fail every client of a CA without a CRL, so
revocation is checked right after the handshake against a ``Revocations`` set
built from the CRL files, read with ``cryptography`` (PEM, several to a file,
or DER). Each CRL's signature must verify against the configured client CA
that issued it: one that does not (or whose issuer is no configured CA) is
refused at start-up and on reload, with the file named. A CRL past its
nextUpdate (or before its thisUpdate) still revokes what it lists, with a
warning at load: a stale list never un-revokes anyone, and refusing every
client because a CRL went stale would turn a missed CRL refresh into an
outage.

``ServerTLS`` is replaced whole on reload; the listener reads the current one
for each new connection, so open connections keep theirs.
"""

import datetime
import errno
import re
import socket
import ssl

from cryptography import x509

from fastfog import sockio
from fastfog.hotpaths import Deadline

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", re.S)


class TLSConfigError(ValueError):
    """A TLS file that cannot be used; the message names the key and the file."""


class ClientTLSSocket(ssl.SSLSocket):
    """A non-blocking TLS socket that signals "not now" as a plain socket does.

    The proxy's socket code waits for readiness when ``recv``/``send`` raise
    BlockingIOError; OpenSSL's want-read and want-write become exactly that, so
    head reading, forwarding and final answers work the same over TLS. Reads
    are at least one TLS record (16 KiB) long everywhere in fastfog, so no
    decrypted bytes are left inside OpenSSL when the socket reads as idle.
    """

    def recv(self, size=1024, flags=0):
        try:
            return super().recv(size, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError(errno.EAGAIN, "TLS record not complete yet") from None
        except ssl.SSLZeroReturnError:  # the peer's close_notify after ours (the other way ended first)
            return b""

    def send(self, data, flags=0):
        try:
            return super().send(data, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError(errno.EAGAIN, "TLS send buffer full") from None

    def shutdown(self, how):
        """Half-close: send close_notify (when the socket takes it at once), then shut the TCP side
        down, keeping the TLS session to read what the client still sends (ssl.SSLSocket's own
        shutdown would drop it and hand out raw ciphertext from then on)."""
        if self._sslobj is not None:
            try:
                self._sslobj.shutdown()
            except (ssl.SSLError, OSError):
                pass  # want-read (the peer's close_notify) or a peer already gone
        socket.socket.shutdown(self, how)


class SocketTransport:
    """An asyncio transport's face on a non-blocking socket-like object (a ClientTLSSocket), so a
    TLS client can be one leg of a BufferedRelay (a tunnel through an upstream proxy): reads on
    loop callbacks into the protocol, buffered writes with high and low water marks (the protocol
    is asked to pause above one and to resume below the other), close after flushing, abort.
    TLS cannot half-close, so ``can_write_eof`` is False."""

    HIGH_WATER, LOW_WATER = 256 * 1024, 64 * 1024
    READ_SIZE = 65536  # at least a TLS record: nothing stays decrypted inside OpenSSL between events

    def __init__(self, loop, sock, protocol):
        self._loop, self._sock, self._fd, self._protocol = loop, sock, sock.fileno(), protocol
        self._buffer = bytearray()
        self._reading = self._writing = self._paused = self._closing = self._lost = False

    def start(self):
        self._protocol.connection_made(self)
        self.resume_reading()

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self):
        return self._closing or self._lost

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError("TLS cannot half-close")

    def pause_reading(self):
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self):
        if not self._reading and not self._closing and not self._lost:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self):
        try:
            data = self._sock.recv(self.READ_SIZE)
        except BlockingIOError:
            return
        except OSError as err:
            self._lose(err)
            return
        if not data:
            self.pause_reading()
            if not self._protocol.eof_received():
                self.close()
            return
        self._protocol.data_received(data)

    def write(self, data):
        if self._closing or self._lost or not data:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                self._lose(err)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._buffer += data
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
        if not self._paused and len(self._buffer) > self.HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def _on_writable(self):
        try:
            sent = self._sock.send(self._buffer)  # the same bytes again after a partial TLS write
        except BlockingIOError:
            return
        except OSError as err:
            self._lose(err)
            return
        del self._buffer[:sent]
        if self._paused and len(self._buffer) <= self.LOW_WATER:
            self._paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._writing = False
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._lose(None)

    def close(self):
        """Close once what is buffered is written."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.pause_reading()
        if not self._buffer:
            self._lose(None)

    def abort(self):
        self._lose(None)

    def _lose(self, exc):
        if self._lost:
            return
        self._lost = True
        self.pause_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)


class OriginHandshake:
    """TLS from fastfog to an intercepted request's origin, over the Upstream it dialed: verified
    against the system's roots (or SSL_CERT_FILE) and ``host``, driven by loop callbacks, bounded
    by connect_timeout. Then ``ready()`` (the Upstream's socket and watch are the TLS ones), or
    ``failed(reason)``."""

    __slots__ = ("proxy", "upstream", "host", "ready", "failed", "sock", "watch", "deadline")

    def __init__(self, proxy, upstream, host, ready, failed):
        self.proxy, self.upstream, self.host, self.ready, self.failed = proxy, upstream, host, ready, failed
        self.sock = self.watch = None
        self.deadline = Deadline(proxy.loop)

    def start(self):
        upstream, loop = self.upstream, self.proxy.loop
        if upstream.watch is not None:  # the plain socket's edge registration
            upstream.watch.forget()
            upstream.watch = None
        try:
            self.sock = upstream.sock = self.proxy.origin_tls().wrap_socket(
                upstream.sock, server_hostname=self.host, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError, ValueError) as err:
            self.failed(getattr(err, "reason", None) or str(err))
            return
        self.watch = sockio.LevelWatch(loop, self.sock.fileno())
        self.deadline.set(self.proxy.config.connect_timeout, self._timed_out)  # (0: none)
        self._step()

    def _step(self):
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.watch.wait_read(self._step)
            return
        except ssl.SSLWantWriteError:
            self.watch.wait_write(self._step)
            return
        except ssl.SSLCertVerificationError as err:
            self._end()
            self.failed(f"certificate verify failed: {err.verify_message}")
            return
        except (ssl.SSLError, OSError) as err:
            self._end()
            self.failed(getattr(err, "reason", None) or str(err))
            return
        self._end()
        self.upstream.watch = self.watch
        self.ready()

    def _timed_out(self):
        self.watch.cancel()
        self.failed("handshake timed out")

    def _end(self):
        self.watch.cancel()
        self.deadline.cancel()


def _extension(certificate, kind):
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def key_ids(certificate):
    """(its own key id, its issuer's key id) of a certificate, each None when it carries none."""
    own, issuer = _extension(certificate, x509.SubjectKeyIdentifier), \
        _extension(certificate, x509.AuthorityKeyIdentifier)
    return (own.digest if own is not None else None), (issuer.key_identifier if issuer is not None else None)


class Revocations:
    """Revoked serials by issuer, from CRLs whose signatures were checked; ``revoked(certificate)``
    (a cryptography certificate) after each handshake."""

    def __init__(self, lists=()):
        """``lists``: (the CA that signed it, the CRL) pairs."""
        self._by_issuer = {}
        for ca, crl in lists:
            serials = frozenset(entry.serial_number for entry in crl)
            self._by_issuer.setdefault(crl.issuer, []).append((key_ids(ca)[0], serials))

    def issuers(self):
        return set(self._by_issuer)

    def revoked(self, certificate):
        """True when a CRL of the certificate's issuer (the same key, when both name one) lists
        its serial."""
        lists = self._by_issuer.get(certificate.issuer)
        if not lists:
            return False
        issuer_key = key_ids(certificate)[1]
        for ca_key, serials in lists:
            if ca_key and issuer_key and ca_key != issuer_key:
                continue  # the same name, another key: not this CA's list
            if certificate.serial_number in serials:
                return True
        return False


def read_file(path, where, error):
    """The bytes of a certificate, key or CRL file; ``error("<where>: <path>: <reason>")`` if it
    cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        raise error(f"{where}: {path}: {err.strerror or err}") from None


def _read(path, key):
    return read_file(path, f"tls.{key}", TLSConfigError)


def read_crls(paths):
    """Every CRL in the files (PEM, several per file allowed, or DER): [(path, crl)]."""
    lists = []
    for path in paths:
        data = _read(path, "crl_files")
        try:
            if b"-----BEGIN" in data:
                blocks = _PEM_CRL.findall(data)
                if not blocks:
                    raise ValueError("no X509 CRL block in the file")
                lists += [(path, x509.load_pem_x509_crl(block)) for block in blocks]
            else:
                lists.append((path, x509.load_der_x509_crl(data)))
        except ValueError as err:
            raise TLSConfigError(f"tls.crl_files: {path}: not a CRL: {err}") from None
    return lists


def read_cas(paths):
    """The CA certificates in the client CA files: [(path, certificate)]."""
    cas = []
    for path in paths:
        data = _read(path, "client_ca_files")
        try:
            cas += [(path, certificate) for certificate in x509.load_pem_x509_certificates(data)]
        except ValueError as err:
            raise TLSConfigError(f"tls.client_ca_files: {path}: {err}") from None
    return cas


def signed_crls(crls, cas):
    """Each CRL with the configured CA whose key signed it: [(ca, crl)]; TLSConfigError naming the
    file for a CRL that no configured CA issued, or whose signature does not verify."""
    signed = []
    for path, crl in crls:
        issuers = [ca for _, ca in cas if ca.subject == crl.issuer]
        if not issuers:
            raise TLSConfigError(f"tls.crl_files: {path}: issued by {crl.issuer.rfc4514_string()}, which is not "
                                 "a configured client CA (tls.client_ca_files)")
        signer = next((ca for ca in issuers if crl.is_signature_valid(ca.public_key())), None)
        if signer is None:
            raise TLSConfigError(f"tls.crl_files: {path}: its signature does not verify against the client CA "
                                 f"{crl.issuer.rfc4514_string()}")
        signed.append((signer, crl))
    return signed


class ServerTLS:
    """The listener's SSLContext and revocation set, built from the ``tls`` config block.

    ``warnings``: what start-up should log (CAs without a CRL, CRLs out of their validity).
    """

    KNOWN_CLIENTS = 4096  # client certificates remembered (see client_certificate); then forgotten all at once

    def __init__(self, tls, now=None):
        self._known = {}
        self.context = context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION
        # A client's TCP end without close_notify is an end of its stream, as Go's TLS takes one at
        # a record boundary, not a fatal error: OpenSSL 3 would answer it with a decode_error alert
        # and refuse to write the rest of the other way (a tunnel's answer after the client's half-close).
        context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
        context.sslsocket_class = ClientTLSSocket
        cert_file, key_file = tls["cert_file"], tls["key_file"] or tls["cert_file"]
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as err:
            raise TLSConfigError(f"tls.cert_file: {cert_file}: {getattr(err, 'strerror', None) or err}") from None
        ca_files = tuple(tls["client_ca_files"] or ())
        for path in ca_files:
            try:
                context.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as err:
                raise TLSConfigError(f"tls.client_ca_files: {path}: {getattr(err, 'strerror', None) or err}") \
                    from None
        self.verifies_clients = bool(ca_files)
        context.verify_mode = ssl.CERT_OPTIONAL if ca_files else ssl.CERT_NONE
        crls, cas = read_crls(tls["crl_files"] or ()), read_cas(ca_files)
        self.revocations = Revocations(signed_crls(crls, cas))
        self.warnings = []
        now = now or datetime.datetime.now(datetime.timezone.utc)
        for path, crl in crls:
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                self.warnings.append(f"tls.crl_files: {path}: CRL expired at "
                                     f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; its revocations still apply")
            if crl.last_update_utc > now:
                self.warnings.append(f"tls.crl_files: {path}: CRL not valid before "
                                     f"{crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}; its revocations apply already")
        covered = self.revocations.issuers()
        for path, ca in cas:
            if ca.subject not in covered:
                self.warnings.append(f"tls.client_ca_files: {path}: no CRL for this CA; "
                                     "its certificates are not checked for revocation")


    def client_certificate(self, sock):
        """(revoked, the certificate as ``getpeercert()`` gives it) for the client certificate of
        ``sock``'s finished handshake: (False, None) without one; ValueError for one that
        cryptography cannot read. Remembered by its DER bytes: the same clients come back (a
        resumed session carries the same certificate), and the answer depends only on the
        certificate and this revocation set, which a reload replaces along with this object. The
        certificate's dict is shared by its connections, read-only."""
        der = sock.getpeercert(binary_form=True)
        if der is None:
            return False, None
        known = self._known.get(der)
        if known is None:
            if self.revocations.revoked(x509.load_der_x509_certificate(der)):
                known = (True, None)
            else:
                known = (False, sock.getpeercert())
            if len(self._known) >= self.KNOWN_CLIENTS:
                self._known.clear()
            self._known[der] = known
        return known


def subject_fields(peer_certificate, name):
    """The values of attribute ``name`` (e.g. "commonName") in a getpeercert() subject."""
    return [value for rdn in peer_certificate.get("subject", ()) for key, value in rdn if key == name]
