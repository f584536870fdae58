import pytest

from fastfog import hotpaths

IMPLEMENTATIONS = hotpaths.implementations()


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    """The compiled core and the pure-Python reference in turn, so each report sets them side by side."""
    return IMPLEMENTATIONS[request.param]
