"""Config: YAML keys and flags → one validated Config; errors name the source, key and reason."""

import argparse
import base64
import re
import subprocess
import sys

import pytest
import trustme

from fastfog.cli import add_config_flags, flags_from_args
from fastfog.config import Config, ConfigError, format_duration, load_config, parse_duration
from fastfog.limits import Limits

ACL = "version: v1\nservices:\n  - {name: a, action: enforce, allowed_domains: [example.com]}\n"


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def parse_flags(*argv):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_config_flags(parser)
    args = parser.parse_args(list(argv))
    return args.config_file, flags_from_args(args)


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("1h2m3.5s", 3723.5), ("1.5h", 5400), ("0", 0), ("0s", 0),
    ("2us", 2e-6), ("3µs", 3e-6), ("7ns", 7e-9), ("+5s", 5), ("-5s", -5), (".5s", 0.5), ("1.s", 1),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "", "s", "10 s", "1d", "1.2.3s", "ms", ".s", "5s garbage", 10, 1.5, None])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_formatting_round_trips():
    for seconds in (0, 0.5, 10, 90, 3723.5, 30000):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_defaults_match_smokescreen():
    config = load_config()
    assert config == Config()
    assert (config.ip, config.port, config.connect_timeout, config.dns_timeout, config.exit_timeout) == (
        "", 4750, 10.0, 5.0, 500 * 60.0)
    assert (config.read_header_timeout, config.read_timeout, config.write_timeout) == (300.0, 300.0, 300.0)
    assert (config.network, config.stats_socket_file_mode, config.prometheus_port) == ("ip", 0o700, 9810)
    assert config.acl is None and config.not_yet_supported() == []


def test_every_key_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXY_PASSWORD", "from-the-environment")
    acl = write(tmp_path, ACL, "acl.yaml")
    path = write(tmp_path, f"""
ip: "::1"
port: 4751
connect_timeout: 3s
support_proxy_protocol: true
deny_ranges: [10.0.0.0/8]
allow_ranges: ["2001:db8::/32"]
deny_addresses: ["203.0.113.9:25"]
allow_addresses: ["[2001:db8::1]:443", 198.51.100.7]
acl_file: {acl}
resolver_addresses: ["127.0.0.53:53", "[::1]:5353"]
statsd_address: statsd.local:8125
deny_message_extra: Contact security.
stats_socket_dir: /run/fastfog
stats_socket_file_mode: 750
unsafe_allow_private_ranges: true
max_concurrent_requests: 200
max_request_rate: 100.5
max_request_burst: 300
max_concurrent_connect_tunnels: 1000
dns_timeout: 2s
allow_missing_role: true
network: ip4
idle_timeout: 1m
exit_timeout: 30s
read_header_timeout: 5s
read_timeout: 1m
write_timeout: 2m
transport_max_idle_conns: 100
transport_max_idle_conns_per_host: 10
time_connect: true
workers: 2
log_format: logfmt
proxy_auth: {{password_env: PROXY_PASSWORD, role: authed, realm: fastfog}}
webhook:
  url: https://hooks.internal.example/fastfog/SECRET
  ping_interval: 2m
  events: [ping, connection-stop]
  access_request: {{enabled: true, timeout: 1s, fail_closed: false, cache_ttl: 60s}}
admin_socket: /run/fastfog/admin.sock
sni_check: enforce
role_limits:
  webhooks-prod: {{max_request_rate: 500, max_request_burst: 1000, max_concurrent_requests: 200}}
dns_cache: {{max_entries: 100000, min_ttl: 0s, max_ttl: 300s, negative_ttl: 5s}}
""")
    config = load_config(path)
    assert (config.ip, config.port, config.connect_timeout) == ("::1", 4751, 3.0)
    assert config.deny_ranges == ("10.0.0.0/8",) and config.allow_ranges == ("2001:db8::/32",)
    assert config.allow_addresses == ("[2001:db8::1]:443", "198.51.100.7")
    assert config.resolver_addresses == ("127.0.0.53:53", "[::1]:5353")
    assert config.stats_socket_file_mode == 0o750
    assert (config.max_request_rate, Limits(config).proxy.bucket.burst) == (100.5, 300)
    assert (config.network, config.idle_timeout, config.exit_timeout) == ("ip4", 60.0, 30.0)
    assert config.webhook["access_request"]["cache_ttl"] == 60.0
    assert config.webhook["events"] == ("ping", "connection-stop")
    assert config.role_limits["webhooks-prod"]["max_request_burst"] == 1000
    assert config.dns_cache["max_ttl"] == 300.0
    assert config.acl.decide("a", "example.com", 443).allow
    assert config.source == path
    unsupported = {problem.split(":")[0] for problem in config.not_yet_supported()}
    assert unsupported == set() and config.workers == 2
    assert config.auth.role_of("Basic " + base64.b64encode(b"u:from-the-environment").decode()) == "authed"
    assert "role_limits" not in unsupported and "max_request_rate" not in unsupported


@pytest.mark.parametrize("text, message", [
    ("bogus: 1", "bogus: unknown key"),
    ("expose_prometheus_metrics: true", "expose_prometheus_metrics: unknown key"),
    ("port: x", "port: expected an integer, got 'x'"),
    ("port: 70000", "port: 70000 must be at least 0 and at most 65535"),
    ("port: true", "port: expected an integer, got True"),
    ("connect_timeout: 10", "connect_timeout: expected a duration such as 10s or 1m30s, got 10"),
    ("connect_timeout: 10 s", "connect_timeout: invalid duration '10 s': expected a number and a unit"),
    ("idle_timeout: -1s", "idle_timeout: '-1s' must not be negative"),
    ("deny_ranges: [10.0.0.1]", "deny_ranges: [0]: invalid CIDR address: 10.0.0.1"),
    ("deny_ranges: [10.0.0.0/8, nope/8]", "deny_ranges: [1]: invalid CIDR address: nope/8"),
    ("deny_ranges: 10.0.0.0/8", "deny_ranges: expected a list, got '10.0.0.0/8'"),
    ("allow_addresses: ['1.2.3.4:0']", "allow_addresses: [0]: invalid port number '0'"),
    ("allow_addresses: ['example.com:80']", "allow_addresses: [0]: invalid IP address 'example.com'"),
    ("resolver_addresses: ['8.8.8.8']", "resolver_addresses: [0]: '8.8.8.8' is not host:port"),
    ("resolver_addresses: ['::1:53']", "resolver_addresses: [0]: '::1:53': an IPv6 address needs brackets"),
    ("resolver_addresses: ['dns.local:53']", "resolver_addresses: [0]: 'dns.local:53': 'dns.local' is not an IP"),
    ("statsd_address: localhost", "statsd_address: 'localhost' is not host:port"),
    ("network: tcp", "network: 'tcp' is not one of ip, ip4, ip6"),
    ("ip: localhost", "ip: 'localhost' is not an IP address"),
    ("stats_socket_file_mode: '999'", "stats_socket_file_mode: '999' is not an octal file mode such as 700"),
    ("max_request_rate: -1", "max_request_rate: -1 must not be negative"),
    ("max_request_rate: 10\nmax_request_burst: 10",
     "max_request_burst: 10 must be greater than max_request_rate (10)"),
    ("mitm_ca_key_file: /k.pem", "mitm_ca_cert_file: required when mitm_ca_key_file is set"),
    ("mitm_ca_cert_file: /c.pem", "mitm_ca_key_file: required when mitm_ca_cert_file is set"),
    ("mitm_ca_cert_file: /no/c.pem\nmitm_ca_key_file: /no/k.pem",
     "mitm_ca_cert_file: /no/c.pem: No such file or directory"),
    ("tls: {key_file: /k.pem}", "tls: cert_file: required"),
    ("tls: {cert_file: /c.pem, certfile: x}", "tls: unknown key 'certfile'"),
    ("webhook: {url: https://x/, timeout: 5}", "webhook: timeout: expected a duration"),
    ("webhook: {url: https://x/, events: [ping, pong]}", "webhook: events: [1]: 'pong' is not one of"),
    ("webhook: {url: https://x/, access_request: {enable: true}}", "webhook: access_request: unknown key 'enable'"),
    ("sni_check: on", "sni_check: True is not one of off, report, enforce"),
    ("role_from_request: not a reference", "role_from_request: 'not a reference' is not module:function"),
    ("role_limits: {r: {max_request_rate: 10, max_request_burst: 5}}",
     "role_limits: r: max_request_burst must be greater than max_request_rate"),
    ("role_limits: [a]", "role_limits: expected a mapping keyed by role"),
    ("workers: 0", "workers: 0 must be at least 1"),
    ("- a list", "expected a mapping of keys to values at the top level"),
    ("port: [unclosed", "invalid YAML"),
])
def test_errors_name_file_key_and_reason(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    # A key's own error names its line too; cross-key and file-level ones do not.
    assert re.sub(r"^line \d+, column \d+: ", "", text[len(path) + 2:]).startswith(message)


def test_missing_file_and_acl_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: No such file or directory"):
        load_config(str(tmp_path / "missing.yaml"))
    acl = write(tmp_path, "version: v1\nservices:\n  - {name: a, action: nope}\n", "acl.yaml")
    with pytest.raises(ConfigError, match=r"acl.yaml: unknown action nope$"):
        load_config(write(tmp_path, f"acl_file: {acl}"))


def test_empty_file_and_null_values(tmp_path):
    assert load_config(write(tmp_path, "")) == Config(source=str(tmp_path / "config.yaml"))
    assert load_config(write(tmp_path, "port:\nacl_file:\n")).port == 4750


def test_zero_dns_timeout_means_the_default(tmp_path):
    assert load_config(write(tmp_path, "dns_timeout: 0s")).dns_timeout == 5.0


def test_flags_override_and_append(tmp_path):
    acl = write(tmp_path, ACL, "acl.yaml")
    path = write(tmp_path, "port: 5000\nconnect_timeout: 3s\ndeny_ranges: [10.0.0.0/8]\nmax_request_rate: 5\n")
    config_file, flags = parse_flags(
        "--config-file", path, "--listen-port", "6000", "-deny-range", "192.168.0.0/16",
        "--deny-range=172.16.0.0/12", "--listen-ip", "::1", "--egress-acl-file", acl, "--proxy-protocol",
        "--disable-acl-policy-action", "open", "--max-request-burst", "11", "-timeout=1m")
    config = load_config(config_file, flags)
    assert (config.port, config.ip, config.connect_timeout) == (6000, "::1", 60.0)
    assert config.deny_ranges == ("10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12")
    assert config.support_proxy_protocol and config.disabled_acl_policy_actions == ("open",)
    assert (config.max_request_rate, Limits(config).proxy.bucket.burst) == (5.0, 11)
    assert config.acl is not None


def test_flags_only_when_given(tmp_path):
    path = write(tmp_path, "port: 5000\nsupport_proxy_protocol: true\n")
    config_file, flags = parse_flags("--config-file", path)
    config = load_config(config_file, flags)
    assert config.port == 5000 and config.support_proxy_protocol


@pytest.mark.parametrize("argv, message", [
    (["--listen-port", "x"], "--listen-port: expected an integer, got 'x'"),
    (["--deny-range", "bad"], "--deny-range: [0]: invalid CIDR address: bad"),
    (["--timeout", "5"], "--timeout: invalid duration '5': expected a number and a unit"),
    (["--max-request-rate", "abc"], "--max-request-rate: expected a number, got 'abc'"),
    (["--listen-ip", "[::1"], "--listen-ip: '[::1' is not an IP address"),
    (["--tls-client-ca-file", "/ca.pem"], "--tls-client-ca-file, --tls-crl-file: need a server certificate"),
])
def test_flag_errors_name_the_flag(argv, message):
    config_file, flags = parse_flags(*argv)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, flags)
    assert str(caught.value).startswith(message)


def test_bracketed_and_bare_ipv6_listen_address():
    for spelling in ("::1", "[::1]"):
        assert load_config(None, parse_flags("--listen-ip", spelling)[1]).ip == "::1"


def test_disabled_action_flag_is_checked():
    with pytest.raises(SystemExit):
        parse_flags("--disable-acl-policy-action")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("proxy.test")
    bundle = folder / "bundle.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(bundle))
    cert, key = folder / "cert.pem", folder / "key.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"bundle": str(bundle), "cert": str(cert), "key": str(key), "ca": str(ca_file), "dir": folder}


def test_tls_files_are_loaded(tmp_path, pki):
    config = load_config(write(tmp_path, f"tls: {{cert_file: {pki['cert']}, key_file: {pki['key']}, "
                                         f"client_ca_files: [{pki['ca']}]}}"))
    assert config.tls["client_ca_files"] == (pki["ca"],)
    config = load_config(None, parse_flags("--tls-server-bundle-file", pki["bundle"],
                                           "--tls-client-ca-file", pki["ca"])[1])
    assert (config.tls["cert_file"], config.tls["key_file"]) == (pki["bundle"], None)


def test_bad_tls_files_name_the_key_and_file(tmp_path, pki):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for text, key in ((f"tls: {{cert_file: {garbage}}}", "tls.cert_file"),
                      (f"tls: {{cert_file: {pki['cert']}}}", "tls.cert_file"),
                      (f"tls: {{cert_file: {pki['bundle']}, client_ca_files: [{garbage}]}}", "tls.client_ca_files"),
                      (f"tls: {{cert_file: {pki['bundle']}, crl_files: [{tmp_path / 'none.crl'}]}}", "tls.crl_files")):
        with pytest.raises(ConfigError, match=f": {key}: "):
            load_config(write(tmp_path, text))


# --- fastfog check-config, as a user runs it --------------------------------------------

def run_check_config(path, *more):
    return subprocess.run([sys.executable, "-m", "fastfog", "check-config", path, *more], capture_output=True,
                          text=True, timeout=60)


def test_check_config_prints_the_configuration(tmp_path):
    acl = write(tmp_path, ACL, "acl.yaml")
    result = run_check_config(write(tmp_path, f"acl_file: {acl}\nconnect_timeout: 1m30s\nport: 4751\n"))
    assert result.returncode == 0, result.stderr
    assert "port: 4751\n" in result.stdout and "connect_timeout: 1m30s\n" in result.stdout
    assert "action: enforce" in result.stdout
    assert "no default rule set" in result.stderr


def test_check_config_failure(tmp_path):
    path = write(tmp_path, "port: 4751\nbogus_key: true\n")
    result = run_check_config(path)
    assert result.returncode == 1
    assert result.stderr == f"Failed to load config: {path}: line 2, column 1: bogus_key: unknown key\n"
    assert result.stdout == ""


def test_proxy_auth_errors_name_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTFOG_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"config.yaml: proxy_auth: password_env: the environment variable "
                                          r"FASTFOG_NOT_SET is not set or empty$"):
        load_config(write(tmp_path, "proxy_auth: {password_env: FASTFOG_NOT_SET}\n"))
    users = tmp_path / "users"
    users.write_text("broken line\n")
    with pytest.raises(ConfigError, match=r"proxy_auth: .*users:1: expected user:role:scrypt"):
        load_config(write(tmp_path, f"proxy_auth: {{users_file: {users}}}\n"))


def test_role_plugins_are_loaded_at_load_time(tmp_path):
    config = load_config(write(tmp_path, "role_from_request: os.path:basename\n"))
    assert config.role_plugin("/a/b") == "b"
    with pytest.raises(ConfigError, match=r"role_from_request: cannot load no_such_module:f: ModuleNotFoundError"):
        load_config(write(tmp_path, "role_from_request: no_such_module:f\n"))
    with pytest.raises(ConfigError, match=r"role_from_request: os:sep is not callable"):
        load_config(write(tmp_path, "role_from_request: os:sep\n"))
    with pytest.raises(ConfigError, match=r"role_from_request: cannot be combined with proxy_auth"):
        load_config(write(tmp_path, "role_from_request: os.path:basename\nproxy_auth: {password_env: HOME}\n"))


def test_serve_refuses_a_bad_flag():
    bad = subprocess.run([sys.executable, "-m", "fastfog", "serve", "--listen-port", "x"], capture_output=True,
                         text=True, timeout=60)
    assert (bad.returncode, bad.stderr) == (1, "Could not create configuration: --listen-port: expected an integer, "
                                               "got 'x'\n")
    extra = subprocess.run([sys.executable, "-m", "fastfog", "serve", "unexpected"], capture_output=True, text=True,
                           timeout=60)
    assert extra.returncode == 2 and "unrecognized arguments: unexpected" in extra.stderr


def test_check_config_takes_an_acl_file_alone_or_beside_a_config(tmp_path):
    acl = tmp_path / "acl.yaml"
    acl.write_text("version: v1\nservices:\n  - {name: hooks, action: enforce, allowed_domains: [a.example]}\n")
    alone = run_check_config(str(acl))
    assert alone.returncode == 0, alone.stderr
    assert "hooks:" in alone.stdout and "no default rule set" in alone.stderr
    config = tmp_path / "config.yaml"
    config.write_text("port: 4751\n")
    beside = run_check_config(str(config), "--acl", str(acl))
    assert beside.returncode == 0 and "hooks:" in beside.stdout
    # An ACL and no way to learn a role: everything would be denied. Said, not refused.
    assert "every request would be denied 'Client role cannot be determined'" in beside.stderr
    acl.write_text("version: v1\nservices:\n  - {name: hooks, action: enforce, alowed_domains: [a.example]}\n")
    broken = run_check_config(str(acl))
    assert broken.returncode == 1
    assert broken.stderr == (f"Failed to load ACL: {acl}: service 'hooks': line 3, column 36: services[0]: unknown key "
                             "'alowed_domains' (did you mean 'allowed_domains'?)\n")


def test_check_config_reports_every_error_not_only_the_first(tmp_path):
    acl = tmp_path / "acl.yaml"
    acl.write_text("version: v1\nservices:\n  - {name: a, action: block}\n  - {name: b, action: open, "
                   "allowed_domains: ['*']}\n  - {name: c, action: open}\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"listen_port: 1\nconnect_timeout: 10\nacl_file: {acl}\n")
    result = run_check_config(str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Failed to load config: {config}: line 1, column 1: listen_port: unknown key (did you mean 'port'?)",
        f"Failed to load config: {config}: line 2, column 1: connect_timeout: expected a duration such as 10s or 1m30s,"
        " got 10",
        f"Failed to load config: {acl}: service 'a': unknown action block",
        f"Failed to load config: {acl}: service 'b': b: *: domain glob must not match everything",
    ]
