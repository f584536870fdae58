"""Validated live reload through a real ``fastfog serve``: SIGHUP and the admin socket (SPEC 4.3, 5.3)."""

import json
import os
import signal
import socket
import stat

from .client import connect, eventually, read_until_closed

ECHO_ALLOWED = "origin.test:7"
ACL = """
version: v1
services:
  - {name: webhooks, project: payments, action: enforce, allowed_domains: [origin.test]}
default: {project: other, action: enforce}
"""
NEW_ACL = """
version: v1
services:
  - {name: webhooks, project: payments, action: enforce, allowed_domains: [origin6.test]}
  - {name: billing, project: billing, action: open}
default: {project: other, action: enforce}
"""


def admin(path, method, target):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: fastfog\r\n\r\n".encode())
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def proxy_with_acl(start_proxy, tmp_path, config="allow_missing_role: true\n"):
    acl = tmp_path / "reloadable-acl.yaml"
    acl.write_text(ACL.replace("default: {project: other, action: enforce}",
                               "default: {project: other, action: enforce, allowed_domains: [origin.test]}"))
    proxy = start_proxy("--egress-acl-file", str(acl), config=config)
    return proxy, acl


def status_for(proxy, target):
    sock, head, _ = connect(proxy.address, target)
    sock.close()
    return head.status


def test_sighup_applies_a_valid_acl_and_open_tunnels_carry_on(start_proxy, tmp_path, echo):
    proxy, acl = proxy_with_acl(start_proxy, tmp_path)
    tunnel, head, _ = connect(proxy.address, ECHO_ALLOWED)
    assert head.status == 200
    acl.write_text(NEW_ACL.replace("default: {project: other, action: enforce}",
                                   "default: {project: other, action: enforce, allowed_domains: [origin6.test]}"))
    proxy.process.send_signal(signal.SIGHUP)
    [reloaded] = proxy.records("configuration reloaded", wait_for=1)
    assert reloaded["changes"] == ["role added: billing", "role changed: webhooks", "default rule changed"]
    assert reloaded["trigger"] == "SIGHUP"
    with tunnel:  # opened under the old rules, still relaying
        tunnel.sendall(b"still here")
        assert tunnel.recv(100) == b"still here"
    assert status_for(proxy, ECHO_ALLOWED) == 407
    assert status_for(proxy, "origin6.test:7") == 200
    assert proxy.process.poll() is None


def test_sighup_with_a_broken_acl_keeps_the_old_rules(start_proxy, tmp_path, echo):
    proxy, acl = proxy_with_acl(start_proxy, tmp_path)
    acl.write_text("version: v1\nservices:\n  - {name: x, action: sometimes}\n")
    proxy.process.send_signal(signal.SIGHUP)
    [failed] = proxy.records("configuration reload failed; still serving with the previous configuration",
                             wait_for=1)
    assert str(acl) in failed["error"] and "sometimes" in failed["error"]
    assert status_for(proxy, ECHO_ALLOWED) == 200
    assert proxy.process.poll() is None


def test_admin_socket_reload_and_status(start_proxy, tmp_path, echo):
    path = str(tmp_path / "admin.sock")
    proxy, acl = proxy_with_acl(start_proxy, tmp_path, config=f"allow_missing_role: true\nadmin_socket: {path}\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    status, body = admin(path, "GET", "/status")
    assert status == 200
    assert (body["reloads"], body["last_reload"], body["tls"]) == (0, None, False)
    assert body["dns_cache"] == {"entries": 0, "bytes": 0, "max_bytes": 32 << 20}
    assert sorted(body["acl"]["services"]) == ["webhooks"]
    acl.write_text(NEW_ACL)
    status, body = admin(path, "POST", "/reload")
    assert status == 200 and body["ok"] and body["trigger"] == "admin socket"
    assert "role added: billing" in body["changes"]
    acl.write_text("version: v2\n")
    status, body = admin(path, "POST", "/reload")
    assert status == 422 and not body["ok"] and "version" in body["error"]
    status, body = admin(path, "GET", "/status")
    assert body["reloads"] == 1 and body["last_reload"]["ok"] is False
    assert sorted(body["acl"]["services"]) == ["billing", "webhooks"]
    assert admin(path, "GET", "/reload")[0] == 405
    assert admin(path, "GET", "/nothing")[0] == 404
    proxy.stop()
    assert not os.path.exists(path)


def test_settings_of_the_process_need_a_restart(start_proxy, tmp_path, echo):
    config = tmp_path / "reload-config.yaml"
    config.write_text("allow_missing_role: true\nlog_format: json\nmax_request_rate: 100\n")
    proxy = start_proxy("--config-file", str(config))
    config.write_text("allow_missing_role: true\nlog_format: logfmt\nmax_request_rate: 1\n")
    proxy.process.send_signal(signal.SIGHUP)
    [reloaded] = proxy.records("configuration reloaded", wait_for=1)
    assert reloaded["changes"] == ["max_request_rate changed",
                                   "log_format changed (takes effect after a restart)"]
    assert eventually(lambda: [status_for(proxy, ECHO_ALLOWED) for _ in range(3)].count(429) >= 1)


def test_a_duplicate_key_is_refused_at_reload_and_by_check_config(start_proxy, tmp_path, echo):
    """``action: enforce`` then ``action: open`` in one rule: YAML would let the second win and
    switch enforcement off; fastfog refuses the file and keeps serving with the old one."""
    import subprocess
    import sys

    proxy, acl = proxy_with_acl(start_proxy, tmp_path)
    assert status_for(proxy, "origin6.test:7") == 407
    acl.write_text("version: v1\nservices: []\ndefault:\n  project: other\n  action: enforce\n  action: open\n")
    proxy.process.send_signal(signal.SIGHUP)
    [failed] = proxy.records("configuration reload failed; still serving with the previous configuration",
                             wait_for=1)
    assert failed["error"] == f"{acl}: line 6, column 3: action: duplicate key (first given on line 5)"
    assert status_for(proxy, "origin6.test:7") == 407  # still enforced
    assert status_for(proxy, ECHO_ALLOWED) == 200
    config = tmp_path / "check.yaml"
    config.write_text(f"acl_file: {acl}\n")
    checked = subprocess.run([sys.executable, "-m", "fastfog", "check-config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1 and "line 6, column 3: action: duplicate key" in checked.stderr
