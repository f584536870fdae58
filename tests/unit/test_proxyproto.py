"""PROXY protocol header parsing: v1, v2, no header, malformed; any input is safe."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfog import proxyproto
from fastfog.proxyproto import V2_SIGNATURE, parse

V4 = st.ip_addresses(v=4)
V6 = st.ip_addresses(v=6)
PORTS = st.integers(0, 65535)


def v2(command, family, payload):
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


@given(st.one_of(st.tuples(st.just("TCP4"), V4, V4), st.tuples(st.just("TCP6"), V6, V6)), PORTS, PORTS,
       st.binary(max_size=20))
def test_v1_carries_the_source(addresses, source_port, destination_port, rest):
    family, source, destination = addresses
    header = f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()
    assert parse(header + rest) == (len(header), (str(source), source_port))
    for cut in range(len(header)):
        assert parse(header[:cut]) is None


@given(st.one_of(st.tuples(st.just(0x11), V4, V4), st.tuples(st.just(0x21), V6, V6)), PORTS, PORTS,
       st.binary(max_size=40), st.binary(max_size=20))
def test_v2_carries_the_source_and_skips_tlvs(addresses, source_port, destination_port, tlvs, rest):
    family, source, destination = addresses
    header = v2(1, family, source.packed + destination.packed + struct.pack("!HH", source_port, destination_port)
                + tlvs)
    assert parse(header + rest) == (len(header), (str(source), source_port))
    for cut in range(len(header)):
        assert parse(header[:cut]) is None


def test_headers_without_a_usable_address():
    assert parse(b"PROXY UNKNOWN\r\nGET") == (15, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == (35, None)
    assert parse(v2(0, 0x00, b"")) == (16, None)  # LOCAL
    assert parse(v2(0, 0x11, bytes(12))) == (28, None)  # LOCAL with addresses: still the balancer's own
    assert parse(v2(1, 0x31, bytes(216))) == (232, None)  # a unix socket source
    assert parse(v2(1, 0x12, bytes(12))) == (28, None)  # UDP


@pytest.mark.parametrize("data", [b"CONNECT example.com:443 HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1",
                                  b"PROXZ", b"\r\n\r\nX"])
def test_no_header(data):
    assert parse(data) == (0, None)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", b"PROXY TCP4 1.2.3.4 ::1 80 443\r\n", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
    b"PROXY TCP4 1.2.3.999 5.6.7.8 1 1\r\n", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n", b"PROXY " + b"x" * 101,
    v2(2, 0x11, bytes(12)), V2_SIGNATURE + b"\x11\x11\x00\x00", v2(1, 0x11, bytes(11)),
])
def test_malformed_headers(data):
    with pytest.raises(ValueError):
        parse(data)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_value_error(data):
    for candidate in (data, b"PROXY " + data, V2_SIGNATURE + data):
        try:
            found = parse(candidate)
        except ValueError:
            continue
        assert found is None or (0 <= found[0] <= len(candidate))


def test_a_v1_header_is_at_most_107_bytes():
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()  # the protocol's own worst case
    assert len(longest) == proxyproto.V1_MAX
    assert parse(longest) == (107, None)
    assert parse(f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()) == (104, (full, 65535))
    with pytest.raises(ValueError):
        parse(longest[:-2] + b"xx\r\n")
