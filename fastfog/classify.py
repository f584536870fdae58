"""Which destination addresses fastfog may dial, and what a requested host denotes.

Pure functions over values, no I/O. Classification follows Smokescreen's order
(SPEC section 3.3), with fastfog's extra step for IANA special-purpose blocks.
It runs on fastfog's own table of blocks (``data/special-purpose.csv``, longest
prefix wins) through the compiled CIDR table, never on Python's ``ipaddress``
flags, whose answers have changed between releases.

``canonical_host`` decides once what a requested host is: a DNS name, or an
address in any spelling that libc would accept (``2130706433``, ``0x7f.1``,
``0177.0.0.1``, ``127.1``). The ACL and the dialer then use that same answer,
so a hostname rule can never be sidestepped by spelling an address differently.
"""

import csv
import ipaddress
from importlib import resources
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple

from fastfog import reasons
from fastfog.hotpaths import CidrTable

# Table class names (data/special-purpose.csv) → what an address in the block is.
# None: nothing special, the user's ranges and then "Allow: Default" decide.
_TABLE_CLASSES = {
    "not_global_unicast": reasons.NOT_GLOBAL_UNICAST,
    "private": reasons.PRIVATE_RANGE,
    "cgnat": reasons.CGNAT_RANGE,
    "ipv6_embedding": reasons.IPV6_EMBEDDING,
    "special_purpose": reasons.SPECIAL_PURPOSE,
    "allow": None,
    "documentation": None,
}


def special_purpose_blocks():
    """The shipped table as [(ip_network, table class name)], in file order."""
    text = resources.files("fastfog").joinpath("data/special-purpose.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return [(ipaddress.ip_network(row["block"]), row["class"]) for row in rows]


def _special_purpose_table():
    entries = []
    for network, name in special_purpose_blocks():
        if name == "ipv4_mapped":
            continue  # the CIDR table unwraps ::ffff:a.b.c.d to a.b.c.d itself
        entries.append((network, _TABLE_CLASSES[name]))
    return CidrTable(entries)


_SPECIAL_PURPOSE = _special_purpose_table()


def parse_address_entry(text):
    """``IP`` or ``IP:PORT`` (``[v6]:PORT`` for IPv6) → (address text, port or None); ValueError if bad."""
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text.startswith("]:", close) or close == len(text) - 2:
            raise ValueError(f"address must be in the form ip[:port], got {text}")
        host, port = text[1:close], text[close + 2:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        if "%" in host:
            raise ValueError("zone")
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid IP address '{host}'") from None
    if port is not None:
        if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"invalid port number '{port}'")
        port = int(port)
    return str(address), port


PICKS_REMEMBERED = 4096  # (addresses, port) → Pick, per policy


class AddressPolicy:
    """Classifies destination addresses for one configuration (SPEC section 3.3).

    A policy never changes (a reload makes a new one), so ``pick`` remembers its answers for
    the destinations it saw last: a kept-alive client asking for the same host again, or a
    name answered from the DNS cache, is classified once per policy."""

    __slots__ = ("_allow", "_deny", "_own", "_listen_port", "_unsafe_allow_private", "_picks")

    def __init__(self, allow_ranges=(), deny_ranges=(), allow_addresses=(), deny_addresses=(),
                 unsafe_allow_private_ranges=False, listen_port=None, own_addresses=()):
        """Ranges are CIDR strings; addresses are ``IP[:PORT]`` strings; own addresses are the
        host's interface addresses (a connection to one of them on ``listen_port`` would reach
        this proxy itself)."""
        self._allow = self._user_table(allow_ranges, allow_addresses)
        self._deny = self._user_table(deny_ranges, deny_addresses)
        self._own = CidrTable([(address, True) for address in own_addresses])
        self._listen_port = listen_port
        self._unsafe_allow_private = unsafe_allow_private_ranges
        self._picks = {}

    @staticmethod
    def _user_table(ranges, addresses):
        entries = [(ipaddress.ip_network(network, strict=False), True) for network in ranges]
        for text in addresses:
            address, port = parse_address_entry(text)
            entries.append((address, True, port))
        return CidrTable(entries)

    def classify(self, address, port):
        """The :class:`~fastfog.reasons.AddressClass` of ``address`` (str or packed) at ``port``."""
        if port == self._listen_port and self._own.lookup(address):
            return reasons.SELF_CONNECTION
        special = _SPECIAL_PURPOSE.lookup(address)
        allowed = self._allow.lookup(address, port)
        if special is reasons.NOT_GLOBAL_UNICAST:
            return reasons.USER_ALLOWED if allowed else special
        if allowed:
            return reasons.USER_ALLOWED
        if self._deny.lookup(address, port):
            return reasons.USER_DENIED
        if special is None or (special is reasons.PRIVATE_RANGE and self._unsafe_allow_private):
            return reasons.DEFAULT_ALLOWED
        return special

    def pick(self, addresses, port):
        """The first address that may be dialed, as a :class:`Pick`.

        When none may, the pick names the first address rejected and its class, which is
        what Smokescreen's deny reason reports. ``addresses`` must not be empty.
        """
        key = (tuple(addresses), port)
        found = self._picks.get(key)
        if found is None:
            found = self._pick(addresses, port)
            if len(self._picks) >= PICKS_REMEMBERED:
                self._picks.clear()  # the destinations seen last matter; starting over is cheapest
            self._picks[key] = found
        return found

    def _pick(self, addresses, port):
        first_rejected = None
        for address in addresses:
            address_class = self.classify(address, port)
            if address_class.allowed:
                return Pick(address_text(address), address_class)
            if first_rejected is None:
                first_rejected = Pick(address_text(address), address_class)
        if first_rejected is None:
            raise ValueError("no addresses to pick from")
        return first_rejected


class Pick(NamedTuple):
    """The address to dial (or the one that explains the deny) and its class."""

    address: str
    address_class: reasons.AddressClass

    @property
    def allowed(self):
        return self.address_class.allowed

    @property
    def deny_reason(self):
        return reasons.address_deny_reason(self.address, self.address_class)


def address_text(address):
    """Canonical text of an address (str or packed): IPv4 dotted, IPv6 per RFC 5952, mapped unwrapped."""
    packed = address
    if isinstance(address, str):
        packed = inet_pton(AF_INET6 if ":" in address else AF_INET, address)
    if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]
    return inet_ntop(AF_INET if len(packed) == 4 else AF_INET6, packed)


class Host(NamedTuple):
    """A requested host after canonicalisation."""

    name: str  # lowercase name without trailing dots, or canonical address text
    address: bytes | None  # packed address when the host is an address literal


def _is_number_label(label):
    if label[:2] in ("0x", "0X"):
        return all(c in "0123456789abcdefABCDEF" for c in label[2:])
    return label.isascii() and label.isdigit()


def _parse_ipv4_number(labels):
    """IPv4 in the forms inet_aton accepts (1 to 4 parts, decimal, octal or hex) → packed."""
    if len(labels) > 4:
        raise ValueError("invalid IPv4 address: more than four parts")
    numbers = []
    for label in labels:
        if label[:2] in ("0x", "0X"):
            digits, base = label[2:], 16
        elif len(label) > 1 and label[0] == "0":
            digits, base = label[1:], 8
        else:
            digits, base = label, 10
        try:
            numbers.append(int(digits, base) if digits else 0)
        except ValueError:
            raise ValueError(f"invalid IPv4 address: bad number '{label}'") from None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError("invalid IPv4 address: number out of range")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return value.to_bytes(4, "big")


def canonical_host(host):
    """Canonicalise a requested host (as the head parser returns it: IPv6 without brackets).

    A name is lowercased and loses its trailing dots. A host whose last label is a number
    (decimal, or ``0x`` hex) is an IPv4 address in one of the spellings libc accepts and
    must parse as one (ValueError otherwise, which the proxy answers with 400), the rule
    browsers follow too. IPv6 literals get their canonical form.
    """
    if ":" in host:
        try:
            packed = inet_pton(AF_INET6, host)
        except OSError:
            raise ValueError(f"invalid IPv6 address '{host}'") from None
        return Host(inet_ntop(AF_INET6, packed), packed)
    try:
        return Host(host, inet_pton(AF_INET, host))  # the common case: already canonical dotted quad
    except OSError:
        pass
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or not _is_number_label(labels[-1]):
        return Host(name, None)
    if "" in labels:
        raise ValueError(f"invalid IPv4 address '{host}': empty part")
    packed = _parse_ipv4_number(labels)
    return Host(inet_ntop(AF_INET, packed), packed)
