"""Proxy-Authorization roles through a real ``fastfog serve`` (SPEC 5.1)."""

import base64
import socket

import pytest

from fastfog.roles import hash_password

from .client import connect, eventually, exchange, read_head

import netns

ECHO = f"{netns.ORIGIN}:7"


def credentials(user, password):
    return f"Proxy-Authorization: Basic {base64.b64encode(f'{user}:{password}'.encode()).decode()}\r\n".encode()


ACL = """
version: v1
services:
  - {name: webhooks-prod, project: payments, action: enforce, allowed_domains: [origin.test]}
  - {name: billing, project: billing, action: enforce, allowed_domains: [origin6.test]}
default: {project: other, action: enforce}
"""


@pytest.fixture
def auth_config(tmp_path):
    users = tmp_path / "users"
    users.write_text(f"alice:webhooks-prod:{hash_password('alice-pw')}\nbob:billing:{hash_password('bob-pw')}\n")
    return f"proxy_auth: {{users_file: {users}, password_env: FASTFOG_E2E_PW, realm: egress}}\n"


def test_missing_credentials_get_a_challenge_and_the_retry_works(start_proxy, echo, auth_config):
    proxy = start_proxy(config=auth_config, env={"FASTFOG_E2E_PW": "shared-pw"})
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"CONNECT {ECHO} HTTP/1.1\r\n\r\n".encode())
        head, body = read_head(sock)
        assert (head.status, head.reason) == (407, "Proxy Authentication Required")
        fields = {name.decode().lower(): value.decode() for name, value in head.headers}
        assert fields["proxy-authenticate"] == 'Basic realm="egress"'
        assert fields["x-fastfog-reason"] == "auth_required"
        while len(body) < head.content_length:
            body += sock.recv(100)
        # same connection, now with credentials (what .NET and Java clients do)
        sock.sendall(f"CONNECT {ECHO} HTTP/1.1\r\n".encode() + credentials("anyone", "shared-pw") + b"\r\n")
        head, _ = read_head(sock)
        assert head.status == 200
        sock.sendall(b"authed")
        assert sock.recv(10) == b"authed"
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=2)
    assert [(record["allow"], record["role"]) for record in decisions] == [(False, ""), (True, "authed")]


def test_wrong_credentials(start_proxy, echo, auth_config):
    proxy = start_proxy(config=auth_config, env={"FASTFOG_E2E_PW": "shared-pw"})
    sock, head, _ = connect(proxy.address, ECHO, headers=credentials("alice", "nope"))
    sock.close()
    assert head.status == 407
    assert not eventually(lambda: echo.connections > 0, timeout=0.2)


def test_roles_choose_the_acl_rule(start_proxy, echo, auth_config):
    proxy = start_proxy(config=auth_config, acl=ACL, env={"FASTFOG_E2E_PW": "shared-pw"})
    cases = [("alice", "alice-pw", "origin.test:7", 200), ("alice", "alice-pw", "origin6.test:7", 407),
             ("bob", "bob-pw", "origin6.test:7", 200), ("bob", "bob-pw", "origin.test:7", 407),
             ("anyone", "shared-pw", "origin.test:7", 407)]
    for user, password, target, status in cases:
        sock, head, _ = connect(proxy.address, target, headers=credentials(user, password))
        sock.close()
        assert head.status == status, (user, target)
    decisions = proxy.records("CANONICAL-PROXY-DECISION", wait_for=5)
    assert [(record["role"], record["decision_reason"]) for record in decisions] == [
        ("webhooks-prod", "host matched allowed domain in rule"), ("webhooks-prod", "rule has enforce policy"),
        ("billing", "host matched allowed domain in rule"), ("billing", "rule has enforce policy"),
        ("authed", "default rule policy used")]


def test_per_role_limits_are_independent(start_proxy, echo, auth_config):
    proxy = start_proxy(config=auth_config + "role_limits:\n  webhooks-prod: {max_concurrent_connect_tunnels: 1}\n",
                        env={"FASTFOG_E2E_PW": "shared-pw"})
    held = connect(proxy.address, ECHO, headers=credentials("alice", "alice-pw"))[0]
    refused = exchange(proxy.address, f"CONNECT {ECHO} HTTP/1.1\r\n".encode() + credentials("alice", "alice-pw")
                       + b"\r\n")
    assert b"maximum concurrent connect tunnels exceeded" in refused
    others = [connect(proxy.address, ECHO, headers=credentials("bob", "bob-pw"))[0] for _ in range(3)]
    for sock in [held, *others]:
        sock.close()


def test_forwarded_requests_authenticate_and_never_pass_credentials_on(start_proxy, http_origin, auth_config):
    proxy = start_proxy(config=auth_config, env={"FASTFOG_E2E_PW": "shared-pw"})
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(f"GET http://{netns.ORIGIN}/hello HTTP/1.1\r\nHost: x\r\n".encode()
                     + credentials("bob", "bob-pw") + b"\r\n")
        head, _ = read_head(sock)
        assert head.status == 200
    assert all(name.lower() != "proxy-authorization" for name, _ in http_origin.requests[0]["headers"])


def test_missing_credentials_with_allow_missing_role_use_the_default_rule(start_proxy, echo, auth_config):
    proxy = start_proxy(config=auth_config + "allow_missing_role: true\n", env={"FASTFOG_E2E_PW": "shared-pw"})
    sock, head, _ = connect(proxy.address, ECHO)
    sock.close()
    assert head.status == 200
    sock, head, _ = connect(proxy.address, ECHO, headers=credentials("alice", "wrong"))
    sock.close()
    assert head.status == 407  # wrong credentials are never a missing role


def test_htpasswd_bcrypt_lines_are_read_with_their_mapped_roles(start_proxy, echo, tmp_path):
    """An existing Apache password file (htpasswd -B): its users keep their passwords; their
    role comes from user_roles, else proxy_auth.role."""
    import bcrypt

    def htpasswd(password):
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)

    users = tmp_path / "htpasswd"
    users.write_text(f"carol:{htpasswd('carol-pw')}\ndave:{htpasswd('dave-pw')}\n"
                     f"alice:webhooks-prod:{hash_password('alice-pw')}\n")
    config = (f"proxy_auth: {{users_file: {users}, role: billing, user_roles: {{carol: webhooks-prod}}}}\n")
    proxy = start_proxy(config=config, acl=ACL)
    for user, password, target, status in [("carol", "carol-pw", "origin.test:7", 200),  # mapped role
                                           ("dave", "dave-pw", "origin6.test:7", 200),  # proxy_auth.role
                                           ("dave", "dave-pw", "origin.test:7", 407),
                                           ("carol", "wrong", "origin.test:7", 407),
                                           ("alice", "alice-pw", "origin.test:7", 200)]:
        sock, head, _ = connect(proxy.address, target, headers=credentials(user, password))
        sock.close()
        assert head.status == status, (user, target)
    roles = [record["role"] for record in proxy.records("CANONICAL-PROXY-DECISION", wait_for=5)]
    assert roles[:3] == ["webhooks-prod", "billing", "billing"]
