"""The ClientHello SNI reader: core against reference on any bytes, and real ClientHellos from ssl."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import IMPLEMENTATIONS, client_hello, needs_core

from fastfog.reference.clienthello import client_hello_sni as reference

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20).filter(
    lambda label: not label.startswith("-") and not label.endswith("-"))
# A name whose last label has a letter: ssl sends no SNI for what parses as an IP address.
HOSTNAMES = st.lists(LABEL, min_size=2, max_size=5).map(".".join).filter(
    lambda name: any(c.isalpha() for c in name.rsplit(".", 1)[1]))


def records(handshake, sizes):
    """A handshake message framed as TLS records of the given payload sizes (the rest in one)."""
    out, at = b"", 0
    for size in sizes:
        if at >= len(handshake):
            break
        piece = handshake[at:at + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(piece)) + piece
        at += len(piece)
    if at < len(handshake):
        out += b"\x16\x03\x01" + struct.pack("!H", len(handshake) - at) + handshake[at:]
    return out


def hello(extensions, session=b"", suites=b"\x13\x01", methods=b"\x00", with_extensions=True):
    body = b"\x03\x03" + bytes(32) + bytes([len(session)]) + session + struct.pack("!H", len(suites)) + suites
    body += bytes([len(methods)]) + methods
    if with_extensions:
        blob = b"".join(struct.pack("!HH", kind, len(data)) + data for kind, data in extensions)
        body += struct.pack("!H", len(blob)) + blob
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni(*names, kind=0):
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(name)) + name for name in names)
    return 0, struct.pack("!H", len(entries)) + entries


def both(data, **options):
    results = {name: impl.client_hello_sni(data, **options) for name, impl in IMPLEMENTATIONS.items()}
    assert len(set(results.values())) == 1, results
    return results["reference"]


@given(HOSTNAMES)
def test_python_client_hellos_name_their_server(name):
    data = client_hello(name)
    assert both(data) == ("hello", name)


@given(HOSTNAMES, st.lists(st.integers(1, 300), max_size=8))
def test_a_hello_split_across_records_and_segments(name, sizes):
    handshake = client_hello(name)[5:]
    data = records(handshake, sizes)
    assert both(data) == ("hello", name)
    for cut in range(0, len(data), 7):
        assert both(data[:cut]) == ("more", None)


def test_every_truncation_waits_for_more():
    data = client_hello("hooks.example.com")
    for cut in range(len(data)):
        assert both(data[:cut]) == ("more", None)
    assert both(data + b"trailing application data") == ("hello", "hooks.example.com")


def test_no_sni():
    assert both(client_hello(None)) == ("hello", None)
    assert both(records(hello([], with_extensions=False), [])) == ("hello", None)
    assert both(records(hello([(0x000a, b"\x00\x02\x00\x17")]), [])) == ("hello", None)


def test_grease_and_ech_outer_hellos():
    grease = [(0x0a0a, b""), (0x1a1a, b"\x00")]
    data = records(hello(grease + [sni(b"public.example.net"), (0xfe0d, bytes(range(200)))]), [])
    assert both(data) == ("hello", "public.example.net")
    assert both(records(hello([sni(b"first.example", b"second.example")]), [])) == ("hello", "first.example")
    # a server_name list without a host_name, then another: the first host_name found counts
    assert both(records(hello([sni(b"x", kind=1), sni(b"later.example")]), [])) == ("hello", "later.example")


@pytest.mark.parametrize("data, state", [
    (b"GET / HTTP/1.1\r\n", "not-tls"), (b"SSH-2.0-OpenSSH\r\n", "not-tls"), (b"\x16\x02\x01", "not-tls"),
    (b"\x17\x03\x03\x00\x05hello", "not-tls"), (b"", "more"), (b"\x16", "more"), (b"\x16\x03", "more"),
    (b"\x16\x03\x01\x00\x00", "malformed"),  # an empty record
    (b"\x16\x03\x01\xff\xff", "malformed"),  # a record longer than TLS allows
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "malformed"),  # a 16 MiB ClientHello
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x10", "malformed"),  # a ServerHello
])
def test_what_is_not_a_usable_hello(data, state):
    assert both(data)[0] == state


@pytest.mark.parametrize("extensions", [
    [(0, b"\x00\x06\x00\x00\x02ab")],  # list length beyond the extension
    [(0, b"\x00\x05\x00\x00\x05ab")],  # name length beyond the list
    [(0, b"\x00\x03\x00\x00\x00")],  # an empty name
    [(0, b"\x00\x01\x00")],  # an entry cut short
    [sni(b"bad name")],  # not an A-label
    [sni(b"caf\xc3\xa9.example")],
])
def test_broken_server_name_extensions(extensions):
    assert both(records(hello(extensions), [])) == ("malformed", None)


def test_broken_bodies():
    good = hello([sni(b"a.example")])
    assert both(records(hello([sni(b"a.example")], session=bytes(33)), []))[0] == "malformed"
    assert both(records(hello([sni(b"a.example")], suites=b"\x13"), []))[0] == "malformed"
    assert both(records(hello([sni(b"a.example")], methods=b""), []))[0] == "malformed"
    too_long = good[:1] + (len(good) - 4 + 3).to_bytes(3, "big") + good[4:] + b"\x00\x00\x00"
    assert both(records(too_long, []))[0] == "malformed"  # extensions do not fill the body exactly
    assert both(records(good, []), max_size=50) == ("malformed", None)


@needs_core
@given(st.binary(max_size=600))
def test_core_and_reference_agree_on_any_bytes(data):
    for candidate in (data, b"\x16\x03\x01" + data, b"\x16\x03\x01" + struct.pack("!H", len(data)) + data):
        assert IMPLEMENTATIONS["core"].client_hello_sni(candidate) == reference(candidate)


@needs_core
@given(st.binary(max_size=300), st.integers(0, 200))
def test_core_and_reference_agree_on_mutated_hellos(noise, position):
    data = bytearray(client_hello("mutated.example"))
    for index, byte in enumerate(noise[:8]):
        data[(position + index * 37) % len(data)] = byte
    assert IMPLEMENTATIONS["core"].client_hello_sni(bytes(data)) == reference(bytes(data))
