"""The mTLS listener through a real ``fastfog serve``: roles from client certificates, CAs and
CRLs, handshake failures, CONNECT and forwarding inside TLS, TLS inside the tunnel (SPEC 3.1)."""

import asyncio
import hashlib
import os
import socket
import ssl
import time

import pytest
from pki import make_pki

import netns

from .client import eventually, read_head, read_until_closed

ACL = """
version: v1
services:
  - {name: open-client, project: open, action: open}
  - {name: report-client, project: report, action: report, allowed_domains: [origin.test]}
  - {name: enforce-client, project: enforce, action: enforce, allowed_domains: [origin.test]}
  - {name: payments, project: ou, action: enforce, allowed_domains: [origin.test]}
default: {project: default, action: enforce, allowed_domains: [origin6.test]}
"""
TLS_ORIGIN_PORT = 8443


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), proxy_names=("proxy.test",), proxy_ips=(netns.PROXY,))


@pytest.fixture
def tls_origin(background, pki):
    """An echo server behind TLS on origin.test:8443 (for TLS inside the tunnel)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["proxy"])  # any certificate of the test CA serves

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = background.run(asyncio.start_server(echo, netns.ORIGIN, TLS_ORIGIN_PORT, ssl=context))
    yield server
    background.loop.call_soon_threadsafe(server.close)


def tls_flags(pki, *crls):
    flags = ["--tls-server-bundle-file", pki["proxy"], "--tls-client-ca-file", pki["ca"],
             "--tls-client-ca-file", pki["second_ca"]]
    for crl in crls or ("ca.crl",):
        flags += ["--tls-crl-file", pki[crl]]
    return flags


def client_context(pki, client=None):
    context = ssl.create_default_context(cafile=pki["ca"])
    if client is not None:
        context.load_cert_chain(pki[client])
    return context


def tls_connect(proxy, pki, client=None, timeout=10):
    raw = socket.create_connection(proxy.address, timeout=timeout)
    return client_context(pki, client).wrap_socket(raw, server_hostname="proxy.test")


def tls_tunnel(proxy, pki, client, target, headers=b""):
    sock = tls_connect(proxy, pki, client)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + headers + b"\r\n")
    head, rest = read_head(sock)
    return sock, head, rest


@pytest.fixture
def mtls_proxy(start_proxy, pki):
    def start(*flags, config=None, acl=ACL, env=None, port=4750):
        return start_proxy(*tls_flags(pki), *flags, config=config, acl=acl, env=env, port=port)
    return start


def test_roles_come_from_the_certificate_cn_and_pick_the_policy(mtls_proxy, pki, echo):
    proxy = mtls_proxy()
    expected = [("enforce", "origin.test:7", 200), ("enforce", "origin6.test:7", 407),
                ("open", "origin6.test:7", 200), ("report", "origin6.test:7", 200)]
    for client, target, status in expected:
        sock, head, _ = tls_tunnel(proxy, pki, client, target)
        with sock:
            assert head.status == status, (client, target)
            if status == 200:
                sock.sendall(b"ping")
                assert sock.recv(10) == b"ping"
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=4)
    seen = [(record["role"], record["allow"], record["decision_reason"], record["inbound_remote_x509_cn"],
             record.get("inbound_remote_x509_ou")) for record in decisions]
    assert seen == [
        ("enforce-client", True, "host matched allowed domain in rule", "enforce-client", "billing"),
        ("enforce-client", False, "rule has enforce policy", "enforce-client", "billing"),
        ("open-client", True, "rule has open enforcement policy", "open-client", "payments.webhooks"),
        ("report-client", True, "rule has allow and report policy", "report-client", None),
    ]
    closes = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=3)
    # The ping, then the echo's "<EOF>" answer to the client's end (a TCP end without close_notify
    # ends one way only: the other way goes on, as through a plain tunnel).
    assert sorted(record["bytes_in"] for record in closes) == [9, 9, 9]


def test_a_client_resumes_its_session_and_keeps_its_role(mtls_proxy, pki, echo):
    """A session resumes (from a ticket): the second handshake is abbreviated, and the resumed
    connection still has the certificate's role."""
    proxy = mtls_proxy()
    context = client_context(pki, "enforce")
    sessions, reused = [], []
    for target in ("origin.test:7", "blocked.test:7"):
        raw = socket.create_connection(proxy.address, timeout=10)
        with context.wrap_socket(raw, server_hostname="proxy.test",
                                 session=sessions[-1] if sessions else None) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head, _ = read_head(sock)  # (TLS 1.3 sends the session after the handshake)
            sessions.append(sock.session)
            reused.append(sock.session_reused)
            assert head.status == (200 if target == "origin.test:7" else 407)
    assert reused == [False, True]
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
    assert [(r["role"], r["allow"], r["inbound_remote_x509_cn"]) for r in decisions] == [
        ("enforce-client", True, "enforce-client"), ("enforce-client", False, "enforce-client")]


def test_a_revoked_certificate_is_rejected_and_others_go_on(mtls_proxy, pki, echo):
    proxy = mtls_proxy()
    with tls_connect(proxy, pki, "revoked") as sock:
        sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            if not sock.recv(100):
                raise ConnectionResetError("closed")
    [failure] = proxy.records("TLS handshake error", wait_for=1)
    assert failure["error"] == "client certificate revoked"
    assert failure["inbound_remote_addr"].startswith(netns.PROXY.rsplit(".", 1)[0])
    sock, head, _ = tls_tunnel(proxy, pki, "enforce", "origin.test:7")
    sock.close()
    assert head.status == 200
    # The origin counts the tunnel's connection when its loop accepts it, maybe after our 200.
    assert eventually(lambda: echo.connections >= 1)
    assert echo.connections == 1  # the revoked client never reached the origin


@pytest.mark.parametrize("client", ["stranger", "expired"])
def test_certificates_the_cas_do_not_vouch_for_fail_the_handshake(mtls_proxy, pki, client):
    proxy = mtls_proxy()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(proxy, pki, client) as sock:
            # TLS 1.3: the client's certificate is judged after the client thinks it is done
            sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
            if not sock.recv(100):
                raise ConnectionResetError("closed")
    [failure] = proxy.records("TLS handshake error", wait_for=1)
    assert "CERTIFICATE_VERIFY_FAILED" in failure["error"] or "certificate verify failed" in failure["error"]


def test_a_ca_without_a_crl_is_accepted_and_warned_about(mtls_proxy, pki, echo):
    proxy = mtls_proxy()
    warnings = [record["msg"] for record in proxy.records() if record["level"] == "warning"]
    assert warnings == [f"tls.client_ca_files: {pki['second_ca']}: no CRL for this CA; "
                        "its certificates are not checked for revocation"]
    sock, head, _ = tls_tunnel(proxy, pki, "second", "origin.test:7")
    sock.close()
    assert head.status == 200


def test_no_certificate_has_no_role(mtls_proxy, start_proxy, pki, echo):
    proxy = mtls_proxy()
    sock, head, _ = tls_tunnel(proxy, pki, None, "origin.test:7")
    sock.close()
    assert head.status == 407
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (decision["decision_reason"], decision["error"], decision["role"]) == (
        "Client role cannot be determined", "client did not provide certificate", "")
    assert "inbound_remote_x509_cn" not in decision
    lenient = start_proxy(*tls_flags(pki), config="allow_missing_role: true\n", acl=ACL, port=4751)
    for target, status in (("origin6.test:7", 200), ("origin.test:7", 407)):  # the default rule
        sock, head, _ = tls_tunnel(lenient, pki, None, target)
        sock.close()
        assert head.status == status


def test_forwarded_http_inside_tls_with_keep_alive(mtls_proxy, pki, http_origin):
    proxy = mtls_proxy()
    with tls_connect(proxy, pki, "enforce") as sock:
        for _ in range(2):
            sock.sendall(b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            head, body = read_head(sock)
            while len(body) < head.content_length:
                body += sock.recv(65536)
            assert (head.status, body) == (200, b"hello from the origin")
        sock.sendall(b"GET http://origin6.test/hello HTTP/1.1\r\nHost: origin6.test\r\n\r\n")
        head, _ = read_head(sock)
        assert head.status == 407
    assert len(http_origin.requests) == 2
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=3)
    assert [record["proxy_type"] for record in decisions] == ["http"] * 3


def test_large_forwarded_bodies_both_ways_inside_tls(mtls_proxy, pki, http_origin):
    """A TLS client's socket waits through the loop's own registrations (decrypted bytes come
    with no edge): megabytes each way, with the buffers full in between, then the next request."""
    proxy = mtls_proxy()
    large = os.urandom(3 << 20)
    with tls_connect(proxy, pki, "enforce") as sock:
        sock.sendall(b"PUT http://origin.test/echo HTTP/1.1\r\nHost: origin.test\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(large) + large)
        head, body = read_head(sock)
        while len(body) < head.content_length:
            body += sock.recv(1 << 20)
        assert head.status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(large).digest()
        sock.sendall(b"GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        head, body = read_head(sock)
        while len(body) < head.content_length:
            body += sock.recv(65536)
        assert (head.status, body) == (200, b"hello from the origin")


def inner_tls(outer, context, server_hostname):
    """TLS inside an already-TLS socket, driven by hand over memory BIOs; (send, recv) functions."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    inner = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)

    def pump(operation):
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    outer.sendall(outgoing.read())
                data = outer.recv(65536)
                if not data:
                    raise ConnectionError("outer connection closed") from None
                incoming.write(data)
                continue
            if outgoing.pending:
                outer.sendall(outgoing.read())
            return result

    pump(inner.do_handshake)
    return (lambda data: pump(lambda: inner.write(data))), (lambda: pump(lambda: inner.read(65536)))


def test_tls_inside_the_tunnel_bytes_intact(mtls_proxy, pki, tls_origin):
    proxy = mtls_proxy()
    sock, head, rest = tls_tunnel(proxy, pki, "enforce", f"origin.test:{TLS_ORIGIN_PORT}")
    with sock:
        assert head.status == 200 and rest == b""
        send, recv = inner_tls(sock, client_context(pki), "proxy.test")
        payload = os.urandom(1 << 20)
        received = b""
        for offset in range(0, len(payload), 1 << 16):
            send(payload[offset:offset + (1 << 16)])
            while len(received) < offset + min(1 << 16, len(payload) - offset):
                received += recv()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    [close] = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert close["bytes_out"] > len(payload) and close["bytes_in"] > len(payload)


def test_a_stalled_handshake_is_dropped_and_others_are_served(mtls_proxy, pki, echo):
    proxy = mtls_proxy(config="read_header_timeout: 1s\n")
    with socket.create_connection(proxy.address, timeout=10) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
        sock, head, _ = tls_tunnel(proxy, pki, "enforce", "origin.test:7")
        sock.close()
        assert head.status == 200
        started = time.monotonic()
        assert read_until_closed(stalled) == b""
        assert time.monotonic() - started < 5
    [failure] = proxy.records("TLS handshake error", wait_for=1)
    assert failure["error"] == "handshake did not finish in time"


def test_plain_http_on_the_tls_port_is_a_handshake_error(mtls_proxy, pki):
    proxy = mtls_proxy()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
        assert eventually(lambda: proxy.records("TLS handshake error"))
        try:
            read_until_closed(sock)
        except ConnectionResetError:
            pass


def test_proxy_authorization_over_tls(mtls_proxy, pki, echo):
    proxy = mtls_proxy(config="proxy_auth: {password_env: FASTFOG_E2E_PW}\n",
                       acl=ACL.replace("name: open-client", "name: authed"), env={"FASTFOG_E2E_PW": "pw"})
    import base64

    token = base64.b64encode(b"anyone:pw").decode()
    sock, head, _ = tls_tunnel(proxy, pki, "enforce", "origin6.test:7",
                               headers=f"Proxy-Authorization: Basic {token}\r\n".encode())
    sock.close()
    assert head.status == 200  # authed is open: the password decides, not the certificate
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (decision["role"], decision["inbound_remote_x509_cn"]) == ("authed", "enforce-client")


def test_a_role_plugin_reads_the_certificate(mtls_proxy, pki, echo):
    plugins = os.path.join(os.path.dirname(__file__))
    proxy = mtls_proxy(config="role_from_request: plugins.example_roles:by_organizational_unit\n",
                       env={"PYTHONPATH": os.pathsep.join([plugins, os.environ.get("PYTHONPATH", "")])})
    for client, status in (("open", 200), ("enforce", 407)):  # OU payments.webhooks → payments; billing
        sock, head, _ = tls_tunnel(proxy, pki, client, "origin.test:7")
        sock.close()
        assert head.status == status
    roles = [record["role"] for record in proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)]
    assert roles == ["payments", "billing"]


def test_tls_client_through_an_upstream_proxy(mtls_proxy, pki, upstream_proxy, upstream_pki, echo):
    proxy = mtls_proxy(env={"SSL_CERT_FILE": upstream_pki[1]}, acl=ACL.replace(
        "action: open}", "action: open, allowed_external_proxies: [upstream-proxy.test]}"))
    sock, head, rest = tls_tunnel(proxy, pki, "open", "origin.test:7",
                                  headers=b"X-Upstream-Https-Proxy: https://upstream-proxy.test:8443\r\n")
    with sock:
        assert head.status == 200
        payload = os.urandom(300_000)  # more than the transport's high-water mark
        sock.sendall(payload)
        received = rest
        while len(received) < len(payload):
            received += sock.recv(65536)
        assert received == payload
    assert upstream_proxy.requests[0][0] == "origin.test:7"
    [close] = proxy.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert close["bytes_in"] >= len(payload) and close["bytes_out"] == len(payload)


def test_reload_rereads_crls_and_open_tunnels_carry_on(start_proxy, pki, echo, tmp_path):
    import signal

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    crl = tmp_path / "live.crl"
    crl.write_bytes(open(pki["ca.crl"], "rb").read())
    flags = ["--tls-server-bundle-file", pki["proxy"], "--tls-client-ca-file", pki["ca"], "--tls-crl-file", str(crl)]
    proxy = start_proxy(*flags, acl=ACL)
    tunnel, head, _ = tls_tunnel(proxy, pki, "enforce", "origin.test:7")
    assert head.status == 200
    enforce = x509.load_pem_x509_certificate(open(pki["enforce"], "rb").read())
    crl.write_bytes(pki["authorities"]["ca"].crl([enforce]).public_bytes(Encoding.PEM))
    proxy.process.send_signal(signal.SIGHUP)
    [reloaded] = proxy.records("configuration reloaded", wait_for=1)
    assert "TLS files re-read" in reloaded["changes"]
    with tunnel:
        tunnel.sendall(b"open before")
        assert tunnel.recv(100) == b"open before"
    with tls_connect(proxy, pki, "enforce") as sock:
        sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
        with pytest.raises((ConnectionError, ssl.SSLError)):
            if not sock.recv(100):
                raise ConnectionResetError("closed")
    assert proxy.records("TLS handshake error", wait_for=1)[0]["error"] == "client certificate revoked"
    sock, head, _ = tls_tunnel(proxy, pki, "revoked", "origin.test:7")  # the new CRL no longer lists it
    sock.close()
    assert head.status == 200


def test_proxy_protocol_header_before_the_tls_handshake(mtls_proxy, pki, echo):
    proxy = mtls_proxy("--proxy-protocol")
    raw = socket.create_connection(proxy.address, timeout=10)
    raw.sendall(b"PROXY TCP4 192.0.2.50 203.0.113.1 5555 4750\r\n")
    with client_context(pki, "enforce").wrap_socket(raw, server_hostname="proxy.test") as sock:
        sock.sendall(b"CONNECT origin.test:7 HTTP/1.1\r\n\r\n")
        head, _ = read_head(sock)
        assert head.status == 200
    [record] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (record["inbound_remote_addr"], record["role"]) == ("192.0.2.50:5555", "enforce-client")


def test_sni_check_inside_a_tls_client_connection(mtls_proxy, pki, tls_origin):
    proxy = mtls_proxy(config="sni_check: enforce\n")
    sock, head, _ = tls_tunnel(proxy, pki, "enforce", f"origin.test:{TLS_ORIGIN_PORT}")
    with sock:  # the inner ClientHello names proxy.test, not origin.test: closed before the origin sees it
        assert head.status == 200
        with pytest.raises((ConnectionError, ssl.SSLError)):
            inner_tls(sock, client_context(pki), "proxy.test")
    [decision] = proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)
    assert (decision["decision_reason"], decision["tls_sni"], decision["allow"]) == (
        "tls server name does not match CONNECT host", "proxy.test", False)
    report = mtls_proxy(config="sni_check: report\n", port=4751)
    sock, head, _ = tls_tunnel(report, pki, "enforce", f"origin.test:{TLS_ORIGIN_PORT}")
    with sock:
        send, recv = inner_tls(sock, client_context(pki), "proxy.test")
        send(b"inner bytes")
        assert recv() == b"inner bytes"
    [close] = report.records("CANONICAL-PROXY-CN-CLOSE", wait_for=1)
    assert close["tls_sni"] == "proxy.test"
