"""Just enough DER to check revocation: certificates' serials, issuers and key ids, and CRLs.

OpenSSL verifies client certificates during the handshake; what it cannot do
is Smokescreen's rule that a CA without a CRL is accepted (its CRL flags fail
every such client). So revocation is checked after the handshake, against the
serials read here. Every structure is read with bounds checks; anything
malformed raises ValueError, never anything else.
"""

import base64
import binascii
import datetime
import re

SEQUENCE, INTEGER, OCTET_STRING, UTC_TIME, GENERALIZED_TIME = 0x30, 0x02, 0x04, 0x17, 0x18
EXPLICIT_0, EXPLICIT_3 = 0xA0, 0xA3
AUTHORITY_KEY_ID = bytes.fromhex("551d23")  # 2.5.29.35
SUBJECT_KEY_ID = bytes.fromhex("551d0e")  # 2.5.29.14
OBJECT_IDENTIFIER = 0x06
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def read(data, offset=0):
    """The element at ``offset``: (tag, content start, content end)."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used in certificates")
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element runs past its container")
    return tag, start, end


def children(data, start, end):
    """The elements inside [start, end): a list of (tag, start, end)."""
    found = []
    while start < end:
        element = read(data[:end], start)
        found.append(element)
        start = element[2]
    return found


def _expect(element, tag, what):
    if element[0] != tag:
        raise ValueError(f"{what}: unexpected DER tag 0x{element[0]:02x}")
    return element


def _integer(data, element):
    _, start, end = _expect(element, INTEGER, "serial number")
    return int.from_bytes(data[start:end], "big", signed=True)


def _time(data, element):
    tag, start, end = element
    text = bytes(data[start:end]).decode("ascii", "replace")
    if tag == UTC_TIME and len(text) == 13:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != GENERALIZED_TIME or len(text) != 15:
        raise ValueError("unsupported time encoding")
    try:
        return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ValueError(f"bad time {text!r}") from None


def _extensions(data, start, end):
    """{oid DER bytes: extension value bytes} of an Extensions SEQUENCE."""
    found = {}
    for _, ext_start, ext_end in children(data, start, end):
        parts = children(data, ext_start, ext_end)
        if len(parts) < 2:
            raise ValueError("bad extension")
        oid = _expect(parts[0], OBJECT_IDENTIFIER, "extension id")
        value = _expect(parts[-1], OCTET_STRING, "extension value")
        found[bytes(data[oid[1]:oid[2]])] = bytes(data[value[1]:value[2]])
    return found


def _authority_key_id(extensions):
    value = extensions.get(AUTHORITY_KEY_ID)
    if value is None:
        return None
    _, start, end = _expect(read(value), SEQUENCE, "authority key identifier")
    for tag, id_start, id_end in children(value, start, end):
        if tag == 0x80:  # [0] IMPLICIT keyIdentifier
            return bytes(value[id_start:id_end])
    return None


def _signed_body(der, what, version_tag):
    """The fields of a signed structure's body (certificate or CRL), its version left out."""
    _, start, _ = _expect(read(der), SEQUENCE, what)
    body = _expect(read(der, start), SEQUENCE, f"{what} body")
    fields = children(der, body[1], body[2])
    if fields and fields[0][0] == version_tag:
        fields = fields[1:]
    return fields


def _name(der, field, what):
    """A Name's DER content (the bytes issuer and subject are compared by)."""
    _, start, end = _expect(field, SEQUENCE, what)
    return bytes(der[start:end])


def _explicit_extensions(der, start, end, what):
    """{oid: value} of an explicitly tagged Extensions sequence whose tag's content is der[start:end]."""
    _, inner_start, inner_end = _expect(read(der[:end], start), SEQUENCE, what)
    return _extensions(der, inner_start, inner_end)


class Certificate:
    """What revocation needs of an X.509 certificate: serial, issuer (DER), key ids, subject (DER)."""

    __slots__ = ("serial", "issuer", "subject", "authority_key_id", "subject_key_id")

    def __init__(self, der):
        der = memoryview(bytes(der))
        fields = _signed_body(der, "certificate", EXPLICIT_0)
        if len(fields) < 6:
            raise ValueError("certificate body too short")
        self.serial = _integer(der, fields[0])
        self.issuer = _name(der, fields[2], "issuer")
        self.subject = _name(der, fields[4], "subject")
        extensions = {}
        for tag, ext_start, ext_end in fields[6:]:
            if tag == EXPLICIT_3:
                extensions = _explicit_extensions(der, ext_start, ext_end, "extensions")
        self.authority_key_id = _authority_key_id(extensions)
        ski = extensions.get(SUBJECT_KEY_ID)
        if ski is not None:
            _, ski_start, ski_end = _expect(read(ski), OCTET_STRING, "subject key identifier")
            ski = bytes(ski[ski_start:ski_end])
        self.subject_key_id = ski


class RevocationList:
    """An X.509 CRL: its issuer (DER), authority key id, validity and revoked serials."""

    __slots__ = ("issuer", "authority_key_id", "this_update", "next_update", "serials")

    def __init__(self, der):
        der = memoryview(bytes(der))
        fields = _signed_body(der, "CRL", INTEGER)
        if len(fields) < 3:
            raise ValueError("CRL body too short")
        self.issuer = _name(der, fields[1], "CRL issuer")
        self.this_update = _time(der, fields[2])
        rest = fields[3:]
        self.next_update = None
        if rest and rest[0][0] in (UTC_TIME, GENERALIZED_TIME):
            self.next_update = _time(der, rest[0])
            rest = rest[1:]
        self.serials = set()
        self.authority_key_id = None
        for tag, part_start, part_end in rest:
            if tag == SEQUENCE:  # revokedCertificates
                for entry in children(der, part_start, part_end):
                    entry_fields = children(der, entry[1], entry[2])
                    if not entry_fields:
                        raise ValueError("empty revoked certificate entry")
                    self.serials.add(_integer(der, entry_fields[0]))
            elif tag == EXPLICIT_0:  # crlExtensions
                self.authority_key_id = _authority_key_id(
                    _explicit_extensions(der, part_start, part_end, "CRL extensions"))


def pem_blocks(data, label):
    """The DER bodies of every ``-----BEGIN label-----`` block in ``data``."""
    found = []
    for kind, body in _PEM.findall(data):
        if kind.decode() == label:
            try:
                found.append(base64.b64decode(body, validate=False))
            except binascii.Error:
                raise ValueError(f"bad base64 in a {label} block") from None
    return found
