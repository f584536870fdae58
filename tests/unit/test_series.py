"""Metric series (Count, Histogram, TunnelSeries): both implementations against a bisect oracle."""

import math
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import IMPLEMENTATIONS

from fastfog import metrics

BOUNDS = st.lists(st.floats(-1e9, 1e9, allow_nan=False) | st.integers(-10**9, 10**9), max_size=32).map(
    lambda bounds: tuple(sorted(bounds)))
VALUES = st.lists(st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=True, width=64),
                  max_size=50)


def oracle_slots(bounds, values):
    """What a histogram holds, written plainly: bisect_left into the bounds, and a sum that stays an
    int while only ints were observed."""
    counts = [0] * len(bounds)
    whole, fraction, floats = 0, 0.0, False
    for value in values:
        index = bisect_left(bounds, value)
        if index < len(bounds):
            counts[index] += 1
        if type(value) is int:
            whole += value
        else:
            fraction += value
            floats = True
    return counts + [whole + fraction if floats else whole, len(values)]


def same(a, b):
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


@given(BOUNDS, VALUES)
def test_histograms_agree_with_bisect(bounds, values):
    expected = oracle_slots(bounds, values)
    for impl in IMPLEMENTATIONS.values():
        histogram = impl.Histogram(bounds)
        for value in values:
            histogram.observe(value)
        slots = histogram.slots()
        assert same(slots, expected), impl.__name__
        assert [type(slot) for slot in slots[-2:]] == [type(slot) for slot in expected[-2:]]
        assert histogram.count == len(values) and histogram.bounds == bounds


@given(st.lists(st.integers(-2**40, 2**40), max_size=30))
def test_counts_add_up(increments):
    for impl in IMPLEMENTATIONS.values():
        count = impl.Count()
        for n in increments:
            count.add(n)
        count.add()
        assert count.value == sum(increments) + 1


def test_too_many_bounds_are_refused(impl):
    with pytest.raises(ValueError, match="at most 32"):
        impl.Histogram(range(33))


@given(st.lists(st.tuples(st.floats(0, 1e5), st.integers(0, 2**40), st.integers(0, 2**40), st.booleans()),
                max_size=20))
def test_a_tunnels_close_updates_its_five_series(closes):
    for impl in IMPLEMENTATIONS.values():
        closed = impl.TunnelSeries(impl.Count(), impl.Count(), impl.Histogram(metrics.SECOND_BUCKETS),
                                   impl.Histogram(metrics.BYTE_BUCKETS), impl.Histogram(metrics.BYTE_BUCKETS))
        for close in closes:
            closed.closed(*close)
        assert closed.closes.value == len(closes)
        assert closed.active.value == sum(active for *_, active in closes)
        assert closed.duration.slots() == oracle_slots(metrics.SECOND_BUCKETS, [float(d) for d, *_ in closes])
        assert closed.bytes_in.slots() == oracle_slots(metrics.BYTE_BUCKETS, [b for _, b, _, _ in closes])
        assert closed.bytes_out.slots() == oracle_slots(metrics.BYTE_BUCKETS, [b for _, _, b, _ in closes])


def test_metrics_export_what_the_series_hold():
    """A tunnel's close through Metrics: cn.close and the histograms at once, active_at_termination
    only once a shutdown counted it."""
    counted = metrics.Metrics()
    counted.connection_closed("r", "p", 0.2, 300, 70000, False)
    snapshot = counted.snapshot()
    labels = (("project", "p"), ("role", "r"))
    assert snapshot["counters"][("cn.close", labels)] == 1
    assert ("cn.active_at_termination", labels) not in snapshot["counters"]
    assert snapshot["histograms"][("cn.bytes_in", labels)][-2:] == [300, 1]
    text = counted.prometheus_text()
    assert 'cn_bytes_out_bucket{project="p",role="r",le="65536.0"} 0' in text
    assert 'cn_bytes_out_bucket{project="p",role="r",le="262144.0"} 1' in text
    assert 'cn_bytes_out_sum{project="p",role="r"} 70000\n' in text
    counted.connection_closed("r", "p", 0.2, 1, 1, True)
    assert counted.snapshot()["counters"][("cn.active_at_termination", labels)] == 1
