"""CONNECT tunnels through a real ``fastfog serve`` process, in the private test network."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from .client import connect, eventually, exchange, read_head, read_until_closed

import netns

ECHO = f"{netns.ORIGIN}:7"


def deny_bytes(requested, reason, code):
    message = f"Egress proxying is denied to host '{requested}': {reason}."
    body = (message + "\n").encode()
    return (f"HTTP/1.1 407 Request rejected by proxy\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: text/plain\r\nX-Fastfog-Reason: {code}\r\nX-Smokescreen-Error: {message}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def address_deny(ip, address_class):
    return f"no valid IP found among resolved addresses - {ip} denied by rule '{address_class}'. "


@pytest.mark.parametrize("target", [ECHO, "origin.test:7", "ORIGIN.test.:7", f"[{netns.ORIGIN6}]:7",
                                    "origin6.test:7", "mixed.test:7", "0xcb.0.113.10:7"])
def test_tunnel_relays_both_ways(start_proxy, echo, target):
    proxy = start_proxy()
    sock, head, rest = connect(proxy.address, target)
    with sock:
        assert (head.status, head.version, head.reason, head.headers, rest) == (200, "1.0", "OK", [], b"")
        sock.sendall(b"hello through fastfog")
        assert sock.recv(100) == b"hello through fastfog"
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    decision = proxy.records("CANONICAL-PROXY-DECISION")[0]
    assert decision["allow"] is True and decision["level"] == "info"
    assert decision["requested_host"] == target and decision["proxy_type"] == "connect"
    assert decision["decision_reason"] == "Egress ACL is not configured"
    assert decision["outbound_remote_addr"] in (f"{netns.ORIGIN}:7", f"[{netns.ORIGIN6}]:7")
    assert closes[0]["id"] == decision["id"]
    assert closes[0]["bytes_out"] == 21
    assert closes[0]["bytes_in"] in (21, 26)  # the origin's "<EOF>" may or may not beat the client's close


def test_connect_answer_is_exact_and_bytes_after_the_head_are_forwarded(start_proxy, echo):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {ECHO} HTTP/1.1\r\nHost: {ECHO}\r\n\r\nalready here".encode())
        data = b""
        while len(data) < 19 + 12:
            data += sock.recv(100)
        assert data == b"HTTP/1.0 200 OK\r\n\r\nalready here"


def test_half_close_keeps_the_other_direction_flowing(start_proxy, echo):
    proxy = start_proxy()
    sock, head, _ = connect(proxy.address, ECHO)
    with sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"last words<EOF>"
    close = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)[0]
    assert (close["bytes_out"], close["bytes_in"], close["error"]) == (10, 15, "")


def test_ten_mebibytes_each_way_arrive_intact(start_proxy, echo):
    proxy = start_proxy()
    payload = os.urandom(10 << 20)
    sock, head, _ = connect(proxy.address, ECHO, timeout=30)
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    received = read_until_closed(sock)
    sender.join(30)
    sock.close()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload + b"<EOF>").hexdigest()
    close = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)[0]
    assert (close["bytes_out"], close["bytes_in"]) == (len(payload), len(payload) + 5)


@pytest.mark.parametrize("target, ip, address_class, code", [
    ("private.test:7", "10.0.0.1", "Deny: Private Range", "addr_private"),
    ("loopback.test:7", "127.0.0.1", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("metadata.test:80", "169.254.169.254", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("127.0.0.1:7", "127.0.0.1", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("2130706433:7", "127.0.0.1", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("0x7f.1:7", "127.0.0.1", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("[::1]:7", "::1", "Deny: Not Global Unicast", "addr_not_global_unicast"),
    ("[::ffff:10.1.2.3]:7", "10.1.2.3", "Deny: Private Range", "addr_private"),
    ("[64:ff9b::a00:1]:7", "64:ff9b::a00:1", "Deny: IPv6 Embedding", "addr_ipv6_embedding"),
    ("100.64.0.1:7", "100.64.0.1", "Deny: CGNAT Range", "addr_cgnat"),
    ("198.18.0.1:7", "198.18.0.1", "Deny: Special Purpose", "addr_special_purpose"),
    ("proxy.test:4750", netns.PROXY, "Deny: Self Connection", "addr_self_connection"),
])
def test_addresses_that_are_not_public_are_denied_exactly(start_proxy, echo, target, ip, address_class, code):
    proxy = start_proxy()
    answer = exchange(proxy.address, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert answer == deny_bytes(target, address_deny(ip, address_class), code)
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["allow"], record["level"], record["status_code"], record["enforce_would_deny"]) == (
        False, "warning", 407, True)
    assert record["decision_reason"] == address_deny(ip, address_class)
    assert not eventually(lambda: echo.connections > 0, timeout=0.2)  # a deny opens no connection


def test_user_ranges(start_proxy, echo):
    proxy = start_proxy("--deny-range", f"{netns.ORIGIN}/32", "--allow-range", "127.0.0.0/8")
    answer = exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode())
    assert answer == deny_bytes(ECHO, address_deny(netns.ORIGIN, "Deny: User Configured"), "addr_user_configured")
    assert not eventually(lambda: echo.connections > 0, timeout=0.2)  # a deny opens no connection
    sock, head, _ = connect(proxy.address, f"[{netns.ORIGIN6}]:7")
    sock.close()
    assert head.status == 200


def test_deny_address_with_port(start_proxy, echo):
    proxy = start_proxy("--deny-address", f"{netns.ORIGIN}:7")
    assert b"Deny: User Configured" in exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode())
    assert not eventually(lambda: echo.connections > 0, timeout=0.2)  # a deny opens no connection


@pytest.mark.parametrize("target, status, message", [
    ("nx.test:7", 502, "Failed to resolve remote hostname: lookup nx.test: no such host"),
    ("servfail.test:7", 502, "Failed to resolve remote hostname: lookup servfail.test: server misbehaving"),
    ("silent.test:7", 504, "Timed out connecting to remote host: lookup silent.test: i/o timeout"),
    (f"{netns.ORIGIN}:1", 502, f"Failed to connect to remote host: dial tcp {netns.ORIGIN}:1: connect: "
                               "connection refused"),
])
def test_resolution_and_connection_failures(start_proxy, target, status, message):
    proxy = start_proxy("--dns-timeout", "500ms")
    answer = exchange(proxy.address, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    reason = {502: "Bad gateway", 504: "Gateway timeout"}[status]
    body = (message + "\n").encode()
    assert answer == (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n"
                      f"X-Smokescreen-Error: {message}\r\nConnection: close\r\n\r\n").encode() + body
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["allow"], record["level"], record["status_code"], record["error"]) == (
        True, "error", status, message)


def test_connect_timeout(start_proxy, blackhole):
    proxy = start_proxy("--timeout", "300ms")
    started = time.monotonic()
    answer = exchange(proxy.address, f"CONNECT {netns.BLACKHOLE}:443 HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 504 Gateway timeout\r\n")
    assert (f"Timed out connecting to remote host: dial tcp {netns.BLACKHOLE}:443: i/o timeout\n").encode() in answer
    assert time.monotonic() - started < 5


def test_additional_error_message_on_deny(start_proxy):
    proxy = start_proxy("--additional-error-message-on-deny", "Ask #security for access.")
    answer = exchange(proxy.address, b"CONNECT 127.0.0.1:7 HTTP/1.1\r\n\r\n")
    reason = address_deny("127.0.0.1", "Deny: Not Global Unicast")
    message = f"Egress proxying is denied to host '127.0.0.1:7': {reason}."
    assert f"X-Smokescreen-Error: {message}  Ask #security for access.\r\n".encode() in answer
    assert answer.endswith(f"\r\n\r\n{message}\n\nAsk #security for access.\n\n".encode())


ACL_DEFAULT = """
version: v1
services:
  - {{name: known, project: p, action: open}}
default:
  project: fallback
  action: {action}
  allowed_domains: [origin.test]
"""


@pytest.mark.parametrize("action, target, allowed, reason, project, would_deny", [
    ("enforce", "origin.test:7", True, "host matched allowed domain in rule", "fallback", False),
    ("enforce", "mixed.test:7", False, "default rule policy used", "fallback", True),
    ("report", "mixed.test:7", True, "default rule policy used", "fallback", True),
    ("open", "mixed.test:7", True, "default rule policy used", "fallback", False),
    ("open", f"[{netns.ORIGIN6}]:7", False, "Destination host cannot be determined", "", False),
])
def test_acl_default_rule_with_missing_role(start_proxy, echo, action, target, allowed, reason, project,
                                            would_deny):
    proxy = start_proxy(acl=ACL_DEFAULT.format(action=action), config="allow_missing_role: true\n")
    sock, head, _ = connect(proxy.address, target)
    sock.close()
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (head.status == 200, record["allow"], record["decision_reason"], record["role"]) == (
        allowed, allowed, reason, "")
    assert (record["project"], record["enforce_would_deny"]) == (project, would_deny)
    assert eventually(lambda: echo.connections == (1 if allowed else 0))


def test_acl_without_a_role(start_proxy, echo):
    proxy = start_proxy(acl=ACL_DEFAULT.format(action="open"))
    answer = exchange(proxy.address, b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
    assert answer == deny_bytes("origin.test:7", "Client role cannot be determined", "acl_role_unknown")
    assert not eventually(lambda: echo.connections > 0, timeout=0.2)  # a deny opens no connection


@pytest.mark.parametrize("raw, reason", [
    (b"GARBAGE\r\n\r\n", "invalid request line"),
    (b"CONNECT example.com:44x HTTP/1.1\r\n\r\n", "invalid port"),
    (b"CONNECT ex ample.com:443 HTTP/1.1\r\n\r\n", "unsupported HTTP version"),
    (b"CONNECT a.b:443 HTTP/1.1\nHost: x\n\n", "bare LF in head"),
    (b"CONNECT 1.2.3.4.5:443 HTTP/1.1\r\n\r\n", "invalid IPv4 address: more than four parts"),
    (b"CONNECT h:443 HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n", "head too large"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", "invalid request line"),
])
def test_malformed_requests_get_400_and_a_close(start_proxy, raw, reason):
    proxy = start_proxy()
    answer = exchange(proxy.address, raw)
    body = f"400 Bad Request: {reason}\n".encode()
    assert answer == (b"HTTP/1.1 400 Bad Request\r\nContent-Length: " + str(len(body)).encode() +
                      b"\r\nContent-Type: text/plain; charset=utf-8\r\nX-Fastfog-Reason: bad_request\r\n"
                      b"Connection: close\r\n\r\n" + body)


def test_bad_clients_do_not_disturb_others(start_proxy, echo):
    proxy = start_proxy("--dns-timeout", "500ms")
    sock, head, _ = connect(proxy.address, ECHO)
    noise = [socket.create_connection(proxy.address) for _ in range(20)]
    for index, other in enumerate(noise):
        other.sendall([b"\x00\xff" * 100, b"CONNECT silent.test:1 HTTP/1.1\r\n\r\n", b"CONN"][index % 3])
    with sock:
        for round_trip in range(20):
            sock.sendall(b"ping %d" % round_trip)
            assert sock.recv(100) == b"ping %d" % round_trip
    for other in noise:
        other.close()


def test_slow_receiver_keeps_memory_bounded(start_proxy, silent):
    """An origin that never reads: the proxy stops reading the client instead of buffering."""
    proxy = start_proxy()
    sock, head, _ = connect(proxy.address, f"{netns.ORIGIN}:9")
    sock.setblocking(False)
    chunk = b"x" * 65536
    sent, deadline = 0, time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                break
    sock.close()
    # Socket buffers on both legs (autotuned) plus one pipe: bounded, never what the client wanted to send.
    assert sent < 64 << 20
    status = open(f"/proc/{proxy.process.pid}/status").read()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kib < 200_000


def test_healthcheck_and_non_proxy_requests(start_proxy):
    proxy = start_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: proxy\r\n\r\n")
        head, rest = read_head(sock)
        assert (head.status, rest) == (200, b"ok\n")
        sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: proxy\r\n\r\n")  # keep-alive
        head, rest = read_head(sock)
        assert head.status == 200
    answer = exchange(proxy.address, b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.endswith(b"\r\n\r\nThis is a proxy server. Does not respond to non-proxy requests.\n")


def test_listens_on_ipv6(start_proxy, echo):
    proxy = start_proxy("--listen-ip", netns.PROXY6)
    sock, head, _ = connect((netns.PROXY6, 4750), ECHO)
    sock.close()
    assert proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]["inbound_remote_addr"].startswith("[2001:db8::1]:")
    assert head.status == 200


def test_sigterm_waits_for_tunnels_then_closes_them(start_proxy, echo):
    proxy = start_proxy(config="exit_timeout: 1s\n")
    sock, head, _ = connect(proxy.address, ECHO)
    sock.sendall(b"x")
    assert sock.recv(10) == b"x"
    started = time.monotonic()
    proxy.process.terminate()
    with sock:
        sock.sendall(b"still here")
        assert sock.recv(100) == b"still here"
        assert read_until_closed(sock) == b""
    assert proxy.process.wait(10) == 0
    assert 0.9 < time.monotonic() - started < 5
    close = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)[0]
    assert close["active_at_termination"] is True and close["bytes_out"] == 11
    with pytest.raises(OSError):
        socket.create_connection(proxy.address, timeout=2)


def test_dns_answers_are_cached_for_their_ttl(start_proxy, echo, dns):
    proxy = start_proxy(config="dns_cache: {max_entries: 100, max_ttl: 300s}\n")
    before = dns.questions["origin.test"]
    for _ in range(5):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    assert dns.questions["origin.test"] - before == 2  # one A and one AAAA question, then the cache


@pytest.mark.parametrize("cache, name, questions", [
    ("{max_entries: 0}", "nx-uncached.test", 6),  # off: every lookup asks
    ("{negative_ttl: 60s}", "nx-cached.test", 2),  # a failure is remembered
])
def test_failures_are_cached_only_when_the_cache_is_on(start_proxy, dns, cache, name, questions):
    proxy = start_proxy(config=f"dns_cache: {cache}\n")
    before = dns.questions[name]
    for _ in range(3):
        assert b" 502 " in exchange(proxy.address, f"CONNECT {name}:7 HTTP/1.1\r\n\r\n".encode())
    assert dns.questions[name] - before == questions


def test_a_client_trickling_its_head_is_dropped_while_others_are_served(start_proxy, echo):
    proxy = start_proxy(config="read_header_timeout: 600ms\n")
    trickler = socket.create_connection(proxy.address, timeout=5)
    started = time.monotonic()
    dropped_after = None
    for byte in b"CONNECT origin.test:7 HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            trickler.sendall(bytes([byte]))
        except OSError:
            dropped_after = time.monotonic() - started
            break
        sock, head, _ = connect(proxy.address, ECHO)  # a normal client meanwhile
        sock.close()
        assert head.status == 200
        trickler.settimeout(0.05)
        try:
            if trickler.recv(10) == b"":
                dropped_after = time.monotonic() - started
                break
        except socket.timeout:
            pass
    trickler.close()
    assert dropped_after is not None and 0.5 < dropped_after < 3


def test_hundreds_of_stalled_heads_do_not_starve_a_real_client(start_proxy, echo):
    proxy = start_proxy(config="read_header_timeout: 2s\n")
    stalled = []
    try:
        for _ in range(400):
            sock = socket.create_connection(proxy.address, timeout=5)
            sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\nX-Slow: ")
            stalled.append(sock)
        started = time.monotonic()
        sock, head, _ = connect(proxy.address, ECHO)
        sock.close()
        assert head.status == 200 and time.monotonic() - started < 1
        stalled[0].settimeout(5)
        assert stalled[0].recv(10) == b""  # and each stalled one is dropped at its timeout
    finally:
        for sock in stalled:
            sock.close()


def test_logfmt_records(start_proxy, echo):
    proxy = start_proxy(config="log_format: logfmt\n")
    sock, head, _ = connect(proxy.address, ECHO, headers=b"X-Smokescreen-Trace-ID: t 1\r\n")
    sock.close()
    assert eventually(lambda: any("msg=CANONICAL-PROXY-CN-CLOSE" in line for line in proxy.lines))
    decision = next(line for line in proxy.lines if "msg=CANONICAL-PROXY-DECISION" in line)
    assert decision.startswith("time=") and " level=info " in decision
    assert " allow=true " in decision and f" requested_host={ECHO} " in decision and ' trace_id="t 1"' in decision


PORTS_ACL = """
version: v1
services: []
default:
  action: open
  allowed_ports: [7, 443]
"""


@pytest.mark.parametrize("target, allowed", [(ECHO, True), (f"{netns.ORIGIN}:9", False), ("origin.test:22", False)])
def test_allowed_ports(start_proxy, echo, target, allowed):
    proxy = start_proxy(acl=PORTS_ACL, config="allow_missing_role: true\n")
    if allowed:
        sock, head, _ = connect(proxy.address, target)
        sock.close()
        assert head.status == 200
        return
    answer = exchange(proxy.address, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    assert answer == deny_bytes(target, "port not allowed in rule", "acl_port")
    record = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]
    assert (record["decision_reason"], record["dns_lookup_time_ms"]) == ("port not allowed in rule", 0)


def test_a_port_in_use_is_a_clear_error_not_a_traceback(start_proxy):
    start_proxy()
    for extra in ([], ["--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY,
                       "--prometheus-port", "4750", "--listen-port", "4752"]):
        args = ["--listen-ip", netns.PROXY, "--listen-port", "4750", *extra]
        result = subprocess.run([sys.executable, "-m", "fastfog", "serve", *args], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 1
        [record] = [record for record in map(json.loads, result.stderr.splitlines()) if record["level"] == "error"]
        assert record["msg"] == "cannot start" and "address already in use" in record["error"].lower()
        assert "Traceback" not in result.stderr
