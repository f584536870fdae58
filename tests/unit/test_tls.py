"""The revocation set and the DER reader behind it (certificates and CRLs made with cryptography)."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st
from pki import DAY, NOW, Authority, make_pki

from fastfog import der
from fastfog.tls import ServerTLS, TLSConfigError


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def certificate(path):
    with open(path, "rb") as file:
        return der.Certificate(der.pem_blocks(file.read(), "CERTIFICATE")[0])


def content(element):
    """A DER element's content, without its tag and length (how fastfog.der keeps names)."""
    _, start, end = der.read(element)
    return element[start:end]


def oracle(path):
    with open(path, "rb") as file:
        return x509.load_pem_x509_certificate(file.read())


def tls_block(pki, cas=("ca",), crls=("ca.crl",)):
    return {"cert_file": pki["proxy"], "key_file": None, "client_ca_files": tuple(pki[name] for name in cas),
            "crl_files": tuple(pki[name] for name in crls)}


def test_certificate_fields_match_cryptography(pki):
    for name in ("open", "revoked", "second", "expired"):
        ours, theirs = certificate(pki[name]), oracle(pki[name])
        assert ours.serial == theirs.serial_number
        assert ours.issuer == content(theirs.issuer.public_bytes())
        assert ours.subject == content(theirs.subject.public_bytes())
        aki = theirs.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert ours.authority_key_id == aki
    ca = oracle(pki["ca"])
    assert certificate(pki["ca"]).subject_key_id == \
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


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


def test_same_issuer_name_with_another_key_does_not_revoke(pki, tmp_path):
    impostor = Authority("fastfog test CA")  # the same name, another key
    (tmp_path / "impostor.crl").write_bytes(impostor.crl([oracle(pki["open"])]).public_bytes(Encoding.PEM))
    tls = ServerTLS({**tls_block(pki), "crl_files": (str(tmp_path / "impostor.crl"),)})
    assert not tls.revocations.revoked(certificate(pki["open"]))


def test_bad_files_name_the_key_and_the_file(pki, tmp_path):
    junk = tmp_path / "junk.crl"
    junk.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(TLSConfigError, match=f"tls.crl_files: {junk}: not a CRL"):
        ServerTLS({**tls_block(pki), "crl_files": (str(junk),)})
    with pytest.raises(TLSConfigError, match="tls.crl_files: .*missing.crl: No such file"):
        ServerTLS({**tls_block(pki), "crl_files": (str(tmp_path / "missing.crl"),)})
    with pytest.raises(TLSConfigError, match="tls.crl_files: .*: not a CRL: no X509 CRL block"):
        ServerTLS({**tls_block(pki), "crl_files": (pki["ca"],)})


@given(st.binary(max_size=300))
def test_the_der_reader_only_ever_raises_value_error(data):
    for parse in (der.Certificate, der.RevocationList):
        try:
            parse(data)
        except ValueError:
            pass


def test_every_truncation_of_a_real_crl_and_certificate_is_a_value_error(pki):
    with open(pki["ca_crl.der"], "rb") as file:
        crl = file.read()
    with open(pki["open"], "rb") as file:
        cert = der.pem_blocks(file.read(), "CERTIFICATE")[0]
    for data, parse in ((crl, der.RevocationList), (cert, der.Certificate)):
        parse(data)
        for cut in range(len(data)):
            with pytest.raises(ValueError):
                parse(data[:cut])


def test_utc_and_generalized_times():
    assert der._time(b"\x17\x0d491231235959Z", (0x17, 2, 15)) == datetime.datetime(
        2049, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
    assert der._time(b"500101000000Z", (0x17, 0, 13)).year == 1950
    assert der._time(b"20510101000000Z", (0x18, 0, 15)).year == 2051
