"""Destination address classification and host canonicalisation (SPEC section 3.3)."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastfog import reasons
from fastfog.classify import AddressPolicy, address_text, canonical_host, special_purpose_blocks

DEFAULT = AddressPolicy()
CLASS_OF = {
    "not_global_unicast": reasons.NOT_GLOBAL_UNICAST,
    "private": reasons.PRIVATE_RANGE,
    "cgnat": reasons.CGNAT_RANGE,
    "ipv6_embedding": reasons.IPV6_EMBEDDING,
    "special_purpose": reasons.SPECIAL_PURPOSE,
    "allow": reasons.DEFAULT_ALLOWED,
    "documentation": reasons.DEFAULT_ALLOWED,
}
BLOCKS = [(net, name) for net, name in special_purpose_blocks() if name != "ipv4_mapped"]


def slow_classify(address, port, allow=(), deny=(), unsafe_private=False, listen_port=None, own=()):
    """An independent model: list scans over ipaddress networks, in SPEC 3.3's order."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped

    def within(entries):
        for entry in entries:
            text, _, entry_port = entry.partition("|")
            if (not entry_port or int(entry_port) == port) and ip in ipaddress.ip_network(text, strict=False):
                return True
        return False

    if port == listen_port and within(own):
        return reasons.SELF_CONNECTION
    matching = [(net, name) for net, name in BLOCKS if net.version == ip.version and ip in net]
    table_class = max(matching, key=lambda item: item[0].prefixlen)[1] if matching else None
    if table_class == "not_global_unicast":
        return reasons.USER_ALLOWED if within(allow) else reasons.NOT_GLOBAL_UNICAST
    if within(allow):
        return reasons.USER_ALLOWED
    if within(deny):
        return reasons.USER_DENIED
    if table_class is None or (table_class == "private" and unsafe_private):
        return reasons.DEFAULT_ALLOWED
    return CLASS_OF[table_class]


@pytest.mark.parametrize("network", [net for net, _ in BLOCKS], ids=str)
def test_every_block_edge_in_and_just_outside(network):
    """First and last address of each block, and the neighbours just outside, against the model."""
    first, last = int(network.network_address), int(network.broadcast_address)
    for number in (first - 1, first, first + 1, last - 1, last, last + 1):
        if not 0 <= number < 2 ** network.max_prefixlen:
            continue
        address = str(ipaddress.ip_address(number) if network.version == 4 else ipaddress.IPv6Address(number))
        assert DEFAULT.classify(address, 443) == slow_classify(address, 443), address


@pytest.mark.parametrize("address, expected", [
    ("8.8.8.8", reasons.DEFAULT_ALLOWED),
    ("127.0.0.1", reasons.NOT_GLOBAL_UNICAST),
    ("0.0.0.0", reasons.NOT_GLOBAL_UNICAST),
    ("0.1.2.3", reasons.SPECIAL_PURPOSE),
    ("10.1.2.3", reasons.PRIVATE_RANGE),
    ("172.31.255.255", reasons.PRIVATE_RANGE),
    ("172.32.0.0", reasons.DEFAULT_ALLOWED),
    ("192.168.1.1", reasons.PRIVATE_RANGE),
    ("100.64.0.1", reasons.CGNAT_RANGE),
    ("100.128.0.0", reasons.DEFAULT_ALLOWED),
    ("169.254.169.254", reasons.NOT_GLOBAL_UNICAST),
    ("224.0.0.1", reasons.NOT_GLOBAL_UNICAST),
    ("255.255.255.255", reasons.NOT_GLOBAL_UNICAST),
    ("240.0.0.1", reasons.SPECIAL_PURPOSE),
    ("198.18.0.1", reasons.SPECIAL_PURPOSE),
    ("192.0.0.8", reasons.SPECIAL_PURPOSE),
    ("192.0.0.9", reasons.DEFAULT_ALLOWED),
    ("192.0.2.1", reasons.DEFAULT_ALLOWED),
    ("198.51.100.1", reasons.DEFAULT_ALLOWED),
    ("203.0.113.1", reasons.DEFAULT_ALLOWED),
    # IPv6
    ("2606:4700::1111", reasons.DEFAULT_ALLOWED),
    ("::1", reasons.NOT_GLOBAL_UNICAST),
    ("::", reasons.NOT_GLOBAL_UNICAST),
    ("fe80::1", reasons.NOT_GLOBAL_UNICAST),
    ("ff02::1", reasons.NOT_GLOBAL_UNICAST),
    ("fd00::1", reasons.PRIVATE_RANGE),
    ("fec0::1", reasons.SPECIAL_PURPOSE),
    ("2001:db8::1", reasons.DEFAULT_ALLOWED),
    ("3fff::1", reasons.DEFAULT_ALLOWED),
    # IPv4 inside IPv6
    ("::ffff:127.0.0.1", reasons.NOT_GLOBAL_UNICAST),  # IPv4-mapped: unwrapped
    ("::ffff:10.0.0.1", reasons.PRIVATE_RANGE),
    ("::ffff:8.8.8.8", reasons.DEFAULT_ALLOWED),
    ("::127.0.0.1", reasons.SPECIAL_PURPOSE),  # IPv4-compatible (deprecated)
    ("::8.8.8.8", reasons.SPECIAL_PURPOSE),
    ("64:ff9b::a00:1", reasons.IPV6_EMBEDDING),  # NAT64
    ("64:ff9b:1::1", reasons.SPECIAL_PURPOSE),
    ("2002:a00:1::1", reasons.IPV6_EMBEDDING),  # 6to4
    ("2001:0:4136:e378::1", reasons.IPV6_EMBEDDING),  # Teredo
    ("2001:1::1", reasons.DEFAULT_ALLOWED),
    ("2001:2::1", reasons.SPECIAL_PURPOSE),
    ("2001:20::1", reasons.DEFAULT_ALLOWED),
])
def test_named_addresses(address, expected):
    assert DEFAULT.classify(address, 443) is expected
    assert DEFAULT.classify(ipaddress.ip_address(address).packed, 443) is expected


def test_allow_beats_deny_and_lifts_not_global_unicast():
    policy = AddressPolicy(allow_ranges=["10.0.0.0/8", "127.0.0.0/8"], deny_ranges=["10.1.0.0/16", "8.8.0.0/16"],
                           deny_addresses=["1.1.1.1"])
    assert policy.classify("10.1.2.3", 80) is reasons.USER_ALLOWED
    assert policy.classify("127.0.0.1", 80) is reasons.USER_ALLOWED
    assert policy.classify("8.8.8.8", 80) is reasons.USER_DENIED
    assert policy.classify("1.1.1.1", 80) is reasons.USER_DENIED
    assert policy.classify("1.1.1.2", 80) is reasons.DEFAULT_ALLOWED
    assert policy.classify("::ffff:10.9.9.9", 80) is reasons.USER_ALLOWED


def test_deny_ranges_cannot_rescue_but_do_deny():
    policy = AddressPolicy(deny_ranges=["127.0.0.0/8", "203.0.113.0/24"])
    assert policy.classify("127.0.0.1", 80) is reasons.NOT_GLOBAL_UNICAST
    assert policy.classify("203.0.113.9", 80) is reasons.USER_DENIED


def test_addresses_with_ports():
    policy = AddressPolicy(allow_addresses=["10.0.0.5:8443", "[fd00::5]:443"], deny_addresses=["203.0.113.9:25"])
    assert policy.classify("10.0.0.5", 8443) is reasons.USER_ALLOWED
    assert policy.classify("10.0.0.5", 8444) is reasons.PRIVATE_RANGE
    assert policy.classify("fd00::5", 443) is reasons.USER_ALLOWED
    assert policy.classify("fd00::5", 80) is reasons.PRIVATE_RANGE
    assert policy.classify("203.0.113.9", 25) is reasons.USER_DENIED
    assert policy.classify("203.0.113.9", 587) is reasons.DEFAULT_ALLOWED


def test_unsafe_allow_private_ranges_lifts_only_private():
    policy = AddressPolicy(unsafe_allow_private_ranges=True)
    assert policy.classify("10.0.0.1", 80) is reasons.DEFAULT_ALLOWED
    assert policy.classify("fd12::1", 80) is reasons.DEFAULT_ALLOWED
    assert policy.classify("127.0.0.1", 80) is reasons.NOT_GLOBAL_UNICAST
    assert policy.classify("100.64.0.1", 80) is reasons.CGNAT_RANGE
    assert policy.classify("198.18.0.1", 80) is reasons.SPECIAL_PURPOSE


def test_self_connection():
    policy = AddressPolicy(listen_port=4750, own_addresses=["203.0.113.5", "2001:db8::5"],
                           allow_ranges=["203.0.113.0/24"])
    assert policy.classify("203.0.113.5", 4750) is reasons.SELF_CONNECTION
    assert policy.classify("::ffff:203.0.113.5", 4750) is reasons.SELF_CONNECTION
    assert policy.classify("2001:db8::5", 4750) is reasons.SELF_CONNECTION
    assert policy.classify("203.0.113.5", 443) is reasons.USER_ALLOWED
    assert policy.classify("203.0.113.6", 4750) is reasons.USER_ALLOWED


def test_pick_first_allowed_or_first_rejected():
    pick = DEFAULT.pick(["10.0.0.1", "8.8.8.8", "1.1.1.1"], 443)
    assert (pick.address, pick.address_class, pick.allowed) == ("8.8.8.8", reasons.DEFAULT_ALLOWED, True)
    pick = DEFAULT.pick(["::ffff:10.0.0.1", "127.0.0.1"], 443)
    assert (pick.address, pick.allowed) == ("10.0.0.1", False)
    assert pick.deny_reason == ("no valid IP found among resolved addresses - 10.0.0.1 denied by rule "
                                "'Deny: Private Range'. ")
    with pytest.raises(ValueError):
        DEFAULT.pick([], 443)


def test_address_text():
    assert address_text("2001:DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert address_text(ipaddress.ip_address("::ffff:1.2.3.4").packed) == "1.2.3.4"
    assert address_text(b"\x7f\x00\x00\x01") == "127.0.0.1"


@pytest.mark.parametrize("text", ["1.2.3.4:0", "1.2.3.4:99999", "1.2.3.4:x", "127.1", "fe80::1%eth0",
                                  "[::1]", "::1:80x", "[::1]:", "host:80"])
def test_invalid_address_entries(text):
    with pytest.raises(ValueError):
        AddressPolicy(deny_addresses=[text])


# --- host canonicalisation -------------------------------------------------------------

@pytest.mark.parametrize("host, name, address", [
    ("Example.COM.", "example.com", None),
    ("hooks.slack.com", "hooks.slack.com", None),
    ("under_score.example", "under_score.example", None),
    ("2130706433", "127.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1", "127.0.0.1"),
    ("0x7F000001", "127.0.0.1", "127.0.0.1"),
    ("0X0A.0.0.1", "10.0.0.1", "10.0.0.1"),
    ("0", "0.0.0.0", "0.0.0.0"),
    ("0x", "0.0.0.0", "0.0.0.0"),
    ("1.2.3.4.", "1.2.3.4", "1.2.3.4"),
    ("169.254.169.254", "169.254.169.254", "169.254.169.254"),
    ("4294967295", "255.255.255.255", "255.255.255.255"),
    ("2001:DB8::1", "2001:db8::1", "2001:db8::1"),
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1", "::ffff:127.0.0.1"),
    ("1.2.3.example", "1.2.3.example", None),
    ("x1.com", "x1.com", None),
])
def test_canonical_host(host, name, address):
    result = canonical_host(host)
    assert result.name == name
    assert result.address == (None if address is None else ipaddress.ip_address(address).packed)


@pytest.mark.parametrize("host", ["4294967296", "256.0.0.1", "1.256.0.1", "1.2.65536", "1.2.3.4.5",
                                  "08.0.0.1", "0x1.08", "1..2", "example.123", "example.0x", "0xfffffffff", "::1::"])
def test_malformed_numeric_hosts(host):
    with pytest.raises(ValueError):
        canonical_host(host)


@given(st.integers(0, 2**32 - 1), st.sampled_from(["dec", "hex", "oct", "short"]))
def test_every_spelling_of_an_ipv4_address_canonicalises_to_it(number, spelling):
    octets = number.to_bytes(4, "big")
    if spelling == "dec":
        host = str(number)
    elif spelling == "hex":
        host = ".".join(f"0x{octet:x}" for octet in octets)
    elif spelling == "oct":
        host = ".".join(f"0{octet:o}" for octet in octets)
    else:
        host = f"{octets[0]}.{int.from_bytes(octets[1:], 'big')}"
    result = canonical_host(host)
    assert result.address == octets
    assert result.name == str(ipaddress.IPv4Address(octets))


# --- property: the compiled classification agrees with the list-scan model -------------------

addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.sampled_from([str(edge) for net, _ in BLOCKS for edge in (net.network_address, net.broadcast_address)]),
    st.integers(0, 2**32 - 1).map(lambda n: f"::ffff:{ipaddress.IPv4Address(n)}"),
)
ranges = st.lists(st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: str(ipaddress.IPv4Network((t[0], t[1]), strict=False))),
    st.sampled_from(["10.0.0.0/8", "127.0.0.0/8", "::/0", "0.0.0.0/0", "fd00::/8", "2001:db8::/32"]),
), max_size=4)


@given(address=addresses, port=st.sampled_from([80, 443, 4750]), allow=ranges, deny=ranges,
       unsafe=st.booleans())
def test_classification_matches_the_list_scan_model(address, port, allow, deny, unsafe):
    policy = AddressPolicy(allow_ranges=allow, deny_ranges=deny, unsafe_allow_private_ranges=unsafe,
                           listen_port=4750, own_addresses=["203.0.113.5"])
    expected = slow_classify(address, port, allow, deny, unsafe, 4750, ["203.0.113.5"])
    assert policy.classify(address, port) is expected


def test_a_policy_remembers_its_picks_and_a_new_policy_decides_afresh():
    """Classification is a pure function of the policy: a remembered pick is the same answer,
    the memory is bounded, and a reload's new policy never sees the old one's."""
    from fastfog.classify import PICKS_REMEMBERED

    policy = AddressPolicy()
    first = policy.pick(("10.0.0.1", "8.8.8.8"), 443)
    assert policy.pick(["10.0.0.1", "8.8.8.8"], 443) is first and first.address == "8.8.8.8"
    assert policy.pick(("10.0.0.1",), 443).allowed is False
    opened = AddressPolicy(unsafe_allow_private_ranges=True)
    assert opened.pick(("10.0.0.1",), 443).allowed
    for index in range(PICKS_REMEMBERED + 10):
        policy.pick((f"8.8.{index // 256 % 256}.{index % 256}",), 443)
    assert len(policy._picks) <= PICKS_REMEMBERED
    assert policy.pick(("10.0.0.1", "8.8.8.8"), 443) == first
