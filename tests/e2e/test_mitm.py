"""Per-domain TLS interception (Smokescreen's mitm_domains, SPEC 3.6) through a real proxy: a
client that trusts the MITM CA, an HTTPS origin with a certificate of its own CA."""

import signal
import socket
import ssl

import pytest
from cryptography import x509
from pki import Authority, key_pem, pem

from .client import read_head
from .conftest import HttpOrigin
from .test_metrics import samples, scrape

import netns

ACL = """
version: v1
services: []
default:
  project: partners
  action: enforce
  allowed_domains: [origin.test, origin6.test]
  mitm_domains:
    - domain: origin.test
      add_headers: {X-Partner-Key: secret-the-senders-never-hold}
      detailed_http_logs: true
      detailed_http_logs_full_headers: [User-Agent]
"""


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    """The MITM CA (files for fastfog), and the origin's own CA (its file for SSL_CERT_FILE)."""
    folder = tmp_path_factory.mktemp("mitm")
    mitm, other, origin_ca = Authority("fastfog MITM CA"), Authority("another MITM CA"), Authority("origin CA")
    files = {}
    for name, authority in (("mitm", mitm), ("other", other)):
        (folder / f"{name}.pem").write_bytes(pem(authority.cert))
        (folder / f"{name}.key").write_bytes(key_pem(authority.key))
        files[name] = (str(folder / f"{name}.pem"), str(folder / f"{name}.key"))
    (folder / "origin-ca.pem").write_bytes(pem(origin_ca.cert))
    key, cert = origin_ca.issue("origin.test", server_names=["origin.test"])
    (folder / "origin.pem").write_bytes(pem(cert) + key_pem(key))
    files["origin_ca"] = str(folder / "origin-ca.pem")
    files["origin"] = str(folder / "origin.pem")
    return files


@pytest.fixture
def https_origin(background, cas):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cas["origin"])
    origin = HttpOrigin(background, netns.ORIGIN, 443, ssl=context)
    yield origin
    background.loop.call_soon_threadsafe(origin.server.close)


def mitm_proxy(start_proxy, tmp_path, cas, *flags, ca="mitm", trust_origin=True):
    cert, key = cas[ca]
    config = tmp_path / "mitm-config.yaml"
    config.write_text(f"allow_missing_role: true\nmitm_ca_cert_file: {cert}\nmitm_ca_key_file: {key}\n")
    proxy = start_proxy("--config-file", str(config), *flags, acl=ACL,
                        env={"SSL_CERT_FILE": cas["origin_ca"]} if trust_origin else None)
    return proxy, config


def intercepted(proxy, ca_file, host="origin.test", port=443):
    """A tunnel through the proxy, then TLS with whatever answers inside, trusting ``ca_file``."""
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
    head, _ = read_head(sock)
    assert head.status == 200, head
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context.wrap_socket(sock, server_hostname=host)


def get(tls, target, host="origin.test", extra=b""):
    tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: webhook-sender/1\r\n"
                f"Authorization: Bearer hush\r\n".encode() + extra + b"\r\n")
    head, rest = read_head(tls)
    body = rest
    while len(body) < (head.content_length or 0):
        body += tls.recv(65536)
    return head, body


def test_requests_inside_are_decided_again_forwarded_and_logged(start_proxy, tmp_path, cas, https_origin):
    proxy, _ = mitm_proxy(start_proxy, tmp_path, cas)
    with intercepted(proxy, cas["mitm"][0]) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"  # HTTP/2 clients fall back cleanly
        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["origin.test"]
        head, body = get(tls, "/hello")
        assert (head.status, body) == (200, b"hello from the origin")
        # Other hosts in the same tunnel are decided again, with the CONNECT's role: one the rule
        # allows is dialed (nothing listens there: 502), one it does not is denied.
        head, body = get(tls, "https://origin6.test/hello", host="origin6.test")
        assert head.status == 502 and b"connection refused" in body
        head, _ = get(tls, "https://elsewhere.test/", host="elsewhere.test")
        assert head.status == 407
    [request] = [r for r in https_origin.requests if r["target"] == "/hello"]
    assert ("x-partner-key", "secret-the-senders-never-hold") in request["headers"]
    records = proxy.records("CANONICAL-PROXY-DECISION", wait_for=4)
    inner = [record for record in records if record.get("mitm_req_url") == "https://origin.test:443/hello"]
    assert inner and inner[0]["mitm_req_method"] == "GET" and inner[0]["allow"]
    assert inner[0]["mitm_req_headers"]["User-Agent"] == ["webhook-sender/1"]
    assert inner[0]["mitm_req_headers"]["Authorization"] == ["[REDACTED]"]
    denied = [record for record in records if record["requested_host"] == "elsewhere.test"]
    assert denied and denied[0]["decision_reason"] == "default rule policy used" and not denied[0]["allow"]


def test_leaves_are_minted_once_per_host(start_proxy, tmp_path, cas, https_origin):
    proxy, _ = mitm_proxy(start_proxy, tmp_path, cas, "--expose-prometheus-metrics", "--prometheus-listen-ip",
                          netns.PROXY)
    serials = []
    for _ in range(2):
        with intercepted(proxy, cas["mitm"][0]) as tls:
            serials.append(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number)
            assert get(tls, "/hello")[0].status == 200
    assert serials[0] == serials[1]
    assert samples(scrape(netns.PROXY)[1])['fastfog_mitm_requests{outcome="forwarded",role=""}'] == 2


def test_an_origin_whose_certificate_does_not_verify_is_a_502_and_a_deny(start_proxy, tmp_path, cas, https_origin):
    proxy, _ = mitm_proxy(start_proxy, tmp_path, cas, trust_origin=False)
    with intercepted(proxy, cas["mitm"][0]) as tls:
        head, body = get(tls, "/hello")
    assert head.status == 502 and b"certificate verify failed" in body
    record = [r for r in proxy.records("CANONICAL-PROXY-DECISION", wait_for=2) if r.get("status_code") == 502][0]
    assert record["allow"] is False and "certificate verify failed" in record["decision_reason"]
    assert https_origin.requests == []


def test_a_reload_takes_a_new_mitm_ca(start_proxy, tmp_path, cas, https_origin):
    proxy, config = mitm_proxy(start_proxy, tmp_path, cas)
    cert, key = cas["other"]
    config.write_text(f"allow_missing_role: true\nmitm_ca_cert_file: {cert}\nmitm_ca_key_file: {key}\n")
    proxy.process.send_signal(signal.SIGHUP)
    assert proxy.records("configuration reloaded", wait_for=1)
    with intercepted(proxy, cert) as tls:
        assert get(tls, "/hello")[0].status == 200
    config.write_text(f"allow_missing_role: true\nmitm_ca_cert_file: {cert}\nmitm_ca_key_file: {cas['mitm'][1]}\n")
    proxy.process.send_signal(signal.SIGHUP)
    [failed] = proxy.records("configuration reload failed; still serving with the previous configuration",
                             wait_for=1)
    assert "mitm_ca_key_file" in failed["error"] and "not the key of" in failed["error"]


def test_sni_for_another_name_is_refused_under_enforce(start_proxy, tmp_path, cas, https_origin):
    cert, key = cas["mitm"]
    proxy = start_proxy(acl=ACL, config=f"allow_missing_role: true\nsni_check: enforce\nmitm_ca_cert_file: {cert}\n"
                                        f"mitm_ca_key_file: {key}\n", env={"SSL_CERT_FILE": cas["origin_ca"]})
    sock = socket.create_connection(proxy.address, timeout=10)
    sock.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\n\r\n")
    assert read_head(sock)[0].status == 200
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        with context.wrap_socket(sock, server_hostname="evil.test") as tls:
            get(tls, "/hello")
    record = [r for r in proxy.records("CANONICAL-PROXY-DECISION", wait_for=2) if not r["allow"]][0]
    assert record["decision_reason"] == "tls server name does not match CONNECT host"
    assert (record["project"], record["tls_sni"]) == ("partners", "evil.test")  # as on a relayed tunnel
    assert https_origin.requests == []
