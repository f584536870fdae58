"""Test PKI (see fastfog.bench.pki): CAs, a proxy certificate, client certificates, CRLs.

- ``ca``: issues the proxy's certificate and most clients; its CRL revokes ``revoked``;
- ``second_ca``: a configured CA without a CRL (its clients are accepted, with a warning);
- ``stranger_ca``: not configured anywhere (its clients fail the handshake).
"""

from cryptography.hazmat.primitives import serialization

from fastfog.bench.pki import DAY, NOW, Authority, key_pem, pem  # noqa: F401 (re-exported for the tests)


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
