"""role_from_request plugins through a real ``fastfog serve`` (SPEC 5.11)."""

import os
import pathlib

import pytest

from .client import connect

import netns

ECHO = f"{netns.ORIGIN}:7"
ACL = """
version: v1
services:
  - {name: doc-net, action: open}
  - {name: payments, action: enforce, allowed_domains: [origin.test]}
default: {action: enforce}
"""
PLUGINS = str(pathlib.Path(__file__).parent)


@pytest.fixture
def plugin_proxy(start_proxy):
    def start(function, extra=""):
        env = {"PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}
        return start_proxy(acl=ACL, config=f"role_from_request: plugins.example_roles:{function}\n{extra}", env=env)
    return start


def test_role_from_the_client_address(plugin_proxy, echo):
    proxy = plugin_proxy("by_client_network")
    sock, head, _ = connect(proxy.address, ECHO)
    sock.close()
    assert head.status == 200
    assert proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]["role"] == "doc-net"


@pytest.mark.parametrize("service, target, status, reason", [
    (b"payments", "origin.test:7", 200, "host matched allowed domain in rule"),
    (b"payments", "mixed.test:7", 407, "rule has enforce policy"),
    (b"refused", "origin.test:7", 407, "Client role cannot be determined"),
    (None, "origin.test:7", 407, "Client role cannot be determined"),
])
def test_role_from_a_header(plugin_proxy, echo, service, target, status, reason):
    proxy = plugin_proxy("by_service_header")
    headers = b"X-Service: " + service + b"\r\n" if service else b""
    sock, head, _ = connect(proxy.address, target, headers=headers)
    sock.close()
    assert head.status == status
    assert proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]["decision_reason"] == reason


def test_no_role_with_allow_missing_role_uses_the_default_rule(plugin_proxy, echo):
    proxy = plugin_proxy("by_service_header", "allow_missing_role: true\n")
    sock, head, _ = connect(proxy.address, ECHO)
    sock.close()
    assert proxy.records("CANONICAL-PROXY-DECISION", wait_for=1)[0]["decision_reason"] == "default rule policy used"
