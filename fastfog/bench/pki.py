"""Throwaway certificate authorities, made with ``cryptography``: for ``fastfog bench``'s TLS
workloads (a CA, the proxy's certificate, a client certificate) and for the tests' PKI.

Keys are ECDSA P-256, certificates short-lived; nothing here is meant to outlive a run.
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _name(cn, ou=None):
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attributes)


class Authority:
    def __init__(self, cn):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn, ou=None, server_names=(), server_ips=(), not_before=None, not_after=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn, ou)).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 30 * DAY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if server_names or server_ips:
            names = [x509.DNSName(name) for name in server_names]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def crl(self, revoked=(), this_update=None, next_update=None):
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.name)
            .last_update(this_update or NOW - DAY).next_update(next_update or NOW + 7 * DAY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW - DAY).build())
        return builder.sign(self.key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_bench_pki(folder, proxy_ip):
    """The files a TLS workload needs, under ``folder``: {"ca", "proxy", "client"} paths (the
    proxy's and the client's PEM hold certificate and key)."""
    ca = Authority("fastfog bench CA")
    proxy_key, proxy_cert = ca.issue("fastfog bench proxy", server_ips=(proxy_ip,))
    client_key, client_cert = ca.issue("bench-client")
    paths = {}
    for name, data in (("ca", pem(ca.cert)), ("proxy", pem(proxy_cert) + key_pem(proxy_key)),
                       ("client", pem(client_cert) + key_pem(client_key))):
        path = f"{folder}/{name}.pem"
        with open(path, "wb") as file:
            file.write(data)
        paths[name] = path
    return paths
