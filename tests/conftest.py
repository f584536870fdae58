import os

import pytest
from hypothesis import HealthCheck, settings

from fastfog import hotpaths

settings.register_profile("default", deadline=None, max_examples=200)
settings.register_profile(
    "ci", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

IMPLEMENTATIONS = hotpaths.implementations()

needs_core = pytest.mark.skipif(
    "core" not in IMPLEMENTATIONS, reason="compiled core disabled by FASTFOG_NO_EXTENSIONS"
)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    """Each implementation of the hot paths in turn: the compiled core and its pure-Python twin."""
    return IMPLEMENTATIONS[request.param]
