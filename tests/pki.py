"""Test PKI, made with ``cryptography``: CAs, a proxy certificate, client certificates, CRLs.

- ``ca``: issues the proxy's certificate and most clients; its CRL revokes ``revoked``;
- ``second_ca``: a configured CA without a CRL (its clients are accepted, with a warning);
- ``stranger_ca``: not configured anywhere (its clients fail the handshake).
"""

import datetime

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
            import ipaddress

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


def make_pki(folder, proxy_names=("proxy.test",), proxy_ips=()):
    """Write everything under ``folder``; {name: path}: PEM files by name without ``.pem`` (a
    client's holds its certificate and key), CRLs by file name (ca.crl, ca_crl.der, stale.crl,
    second_empty.crl)."""
    ca, second, stranger = Authority("fastfog test CA"), Authority("fastfog second CA"), Authority("stranger CA")
    paths = {}

    def write(name, data):
        path = folder / name
        path.write_bytes(data)
        paths[name[:-4] if name.endswith(".pem") else name] = str(path)

    write("ca.pem", pem(ca.cert))
    write("second_ca.pem", pem(second.cert))
    write("stranger_ca.pem", pem(stranger.cert))
    key, cert = ca.issue("fastfog proxy", server_names=proxy_names, server_ips=proxy_ips)
    write("proxy.pem", pem(cert) + key_pem(key))
    clients = {
        "open": (ca, "open-client", "payments.webhooks"),
        "report": (ca, "report-client", None),
        "enforce": (ca, "enforce-client", "billing"),
        "revoked": (ca, "enforce-client", None),
        "second": (second, "enforce-client", None),
        "stranger": (stranger, "enforce-client", None),
        "expired": (ca, "enforce-client", None),
    }
    revoked = []
    for name, (authority, cn, ou) in clients.items():
        dates = {"not_before": NOW - 10 * DAY, "not_after": NOW - DAY} if name == "expired" else {}
        key, cert = authority.issue(cn, ou, **dates)
        write(f"{name}.pem", pem(cert) + key_pem(key))
        if name == "revoked":
            revoked.append(cert)
    crl = ca.crl(revoked)
    write("ca.crl", crl.public_bytes(serialization.Encoding.PEM))
    write("ca_crl.der", crl.public_bytes(serialization.Encoding.DER))
    write("stale.crl", ca.crl(revoked, this_update=NOW - 10 * DAY, next_update=NOW - DAY)
          .public_bytes(serialization.Encoding.PEM))
    write("second_empty.crl", second.crl().public_bytes(serialization.Encoding.PEM))
    paths["authorities"] = {"ca": ca, "second": second, "stranger": stranger}
    return paths
