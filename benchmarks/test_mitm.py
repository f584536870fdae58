"""What interception costs per tunnel: a leaf minted for a new host, against a cached one."""

import itertools

import pytest
from pki import Authority, key_pem, pem

from fastfog.mitm import MitmAuthority


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mitm-bench")
    ca = Authority("bench MITM CA")
    (folder / "ca.pem").write_bytes(pem(ca.cert))
    (folder / "ca.key").write_bytes(key_pem(ca.key))
    return MitmAuthority(str(folder / "ca.pem"), str(folder / "ca.key"))


@pytest.mark.benchmark(group="mitm leaf")
def test_first_tunnel_to_a_host_mints(benchmark, authority):
    hosts = (f"host{number}.example" for number in itertools.count())
    benchmark(lambda: authority.context_for(next(hosts)))


@pytest.mark.benchmark(group="mitm leaf")
def test_later_tunnels_take_the_cached_leaf(benchmark, authority):
    authority.context_for("cached.example")
    benchmark(authority.context_for, "cached.example")
