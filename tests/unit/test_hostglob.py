"""The host-glob set, against both implementations and against a scan of every entry."""

import pytest
from support import IMPLEMENTATIONS
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("entries, host, expected", [
    # exact names match only themselves
    (["example.com"], "example.com", "example.com"),
    (["example.com"], "www.example.com", None),
    (["example.com"], "example.co", None),
    (["example.com"], "xexample.com", None),
    # a leading wildcard matches subdomains at any depth, never the apex
    (["*.example.com"], "example.com", None),
    (["*.example.com"], "a.example.com", "*.example.com"),
    (["*.example.com"], "a.b.c.example.com", "*.example.com"),
    (["*.example.com"], "aexample.com", None),
    (["*.example.com"], "example.com.evil.net", None),
    (["*.example.com"], "a.example.co", None),
    (["*.example.com"], ".example.com", None),
    (["*.com"], "example.com", "*.com"),
    # apex and wildcard together
    (["example.com", "*.example.com"], "example.com", "example.com"),
    (["example.com", "*.example.com"], "api.example.com", "*.example.com"),
    # the most specific entry wins: exact, then the longest wildcard suffix
    (["*.com", "*.example.com", "*.api.example.com"], "v1.api.example.com", "*.api.example.com"),
    (["*.com", "*.example.com"], "api.example.com", "*.example.com"),
    (["*.com", "api.example.com"], "api.example.com", "api.example.com"),
    (["xn--bcher-kva.example"], "xn--bcher-kva.example", "xn--bcher-kva.example"),
    ([], "example.com", None),
])
def test_smokescreen_glob_cases(impl, entries, host, expected):
    assert impl.HostGlobSet(entries).match(host) == expected


@pytest.mark.parametrize("entry", ["", "*", "*.", "a.*.com", "*example.com", "**.example.com",
                                   "*.*.example.com", "example.*", "ex*ample.com"])
def test_invalid_globs(impl, entry):
    with pytest.raises(ValueError):
        impl.HostGlobSet([entry])


def test_types(impl):
    with pytest.raises(TypeError):
        impl.HostGlobSet([b"example.com"])
    globs = impl.HostGlobSet(["*.example.com"])
    with pytest.raises(TypeError):
        globs.match(b"a.example.com")
    with pytest.raises(TypeError):
        globs.match(None)


def test_size_and_large_sets(impl):
    entries = [f"host{i}.example.com" for i in range(20000)] + [f"*.tenant{i}.example.net" for i in range(20000)]
    globs = impl.HostGlobSet(entries + entries[:10])
    assert len(globs) == 40000
    assert globs.match("host19999.example.com") == "host19999.example.com"
    assert globs.match("a.b.tenant7.example.net") == "*.tenant7.example.net"
    assert globs.match("tenant7.example.net") is None


def slow_match(entries, host):
    """The oracle: check every entry; exact first, then the longest matching wildcard."""
    if host in entries:
        return host
    best = None
    for entry in entries:
        if entry.startswith("*."):
            suffix = entry[1:]
            if host.endswith(suffix) and len(host) > len(suffix) and (best is None or len(entry) > len(best)):
                best = entry
    return best


labels = st.text("abcx-", min_size=0, max_size=3)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
globs = st.one_of(names.filter(bool), names.filter(bool).map(lambda n: "*." + n))


@given(entries=st.lists(globs, max_size=12), hosts=st.lists(names, min_size=1, max_size=10))
def test_matches_a_scan_of_every_entry(entries, hosts):
    built = [impl.HostGlobSet(entries) for impl in IMPLEMENTATIONS.values()]
    for host in hosts + [h for e in entries for h in (e.lstrip("*."), "q." + e.lstrip("*."))]:
        expected = slow_match(entries, host)
        for globset in built:
            assert globset.match(host) == expected, (entries, host)
