"""Longest-prefix match over IPv4 and IPv6 networks, in pure Python.

A table is built once from ``(network, value)`` or ``(network, value, port)``
entries and looked up per connection. Building turns the nested networks into
sorted, disjoint address ranges, each carrying the value of the longest prefix
that covers it, so a lookup is one binary search. ``compile_ranges`` is that
build step; the compiled twin in ``fastfog/hot/cidr.pxi`` uses it too and only
does the lookup in C.

Rules:
- the longest matching prefix wins; the same network given twice keeps the
  last value;
- an entry with a port matches only that port, and only a single address
  (``/32`` or ``/128``) may carry one; for a lookup with that port it beats
  every port-less entry;
- IPv4-mapped IPv6 (``::ffff:a.b.c.d``), as an entry or as a looked-up
  address, is the IPv4 address it carries.
"""

import ipaddress
from bisect import bisect_right
from socket import AF_INET, AF_INET6, inet_pton

_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
_MAPPED_NETWORK = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(spec):
    if isinstance(spec, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network = spec
    else:
        network = ipaddress.ip_network(spec, strict=False)
    if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(_MAPPED_NETWORK):
        mapped = int(network.network_address) & 0xFFFFFFFF
        network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _disjoint(networks):
    """{network: value} → (starts, ends, values): sorted disjoint ranges, longest prefix winning."""
    ordered = sorted(networks.items(), key=lambda item: (int(item[0].network_address), item[0].prefixlen))
    starts, ends, values = [], [], []

    def emit(first, last, value):
        if first > last:
            return
        if ends and values[-1] is value and ends[-1] + 1 == first:
            ends[-1] = last
        else:
            starts.append(first)
            ends.append(last)
            values.append(value)

    open_networks = []  # (last address, value), innermost last
    cursor = 0
    for network, value in ordered:
        first = int(network.network_address)
        while open_networks and open_networks[-1][0] < first:
            last, outer_value = open_networks.pop()
            emit(cursor, last, outer_value)
            cursor = last + 1
        if open_networks:
            emit(cursor, first - 1, open_networks[-1][1])
        open_networks.append((int(network.broadcast_address), value))
        cursor = first
    while open_networks:
        last, outer_value = open_networks.pop()
        emit(cursor, last, outer_value)
        cursor = last + 1
    return starts, ends, values


def compile_ranges(entries):
    """Entries → (IPv4 ranges, IPv6 ranges, {(packed address, port): value}).

    Each ranges item is (starts, ends, values) as from ``_disjoint``; raises
    ValueError for a malformed network or port.
    """
    by_family = {4: {}, 6: {}}
    ports = {}
    for entry in entries:
        if len(entry) == 2:
            spec, value = entry
            port = None
        elif len(entry) == 3:
            spec, value, port = entry
        else:
            raise ValueError(f"a CIDR table entry is (network, value[, port]), not {entry!r}")
        network = _network(spec)
        if port is None:
            by_family[network.version][network] = value
            continue
        if type(port) is not int or not 1 <= port <= 65535:
            raise ValueError(f"invalid port {port!r} for {spec}")
        if network.num_addresses != 1:
            raise ValueError(f"a port applies to a single address, not {network}")
        ports[(network.network_address.packed, port)] = value
    return _disjoint(by_family[4]), _disjoint(by_family[6]), ports


def packed_address(address):
    """A str or packed (4- or 16-byte) address → packed bytes, IPv4-mapped unwrapped."""
    if type(address) is str:
        try:
            packed = inet_pton(AF_INET6 if ":" in address else AF_INET, address)
        except (OSError, ValueError):
            raise ValueError(f"invalid IP address: {address!r}") from None
    elif type(address) is bytes:
        if len(address) not in (4, 16):
            raise ValueError(f"a packed IP address has 4 or 16 bytes, not {len(address)}")
        packed = address
    else:
        raise TypeError(f"an IP address is str or bytes, not {type(address).__name__}")
    if len(packed) == 16 and packed[:12] == _MAPPED_PREFIX:
        return packed[12:]
    return packed


class CidrTable:
    """Longest-prefix match from IP addresses (and ports) to values."""

    __slots__ = ("_v4", "_v6", "_ports")

    def __init__(self, entries):
        self._v4, self._v6, self._ports = compile_ranges(entries)

    def lookup(self, address, port=None, default=None):
        """The value of the longest prefix holding ``address`` (str or packed bytes), else ``default``."""
        packed = packed_address(address)
        if port is not None and self._ports:
            value = self._ports.get((packed, port), self)
            if value is not self:
                return value
        starts, ends, values = self._v4 if len(packed) == 4 else self._v6
        number = int.from_bytes(packed, "big")
        i = bisect_right(starts, number) - 1
        if i >= 0 and number <= ends[i]:
            return values[i]
        return default
