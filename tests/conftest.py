import os

import pytest
from hypothesis import HealthCheck, settings

import netns

settings.register_profile("default", deadline=None, max_examples=200)
settings.register_profile(
    "ci", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

from support import IMPLEMENTATIONS  # noqa: E402


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    """Each implementation of the hot paths in turn: the compiled core and its pure-Python twin."""
    return IMPLEMENTATIONS[request.param]


def pytest_configure(config):
    config.netns = netns.enter()
    if not config.netns and os.environ.get("CI"):
        raise pytest.UsageError(f"end-to-end tests need a private network namespace: {netns.unavailable_reason}")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=netns.unavailable_reason or "no private network namespace")
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.netns)
        if not config.netns and "netns" in item.keywords:
            item.add_marker(skip)
