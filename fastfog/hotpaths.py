"""The hot paths, compiled or pure Python: import them from here.

By default they come from the compiled extension ``fastfog._core``; a missing
extension is an error on CPython rather than a silent slowdown. With
``FASTFOG_NO_EXTENSIONS=1`` in the environment at import time (and on other
Python implementations) they come from ``fastfog.reference``, the pure-Python
twins with the same API.
"""

import os
import platform

NO_EXTENSIONS = os.environ.get("FASTFOG_NO_EXTENSIONS", "") not in ("", "0")

if NO_EXTENSIONS or platform.python_implementation() != "CPython":
    from fastfog import reference as _implementation

    COMPILED = False
else:
    try:
        from fastfog import _core as _implementation  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(
            "fastfog's compiled core (fastfog._core) is not built or does not load: "
            f"{exc}. Reinstall with `pip install .` (or `pip install -e .`) to build it, "
            "or set FASTFOG_NO_EXTENSIONS=1 to run the pure-Python implementation."
        ) from exc

    COMPILED = True

DEFAULT_MAX_HEAD_SIZE = _implementation.DEFAULT_MAX_HEAD_SIZE
DEFAULT_MAX_HEADERS = _implementation.DEFAULT_MAX_HEADERS
BufferedRelay = _implementation.BufferedRelay
accept_batch = _implementation.accept_batch
CidrTable = _implementation.CidrTable
ConntrackCore = _implementation.ConntrackCore
Count = _implementation.Count
Deadline = _implementation.Deadline
EdgeWatch = _implementation.EdgeWatch
Histogram = _implementation.Histogram
HostGlobSet = _implementation.HostGlobSet
IdSource = _implementation.IdSource
Limits = _implementation.Limits
Scope = _implementation.Scope
Timers = _implementation.Timers
timers_for = _implementation.timers_for
TokenBucket = _implementation.TokenBucket
UpstreamPool = _implementation.UpstreamPool
RecordBatch = _implementation.RecordBatch
RequestHead = _implementation.RequestHead
ResponseHead = _implementation.ResponseHead
SpliceRelay = _implementation.SpliceRelay
Tunnel = _implementation.Tunnel
TunnelSeries = _implementation.TunnelSeries
client_hello_sni = _implementation.client_hello_sni
rfc3339 = _implementation.rfc3339
json_line = _implementation.json_line
open_upstream = _implementation.open_upstream
parse_request_head = _implementation.parse_request_head
parse_response_head = _implementation.parse_response_head
poller_for = _implementation.poller_for
rewrite_head = _implementation.rewrite_head
upstream_request = _implementation.upstream_request
client_response = _implementation.client_response
still_open = _implementation.still_open

from fastfog.errors import HeadError  # noqa: E402  (one class for both implementations)


def __getattr__(name):
    """What is bound at first use: the parts whose reference twins import modules that import this
    one (``ClientConnection``, ``Exchange``, ``RecordsCore``; see fastfog.reference)."""
    found = globals()[name] = getattr(_implementation, name)
    return found


__all__ = [
    "accept_batch", "BufferedRelay", "CidrTable", "client_hello_sni", "client_response", "COMPILED",
    "ConntrackCore", "Count",
    "Deadline", "DEFAULT_MAX_HEAD_SIZE", "DEFAULT_MAX_HEADERS", "EdgeWatch", "HeadError", "Histogram", "HostGlobSet",
    "IdSource", "json_line", "Limits", "NO_EXTENSIONS", "open_upstream", "parse_request_head", "parse_response_head",
    "poller_for", "RecordBatch", "RequestHead", "ResponseHead", "rewrite_head", "rfc3339", "Scope", "SpliceRelay",
    "still_open", "Timers", "timers_for", "TokenBucket", "Tunnel", "TunnelSeries", "UpstreamPool",
    "upstream_request",
]


def implementations():
    """Each implementation usable in this process, by name: "reference", and "core" unless switched off.

    For tests and benchmarks that run the same input through both.
    """
    import importlib

    found = {"reference": importlib.import_module("fastfog.reference")}
    if COMPILED:
        found["core"] = importlib.import_module("fastfog._core")
    return found
