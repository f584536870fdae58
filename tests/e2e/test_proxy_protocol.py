"""``--proxy-protocol`` through a real ``fastfog serve``: the carried client address is logged."""

import socket
import struct
import time

from fastfog.proxyproto import V2_SIGNATURE

from .client import read_head, read_until_closed

import netns

ACL_OPEN = "allow_missing_role: true\n"


def tunnel_with(proxy, header, target="origin.test:7"):
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(header + f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    head, _ = read_head(sock)
    return sock, head


def test_v1_and_v2_addresses_are_logged_and_no_header_is_served(start_proxy, echo):
    proxy = start_proxy("--proxy-protocol")
    v2 = (V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 36 + 7)
          + socket.inet_pton(socket.AF_INET6, "2001:db8::77") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
          + struct.pack("!HH", 4321, 4750) + b"\x04\x00\x04abcd")  # a TLV, skipped
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    for header in (b"PROXY TCP4 192.0.2.44 203.0.113.1 1234 4750\r\n", v2, local, b""):
        sock, head = tunnel_with(proxy, header)
        with sock:
            assert head.status == 200
            sock.sendall(b"after the header")
            assert sock.recv(100) == b"after the header"
    addresses = [record["inbound_remote_addr"] for record in proxy.records("CANONICAL-PROXY-DECISION",
                                                                           wait_for=4)]
    assert addresses[:2] == ["192.0.2.44:1234", "[2001:db8::77]:4321"]
    assert all(address.startswith(netns.PROXY + ":") for address in addresses[2:])  # the socket's own peer


def test_a_malformed_header_closes_only_that_connection(start_proxy, echo):
    proxy = start_proxy("--proxy-protocol")
    with socket.create_connection(proxy.address, timeout=10) as bad:
        bad.sendall(b"PROXY TCP4 192.0.2.1 nonsense 1 2\r\nCONNECT origin.test:7 HTTP/1.1\r\n\r\n")
        try:  # closed with the request unread: the kernel may well send a reset
            assert read_until_closed(bad) == b""
        except ConnectionResetError:
            pass
    [record] = proxy.records("bad PROXY protocol header", wait_for=1)
    assert record["error"] == "bad PROXY v1 address"
    sock, head = tunnel_with(proxy, b"PROXY TCP4 192.0.2.45 203.0.113.1 1 4750\r\n")
    sock.close()
    assert head.status == 200


def test_a_header_split_across_segments(start_proxy, echo):
    proxy = start_proxy("--proxy-protocol")
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"PROXY TCP4 192.0.2", b".46 203.0.113.1 99 47", b"50\r\nCONNECT origin.test:7 HTTP/1.1\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        head, _ = read_head(sock)
        assert head.status == 200
    [record] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert record["inbound_remote_addr"] == "192.0.2.46:99"
