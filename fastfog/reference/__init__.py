"""Pure-Python twins of the compiled hot paths in ``fastfog._core``: same API.

``fastfog.hotpaths`` picks between the two; ``FASTFOG_NO_EXTENSIONS=1``
selects these.
"""

import importlib

from fastfog.errors import HeadError
from fastfog.reference.accept import accept_batch
from fastfog.reference.buffered import BufferedRelay
from fastfog.reference.cidr import CidrTable
from fastfog.reference.clienthello import client_hello_sni
from fastfog.reference.conntrack import ConntrackCore, Tunnel
from fastfog.reference.deadline import Deadline, Timers, timers_for
from fastfog.reference.forwardhead import client_response, rewrite_head, upstream_request
from fastfog.reference.hostglob import HostGlobSet
from fastfog.reference.httphead import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADERS,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)
from fastfog.reference.limits import Limits, Scope, TokenBucket
from fastfog.reference.pool import UpstreamPool
from fastfog.reference.record import IdSource, RecordBatch, json_line, rfc3339
from fastfog.reference.relay import EdgePoller, EdgeWatch, SpliceRelay, poller_for, still_open
from fastfog.reference.series import Count, Histogram, TunnelSeries
from fastfog.reference.opening import open_upstream



# Imported at first use: these modules import fastfog.connection or fastfog.logs, which import
# fastfog.hotpaths, which imports this package.
_LATE = {"ClientConnection": "client", "Exchange": "exchange", "RecordsCore": "records"}


def __getattr__(name):
    if name not in _LATE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"fastfog.reference.{_LATE[name]}"), name)


__all__ = [
    "accept_batch", "BufferedRelay", "CidrTable", "client_hello_sni", "client_response", "ConntrackCore", "Count",
    "Deadline",
    "DEFAULT_MAX_HEAD_SIZE", "DEFAULT_MAX_HEADERS", "EdgePoller", "EdgeWatch", "HeadError", "Histogram",
    "HostGlobSet", "IdSource", "json_line", "Limits", "open_upstream", "parse_request_head", "parse_response_head",
    "poller_for", "RecordBatch", "RequestHead", "ResponseHead", "rewrite_head", "rfc3339", "Scope", "SpliceRelay",
    "still_open", "Timers", "timers_for", "TokenBucket", "Tunnel", "TunnelSeries", "UpstreamPool",
    "upstream_request",
]
