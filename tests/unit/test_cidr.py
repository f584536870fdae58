"""The CIDR table, against both implementations and against a list scan over ``ipaddress``."""

import ipaddress

import pytest
from support import IMPLEMENTATIONS, needs_core
from hypothesis import given
from hypothesis import strategies as st

from fastfog import reference


def test_longest_prefix_wins(impl):
    table = impl.CidrTable([("10.0.0.0/8", "outer"), ("10.1.0.0/16", "inner"),
                            ("10.1.2.3", "host"), ("2001:db8::/32", "doc6"), ("2001:db8:1::/48", "doc6-inner")])
    assert table.lookup("10.0.0.0") == "outer"
    assert table.lookup("10.255.255.255") == "outer"
    assert table.lookup("10.0.255.255") == "outer"
    assert table.lookup("10.1.0.0") == "inner"
    assert table.lookup("10.1.255.255") == "inner"
    assert table.lookup("10.2.0.0") == "outer"
    assert table.lookup("10.1.2.3") == "host"
    assert table.lookup("10.1.2.2") == "inner"
    assert table.lookup("10.1.2.4") == "inner"
    assert table.lookup("9.255.255.255") is None
    assert table.lookup("11.0.0.0") is None
    assert table.lookup("2001:db8::") == "doc6"
    assert table.lookup("2001:db8:1:ffff:ffff:ffff:ffff:ffff") == "doc6-inner"
    assert table.lookup("2001:db8:2::") == "doc6"
    assert table.lookup("2001:db9::") is None
    assert table.lookup("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff") is None


def test_default_routes_and_extremes(impl):
    table = impl.CidrTable([("0.0.0.0/0", 4), ("::/0", 6), ("255.255.255.255/32", "top"),
                            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "top6")])
    assert table.lookup("0.0.0.0") == 4
    assert table.lookup("255.255.255.254") == 4
    assert table.lookup("255.255.255.255") == "top"
    assert table.lookup("::") == 6
    assert table.lookup("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe") == 6
    assert table.lookup("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == "top6"


def test_equal_values_merge_only_when_adjacent(impl):
    same = "same"
    table = impl.CidrTable([("192.0.2.0/32", same), ("192.0.2.2/32", same), ("192.0.2.3/32", same),
                            ("2001:db8::/128", same), ("2001:db8::2/127", same)])
    assert [table.lookup(f"192.0.2.{i}") for i in range(5)] == [same, None, same, same, None]
    assert [table.lookup(f"2001:db8::{i}") for i in range(5)] == [same, None, same, same, None]


def test_empty_table_and_default(impl):
    table = impl.CidrTable([])
    assert table.lookup("192.0.2.1") is None
    assert table.lookup("2001:db8::1", default="miss") == "miss"


def test_same_network_twice_keeps_the_last(impl):
    table = impl.CidrTable([("192.0.2.0/24", "first"), ("192.0.2.0/24", "second"),
                            ("192.0.2.9/24", "host bits ignored")])
    assert table.lookup("192.0.2.1") == "host bits ignored"


def test_ports(impl):
    table = impl.CidrTable([("198.51.100.0/24", "range"), ("198.51.100.7", "any port"),
                            ("198.51.100.7", "port 80", 80), ("2001:db8::7", "v6 port 443", 443),
                            ("::ffff:198.51.100.8", "mapped port", 22)])
    assert table.lookup("198.51.100.7") == "any port"
    assert table.lookup("198.51.100.7", 80) == "port 80"
    assert table.lookup("198.51.100.7", 81) == "any port"
    assert table.lookup("198.51.100.6", 80) == "range"
    assert table.lookup("2001:db8::7", 443) == "v6 port 443"
    assert table.lookup("2001:db8::7", 80) is None
    assert table.lookup("2001:db8::7") is None
    assert table.lookup("198.51.100.8", 22) == "mapped port"
    assert table.lookup("::ffff:198.51.100.8", 22) == "mapped port"


@pytest.mark.parametrize("entry", [
    ("10.0.0.0/8", "x", 80), ("10.0.0.1", "x", 0), ("10.0.0.1", "x", 65536), ("10.0.0.1", "x", "80"),
    ("10.0.0.0/33", "x"), ("not an address", "x"), ("10.0.0.1",), ("10.0.0.1", "x", 80, "extra"),
])
def test_invalid_entries(impl, entry):
    with pytest.raises(ValueError):
        impl.CidrTable([entry])


def test_ipv4_mapped_addresses_look_up_as_ipv4(impl):
    table = impl.CidrTable([("127.0.0.0/8", "loopback"), ("::ffff:10.0.0.0/104", "ten via mapped"),
                            ("::/0", "v6 default")])
    assert table.lookup("::ffff:127.0.0.1") == "loopback"
    assert table.lookup("::ffff:7f00:1") == "loopback"
    assert table.lookup(ipaddress.IPv6Address("::ffff:127.0.0.1").packed) == "loopback"
    assert table.lookup("10.9.9.9") == "ten via mapped"
    assert table.lookup("::ffff:11.0.0.1") is None
    assert table.lookup("::127.0.0.1") == "v6 default"  # IPv4-compatible is not mapped
    assert table.lookup("64:ff9b::7f00:1") == "v6 default"


def test_packed_lookup(impl):
    table = impl.CidrTable([(ipaddress.ip_network("203.0.113.0/24"), "doc"), ("2001:db8::/32", "doc6")])
    assert table.lookup(bytes([203, 0, 113, 200])) == "doc"
    assert table.lookup(ipaddress.IPv6Address("2001:db8::1").packed) == "doc6"


@pytest.mark.parametrize("address", [
    "127.1", "0x7f.0.0.1", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4\x00", "1.2.3.4\x00junk", "1.2.3", "256.0.0.1",
    "fe80::1%eth0", "[::1]", "::1::", "", "caf\u00e9", "\ud800", b"\x01\x02\x03", b"",
])
def test_invalid_addresses(impl, address):
    table = impl.CidrTable([("0.0.0.0/0", 1)])
    with pytest.raises(ValueError):
        table.lookup(address)


def test_address_types(impl):
    table = impl.CidrTable([("0.0.0.0/0", 1)])
    for bad in (2130706433, None, bytearray(4), ipaddress.ip_address("1.2.3.4")):
        with pytest.raises(TypeError):
            table.lookup(bad)


def test_large_table(impl):
    entries = [(f"{a}.{b}.0.0/16", a * 256 + b) for a in range(1, 200) for b in range(0, 256, 3)]
    entries += [(f"2001:db8:{i:x}::/48", -i) for i in range(5000)]
    table = impl.CidrTable(entries)
    assert table.lookup("150.33.4.5") == 150 * 256 + 33
    assert table.lookup("150.34.4.5") is None
    assert table.lookup("2001:db8:1387::1") == -0x1387


# --- properties -------------------------------------------------------------------

@st.composite
def networks(draw):
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    prefix = draw(st.integers(0, bits))
    number = draw(st.integers(0, 2**bits - 1)) >> (bits - prefix) << (bits - prefix) if prefix else 0
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((number, prefix))


@st.composite
def tables(draw):
    """Entries with nesting likely: children drawn inside earlier networks."""
    entries = []
    for _ in range(draw(st.integers(0, 25))):
        value = draw(st.integers(0, 3))  # shared values: adjacent ranges get merged
        if entries and draw(st.booleans()):
            parent = entries[draw(st.integers(0, len(entries) - 1))][0]
            if parent.prefixlen < parent.max_prefixlen:
                extra = draw(st.integers(1, min(16, parent.max_prefixlen - parent.prefixlen)))
                subnets = 2**extra
                index = draw(st.integers(0, subnets - 1))
                size = parent.num_addresses // subnets
                net = type(parent)((int(parent.network_address) + index * size, parent.prefixlen + extra))
                entries.append((net, value))
                continue
        entries.append((draw(networks()), value))
    return entries


@st.composite
def probes(draw, entries):
    """Addresses at and just outside network edges, plus random ones."""
    choices = []
    for net, _ in entries:
        for edge in (int(net.network_address), int(net.broadcast_address)):
            for delta in (-1, 0, 1):
                number = edge + delta
                if 0 <= number < 2 ** net.max_prefixlen:
                    choices.append(ipaddress.ip_address(number) if net.version == 4
                                   else ipaddress.IPv6Address(number))
    randoms = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                        st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))
    return draw(st.sampled_from(choices) | randoms if choices else randoms)


def slow_lookup(entries, address):
    """The oracle: scan every network; longest prefix wins, the last of equals wins."""
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    best = None
    for net, value in entries:
        if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
            net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
        if net.version == address.version and address in net:
            if best is None or net.prefixlen >= best[0]:
                best = (net.prefixlen, value)
    return None if best is None else best[1]


@given(data=st.data())
def test_matches_a_list_scan_over_ipaddress(data):
    entries = data.draw(tables())
    built = {name: impl.CidrTable(entries) for name, impl in IMPLEMENTATIONS.items()}
    for _ in range(20):
        address = data.draw(probes(entries))
        expected = slow_lookup(entries, address)
        for name, table in built.items():
            assert table.lookup(str(address)) == expected, (name, address)
            assert table.lookup(address.packed) == expected, (name, address)


@needs_core
@given(entries=tables(), text=st.one_of(
    st.text(max_size=45), st.text("0123456789abcdefx:.%", max_size=45), st.binary(max_size=17)))
def test_core_matches_reference_on_any_input(entries, text):
    outcomes = []
    for impl in (IMPLEMENTATIONS["core"], reference):
        try:
            outcomes.append(("value", impl.CidrTable(entries).lookup(text)))
        except (ValueError, TypeError) as err:
            outcomes.append((type(err),))
    assert outcomes[0] == outcomes[1]
