"""Proxy-Authorization roles: password hashing, users files, credentials."""

import base64
import subprocess
import sys

import pytest

from fastfog import roles
from fastfog.roles import ProxyAuth, RoleError, basic_credentials


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text("# webhook senders\n"
                    f"alice:webhooks-prod:{roles.hash_password('alice-pw')}\n\n"
                    f"bob:billing:{roles.hash_password('bob:pw:with:colons')}\n")
    return str(path)


def test_hash_round_trip():
    stored = roles.hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert roles._check_hash("correct horse", stored)
    assert not roles._check_hash("correct horsE", stored)
    assert roles.hash_password("x") != roles.hash_password("x")  # salted


@pytest.mark.parametrize("value, expected", [
    (basic("u", "p"), ("u", "p")),
    (basic("u", "p:q"), ("u", "p:q")),
    (basic("", "p"), ("", "p")),
    ("basic " + base64.b64encode(b"u:p").decode(), ("u", "p")),
    ("Bearer abc", None),
    ("Basic !!!", None),
    ("Basic " + base64.b64encode(b"no colon").decode(), None),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
])
def test_basic_credentials(value, expected):
    assert basic_credentials(value) == expected


def test_users_file_and_shared_password(users_file):
    auth = ProxyAuth({"users_file": users_file, "password_env": "FASTFOG_TEST_PW", "role": "shared"},
                     environ={"FASTFOG_TEST_PW": "fly-style"})
    assert auth.role_of(basic("alice", "alice-pw")) == "webhooks-prod"
    assert auth.role_of(basic("alice", "alice-pw")) == "webhooks-prod"  # from the verified cache
    assert auth.role_of(basic("bob", "bob:pw:with:colons")) == "billing"
    assert auth.role_of(basic("anyone", "fly-style")) == "shared"
    assert auth.role_of(basic("alice", "wrong")) is None
    assert auth.role_of(basic("carol", "alice-pw")) is None
    assert auth.role_of("Digest x") is None
    assert auth.realm == "fastfog"


@pytest.mark.parametrize("content, message", [
    ("alice:role\n", "users:1: expected user:role:scrypt"),
    ("alice:role:plaintext\n", "users:1: expected user:role:scrypt"),
    (":role:scrypt$1$1$1$a$b\n", "users:1: expected user:role:scrypt"),
    ("a:r:scrypt$1$1$1$a$b\na:s:scrypt$1$1$1$a$b\n", "users:2: user 'a' is listed twice"),
])
def test_bad_users_files(tmp_path, content, message):
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(RoleError, match=message):
        ProxyAuth({"users_file": str(path)})


def test_configuration_errors(tmp_path):
    with pytest.raises(RoleError, match="FASTFOG_UNSET_PW is not set"):
        ProxyAuth({"password_env": "FASTFOG_UNSET_PW"}, environ={})
    with pytest.raises(RoleError, match="needs password_env or a users_file"):
        ProxyAuth({})
    with pytest.raises(RoleError, match="No such file"):
        ProxyAuth({"users_file": str(tmp_path / "missing")})


def test_hash_password_command():
    result = subprocess.run([sys.executable, "-m", "fastfog", "hash-password", "alice", "webhooks"],
                            input="pw\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    user, role, stored = result.stdout.strip().split(":", 2)
    assert (user, role) == ("alice", "webhooks") and roles._check_hash("pw", stored)
    bad = subprocess.run([sys.executable, "-m", "fastfog", "hash-password", "a:b", "r"], input="pw\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
