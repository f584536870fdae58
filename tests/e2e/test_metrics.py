"""Metrics after real proxied requests: the Prometheus endpoint and DogStatsD lines (SPEC 4.2)."""

import os
import pathlib
import re
import socket
import time

import pytest

from .client import connect, eventually

import netns

PLUGINS = str(pathlib.Path(__file__).parent)
STATSD = ("203.0.113.12", 8125)
ACL = """
version: v1
services:
  - {name: webhooks, project: payments, action: enforce, allowed_domains: [origin.test, private.test]}
  - {name: "we|ird:role", project: odd, action: open}
default: {project: other, action: enforce}
"""


@pytest.fixture
def statsd():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(STATSD)
    listener.settimeout(0.2)
    yield listener
    listener.close()


def scrape(host, port=9810, path="/metrics"):
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text):
    """{'name{labels}': value} of a Prometheus text page."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def tunnel(proxy, service, target):
    sock, head, _ = connect(proxy.address, target, headers=f"X-Service: {service}\r\n".encode())
    with sock:
        if head.status == 200:
            sock.sendall(b"12345")
            assert sock.recv(10) == b"12345"
    return head.status


def test_prometheus_and_statsd_after_real_requests(start_proxy, echo, statsd):
    env = {"PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}
    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY,
                        "--statsd-address", f"{STATSD[0]}:{STATSD[1]}", acl=ACL, env=env,
                        config="role_from_request: plugins.example_roles:by_service_header\ntime_connect: true\n")
    assert tunnel(proxy, "webhooks", "origin.test:7") == 200
    assert tunnel(proxy, "webhooks", "origin6.test:7") == 407  # ACL enforce
    assert tunnel(proxy, "webhooks", "private.test:7") == 407  # resolver: private range
    assert tunnel(proxy, "we|ird:role", "origin.test:1") == 502  # refused
    assert tunnel(proxy, "we|ird:role", f"{netns.ORIGIN}:7") == 200  # an IP literal: no lookup
    assert eventually(lambda: len(proxy.records("CANONICAL-PROXY-CN-CLOSE")) == 2)
    status, text = scrape(netns.PROXY)
    assert status == 200
    found = samples(text)
    webhooks = 'project="payments",role="webhooks"'
    odd = 'project="odd",role="we_ird_role"'
    expected = {
        f'acl_allow{{def_rule="false",{webhooks}}}': 2,
        f'acl_deny{{def_rule="false",{webhooks}}}': 1,
        f'acl_allow{{def_rule="false",{odd}}}': 2,
        "resolver_attempts_total": 3,
        "resolver_errors_total": 1,
        "resolver_deny_private_range": 1,
        "resolver_allow_default": 3,
        'cn_atpt_total{success="true"}': 2,
        'cn_atpt_total{success="false"}': 1,
        'cn_atpt_connect_err{type="refused"}': 1,
        f"cn_close{{{webhooks}}}": 1,
        f"cn_close{{{odd}}}": 1,
        f"cn_bytes_in_count{{{webhooks}}}": 1,
        f"cn_bytes_in_sum{{{webhooks}}}": 10,  # the echo and its "<EOF>"
        f'cn_bytes_in_bucket{{{webhooks},le="256.0"}}': 1,
        "cn_atpt_connect_time_timer_count": 2,
        "resolver_lookup_time_timer_count": 3,
        "proxy_duration_ms_timer_count": 2,
        "requests_concurrent": 0,
    }
    assert {key: found.get(key) for key in expected} == expected
    assert "# TYPE acl_allow counter" in text and "# TYPE cn_duration histogram" in text
    assert not any(name.endswith("_total_total") or re.match(r"acl_\w+_total", name) for name in found)
    assert scrape(netns.PROXY, path="/other")[0] == 404
    lines = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # everything sent so far: until the listener goes quiet
        try:
            lines += statsd.recv(65536).decode().split("\n")
        except socket.timeout:
            if lines:
                break
    assert "smokescreen.acl.allow:1|c|#def_rule:false,project:payments,role:webhooks" in lines
    assert "smokescreen.cn.atpt.connect.err:1|c|#type:refused" in lines
    assert "smokescreen.resolver.deny.private_range:1|c" in lines
    assert any(re.fullmatch(r"smokescreen\.cn\.atpt\.connect\.time:[\d.e-]+\|ms", line) for line in lines)
    assert "smokescreen.cn.bytes_in:10|h|#project:payments,role:webhooks" in lines
    assert any(line.startswith("smokescreen.cn.close:1|c|#project:") for line in lines)


def test_statsd_without_a_listener_drops_without_slowing_anything(start_proxy, echo):
    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY,
                        "--statsd-address", "203.0.113.12:8126", config="allow_missing_role: true\n")
    for _ in range(3):
        sock, head, _ = connect(proxy.address, "origin.test:7")
        sock.close()
        assert head.status == 200
    assert eventually(lambda: samples(scrape(netns.PROXY)[1]).get("fastfog_statsd_dropped", 0) >= 1)
    assert proxy.records("statsd datagrams dropped", wait_for=1)


def test_every_family_has_help_and_the_page_parses_with_prometheus_client(start_proxy, echo):
    """prometheus-client's own parser is the oracle; process figures and build info are there."""
    from prometheus_client.parser import text_string_to_metric_families

    from fastfog import hotpaths

    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY)
    tunnel(proxy, "x", "origin.test:7")
    tunnel(proxy, "x", "private.test:7")  # a deny: resolver.deny.private_range
    status, text = scrape(netns.PROXY)
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(text)}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert types <= helps, types - helps  # every family has its help text
    assert families["resolver_deny_private_range"].documentation == "Destination addresses denied: private range."
    assert families["process_open_fds"].samples[0].value > 5
    assert families["process_max_fds"].samples[0].value >= 1024
    assert families["process_cpu_seconds"].type == "counter"
    [info] = families["fastfog_build_info"].samples
    assert info.labels["core"] == ("compiled" if hotpaths.COMPILED else "pure") and info.value == 1


def test_promtool_finds_only_the_name_warnings_smokescreens_names_bring(start_proxy, echo):
    """Every family has help text; what promtool still says is about names kept for Smokescreen's
    dashboards (no _total, _ms units), which the README explains."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    proxy = start_proxy("--expose-prometheus-metrics", "--prometheus-listen-ip", netns.PROXY)
    tunnel(proxy, "x", "origin.test:7")
    tunnel(proxy, "x", "private.test:7")
    _, text = scrape(netns.PROXY)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems, "promtool said nothing: is this the page?"
    for line in problems:
        assert line.endswith(('should have "_total" suffix', "should not contain abbreviated units")), line
