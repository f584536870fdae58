"""The revocation set: CRLs read and their signatures checked with cryptography, against the
configured client CAs (a throwaway PKI from tests/pki.py)."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pki import DAY, NOW, Authority, make_pki

from fastfog.tls import ServerTLS, TLSConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def certificate(path):
    with open(path, "rb") as file:
        return x509.load_pem_x509_certificate(file.read())


def tls_block(pki, cas=("ca",), crls=("ca.crl",)):
    return {"cert_file": pki["proxy"], "key_file": None, "client_ca_files": tuple(pki[name] for name in cas),
            "crl_files": tuple(pki[name] for name in crls)}


def test_crls_in_pem_and_der_revoke_exactly_their_serials(pki):
    for crl_name in ("ca.crl", "ca_crl.der"):
        tls = ServerTLS(tls_block(pki, cas=("ca", "second_ca"), crls=(crl_name,)))
        assert tls.revocations.revoked(certificate(pki["revoked"]))
        for name in ("open", "enforce", "second", "expired"):
            assert not tls.revocations.revoked(certificate(pki[name])), name


def test_a_ca_without_a_crl_is_accepted_with_a_warning(pki):
    tls = ServerTLS(tls_block(pki, cas=("ca", "second_ca")))
    [warning] = tls.warnings
    assert warning == f"tls.client_ca_files: {pki['second_ca']}: no CRL for this CA; " \
                      "its certificates are not checked for revocation"
    assert ServerTLS(tls_block(pki, cas=("ca", "second_ca"), crls=("ca.crl", "second_empty.crl"))).warnings == []


def test_a_stale_crl_still_revokes_and_is_reported(pki):
    tls = ServerTLS(tls_block(pki, crls=("stale.crl",)))
    assert tls.revocations.revoked(certificate(pki["revoked"]))
    assert len(tls.warnings) == 1 and "CRL expired at" in tls.warnings[0]
    assert "its revocations still apply" in tls.warnings[0]
    early = ServerTLS(tls_block(pki, crls=("ca.crl",)), now=NOW - 3 * DAY)
    assert any("CRL not valid before" in warning for warning in early.warnings)
    assert early.revocations.revoked(certificate(pki["revoked"]))


def test_a_crl_whose_signature_does_not_verify_is_refused(pki, tmp_path):
    """A list in the CA's name but signed by another key (the same name, another key): it could
    revoke anyone, or let a revoked client back in by replacing the real one. Refused."""
    impostor = Authority("fastfog test CA")
    (tmp_path / "impostor.crl").write_bytes(impostor.crl([certificate(pki["open"])]).public_bytes(Encoding.PEM))
    with pytest.raises(TLSConfigError) as caught:
        ServerTLS({**tls_block(pki), "crl_files": (str(tmp_path / "impostor.crl"),)})
    assert str(caught.value) == (f"tls.crl_files: {tmp_path / 'impostor.crl'}: its signature does not verify "
                                 "against the client CA CN=fastfog test CA")


def test_a_crl_of_a_ca_that_is_not_configured_is_refused(pki):
    with pytest.raises(TLSConfigError, match=r"second_empty.crl: issued by CN=fastfog second CA, which is not a "
                                             r"configured client CA \(tls.client_ca_files\)"):
        ServerTLS(tls_block(pki, cas=("ca",), crls=("ca.crl", "second_empty.crl")))


def test_same_issuer_name_with_another_key_is_not_this_cas_list(pki, tmp_path):
    """Two configured CAs of one name: the real CA's CRL never revokes the other's client, even
    one with a serial the real CA revoked."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    twin = Authority("fastfog test CA")
    twin_ca = tmp_path / "twin_ca.pem"
    twin_ca.write_bytes(twin.cert.public_bytes(Encoding.PEM))
    revoked = certificate(pki["revoked"])
    key = ec.generate_private_key(ec.SECP256R1())
    same_serial = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twin-client")]))
        .issuer_name(twin.name).public_key(key.public_key()).serial_number(revoked.serial_number)
        .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(twin.key.public_key()), critical=False)
        .sign(twin.key, hashes.SHA256()))
    tls = ServerTLS({**tls_block(pki), "client_ca_files": (pki["ca"], str(twin_ca))})
    assert tls.revocations.revoked(revoked)
    assert not tls.revocations.revoked(same_serial)


def test_bad_files_name_the_key_and_the_file(pki, tmp_path):
    junk = tmp_path / "junk.crl"
    junk.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(TLSConfigError, match=f"tls.crl_files: {junk}: not a CRL"):
        ServerTLS({**tls_block(pki), "crl_files": (str(junk),)})
    with pytest.raises(TLSConfigError, match="tls.crl_files: .*missing.crl: No such file"):
        ServerTLS({**tls_block(pki), "crl_files": (str(tmp_path / "missing.crl"),)})
    with pytest.raises(TLSConfigError, match="tls.crl_files: .*: not a CRL: no X509 CRL block"):
        ServerTLS({**tls_block(pki), "crl_files": (pki["ca"],)})


class FinishedHandshake:
    """What ServerTLS.client_certificate reads of a socket whose handshake is done; counts the
    decodings (getpeercert() without binary_form)."""

    def __init__(self, der):
        self.der, self.decoded = der, 0

    def getpeercert(self, binary_form=False):
        if binary_form:
            return self.der
        self.decoded += 1
        return {"subject": ((("commonName", "client"),),), "decoded": self.decoded}


def der(path):
    return certificate(path).public_bytes(Encoding.DER)


def test_a_client_certificate_is_checked_and_decoded_once_per_revocation_set(pki):
    tls = ServerTLS(tls_block(pki))
    first, again = FinishedHandshake(der(pki["open"])), FinishedHandshake(der(pki["open"]))
    revoked, seen = tls.client_certificate(first)
    assert (revoked, seen["decoded"]) == (False, 1)
    assert tls.client_certificate(again) == (False, seen) and again.decoded == 0  # remembered
    assert tls.client_certificate(FinishedHandshake(der(pki["revoked"]))) == (True, None)
    assert tls.client_certificate(FinishedHandshake(None)) == (False, None)  # no certificate sent
    reloaded = ServerTLS(tls_block(pki, crls=()))  # a reload: another revocation set, nothing remembered
    assert reloaded.client_certificate(FinishedHandshake(der(pki["revoked"])))[0] is False
    assert reloaded.client_certificate(again)[1]["decoded"] == 1


def test_an_unreadable_certificate_is_refused_and_not_remembered(pki):
    tls = ServerTLS(tls_block(pki))
    with pytest.raises(ValueError):
        tls.client_certificate(FinishedHandshake(b"\x30\x03\x02\x01\x00"))
    assert len(tls._known) == 0


def test_the_memory_of_client_certificates_is_bounded(pki):
    tls = ServerTLS(tls_block(pki))
    tls.KNOWN_CLIENTS = 2
    for name in ("open", "enforce", "second"):
        tls.client_certificate(FinishedHandshake(der(pki[name])))
    assert len(tls._known) == 1  # full at the third: forgotten, then the third remembered
