"""The MITM CA: what it accepts, and the leaves it mints (real TLS handshakes over socket pairs)."""

import ipaddress
import socket
import ssl
import threading

import pytest
from cryptography import x509
from pki import Authority, key_pem, pem

from fastfog.mitm import MitmAuthority, MitmError, logged_headers


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mitm-ca")
    ca, other = Authority("unit MITM CA"), Authority("other CA")
    (folder / "ca.pem").write_bytes(pem(ca.cert))
    (folder / "ca.key").write_bytes(key_pem(ca.key))
    (folder / "other.key").write_bytes(key_pem(other.key))
    key, leaf = ca.issue("not-a-ca")
    (folder / "leaf.pem").write_bytes(pem(leaf))
    (folder / "leaf.key").write_bytes(key_pem(key))
    return folder


def handshake(context, host, ca_file):
    """A real handshake over a socket pair: the peer certificate the client saw."""
    server_side, client_side = socket.socketpair()
    client = ssl.create_default_context(cafile=ca_file)
    done = {}

    def serve():
        try:
            with context.wrap_socket(server_side, server_side=True) as tls:
                done["alpn"] = tls.selected_alpn_protocol()
        except (ssl.SSLError, OSError):  # the client refused the certificate
            done["alpn"] = None

    thread = threading.Thread(target=serve)
    thread.start()
    client.set_alpn_protocols(["h2", "http/1.1"])
    with client.wrap_socket(client_side, server_hostname=host) as tls:
        certificate = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    thread.join(5)
    return certificate, done["alpn"]


@pytest.mark.parametrize("host, san", [("partner.example", x509.DNSName("partner.example")),
                                       ("203.0.113.7", x509.IPAddress(ipaddress.ip_address("203.0.113.7"))),
                                       ("2001:db8::7", x509.IPAddress(ipaddress.ip_address("2001:db8::7")))])
def test_a_minted_leaf_verifies_for_its_host_only(ca_files, host, san):
    authority = MitmAuthority(str(ca_files / "ca.pem"), str(ca_files / "ca.key"))
    certificate, alpn = handshake(authority.context_for(host), host, str(ca_files / "ca.pem"))
    assert certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([san])
    assert alpn == "http/1.1"  # HTTP/2 offered, HTTP/1.1 chosen
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.days <= 3
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority.context_for(host), "other.example", str(ca_files / "ca.pem"))


def test_contexts_are_cached_per_host(ca_files):
    authority = MitmAuthority(str(ca_files / "ca.pem"), str(ca_files / "ca.key"))
    first = authority.context_for("a.example")
    assert authority.context_for("a.example") is first and authority.minted == 1
    authority.context_for("b.example")
    assert authority.minted == 2


@pytest.mark.parametrize("cert, key, message", [
    ("ca.pem", "other.key", "mitm_ca_key_file: {dir}/other.key: not the key of {dir}/ca.pem"),
    ("leaf.pem", "leaf.key", "mitm_ca_cert_file: {dir}/leaf.pem: not a CA certificate"),
    ("missing.pem", "ca.key", "mitm_ca_cert_file: {dir}/missing.pem: No such file or directory"),
    ("ca.key", "ca.key", "mitm_ca_cert_file: {dir}/ca.key: not a PEM certificate"),
    ("ca.pem", "ca.pem", "mitm_ca_key_file: {dir}/ca.pem: not an unencrypted PEM private key"),
])
def test_unusable_ca_files_are_refused_with_the_key_and_file(ca_files, cert, key, message):
    with pytest.raises(MitmError) as caught:
        MitmAuthority(str(ca_files / cert), str(ca_files / key))
    assert str(caught.value).startswith(message.format(dir=ca_files))


def test_detailed_logs_redact_every_value_but_the_listed_names():
    headers = [(b"User-Agent", b"sender/1"), (b"Authorization", b"Bearer x"), (b"X-Many", b"1"), (b"x-many", b"2")]
    assert logged_headers(headers, frozenset({"user-agent"})) == {
        "User-Agent": ["sender/1"], "Authorization": ["[REDACTED]"], "X-Many": ["[REDACTED]"],
        "x-many": ["[REDACTED]"]}
