"""Log records and connection ids: the compiled core against its twin, and json.loads as the oracle."""

import datetime
import json
import math
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import IMPLEMENTATIONS, needs_core

from fastfog.reference import record as reference

keys = st.text(max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(),
    st.text(alphabet=st.characters(max_codepoint=0x7F)),  # control characters, quotes, backslashes
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(keys, scalars, max_size=3))
records = st.dictionaries(keys, values, max_size=12)
TIME = "2026-11-22T00:00:00.5Z"


def parsed(line):
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return json.loads(line)


def same(a, b):
    """Equal, with NaN equal to itself."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


@needs_core
@given(records, st.text(), st.text())
def test_core_writes_the_same_bytes_as_the_reference(fields, level, msg):
    core = IMPLEMENTATIONS["core"]
    assert core.json_line(fields, level, msg, TIME) == reference.json_line(fields, level, msg, TIME)


@needs_core
def test_records_of_one_shape_and_fields_named_like_the_records_own_keys():
    """The core remembers each shape's key order: the same shape with other values, and fields
    called level, msg or time (the record's own win), still come out as the reference writes them."""
    core = IMPLEMENTATIONS["core"]
    for fields in ({"b": 1, "a": "x"}, {"b": "y", "a": 2.5}, {"a": None, "b": True},
                   {"time": "t0", "msg": "m0", "level": "l0", "z": 1}, {"msg": "only"}):
        for _ in range(2):
            assert core.json_line(fields, "info", "m", TIME) == reference.json_line(fields, "info", "m", TIME)
    assert core.json_line({"msg": "field", "level": "field"}, "warning", "mine", TIME) == (
        b'{"level":"warning","msg":"mine","time":"2026-11-22T00:00:00.5Z"}\n')


@given(records, st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_lines_parse_back_to_the_record(fields, msg):
    for impl in IMPLEMENTATIONS.values():
        line = impl.json_line(fields, "info", msg, TIME)
        expected = {**fields, "level": "info", "msg": msg, "time": TIME}
        assert same(parsed(line), expected)
        assert list(parsed(line)) == sorted(expected)


def test_what_json_cannot_carry(impl):
    line = impl.json_line({"address": ("203.0.113.7", 443), "error": ValueError("bad"), "surrogate": "a\ud800b",
                           "level": "overridden"}, "warning", "m", TIME)
    assert parsed(line) == {"address": ["203.0.113.7", 443], "error": "bad", "surrogate": "a?b",
                            "level": "warning", "msg": "m", "time": TIME}
    assert impl.json_line({}, "info", "m", TIME) == b'{"level":"info","msg":"m","time":"2026-11-22T00:00:00.5Z"}\n'
    assert impl.json_line({"q": '"\\\n\x01\x7f\u2028é'}, "i", "m", "t").startswith(
        b'{"level":"i","msg":"m","q":"\\"\\\\\\n\\u0001\x7f\xe2\x80\xa8\xc3\xa9"')


@given(st.binary(min_size=5, max_size=5), st.integers(min_value=0, max_value=2**24 - 1))
def test_ids_match_the_reference(machine, counter):
    for _ in range(3):  # a second may tick between the two: try again
        before = int(time.time())
        ids = {name: impl.IdSource(machine, counter) for name, impl in IMPLEMENTATIONS.items()}
        sequences = {name: [source.next() for _ in range(3)] for name, source in ids.items()}
        if int(time.time()) == before:
            break
    assert len({tuple(sequence) for sequence in sequences.values()}) == 1
    assert all(re.fullmatch(r"[0-9a-v]{20}", value) for value in sequences["reference"])


def test_ids_are_unique_sortable_and_wrap_their_counter(impl):
    ids = impl.IdSource(b"\0" * 5, 2**24 - 2)
    first = [ids.next() for _ in range(1000)]
    assert len(set(first)) == 1000
    with pytest.raises(ValueError):
        impl.IdSource(b"four")


@given(st.one_of(st.floats(min_value=0, max_value=2**38, allow_nan=False),
                 st.integers(min_value=0, max_value=253402300798).map(float),
                 st.integers(min_value=0, max_value=2**33).map(lambda n: n + 0.999999999)))
def test_timestamps_match_the_reference_and_datetime(timestamp):
    expected = reference.rfc3339(timestamp)
    for impl in IMPLEMENTATIONS.values():
        assert impl.rfc3339(timestamp) == expected
    if timestamp < 253402300799:
        whole, _, fraction = expected[:-1].partition(".")
        assert whole == datetime.datetime.fromtimestamp(
            int(timestamp) + (fraction == "" and timestamp % 1 > 0.5), datetime.timezone.utc
        ).strftime("%Y-%m-%dT%H:%M:%S")
        assert not fraction.endswith("0") and len(fraction) <= 9


def test_timestamp_examples(impl):
    assert impl.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert impl.rfc3339(1763769600.25) == "2025-11-22T00:00:00.25Z"
    assert impl.rfc3339(1763769600.9999999999) == "2025-11-22T00:00:01Z"
    assert impl.rfc3339(951782400.5) == "2000-02-29T00:00:00.5Z"


@needs_core
def test_remembered_orders_serve_only_their_own_key_set():
    """A shape's order is remembered by its key set: the same keys in another order share it, and
    a subset, a superset or another set of as many keys is written as the reference writes it."""
    core = IMPLEMENTATIONS["core"]
    shapes = ({"a": 1, "b": 2, "c": 3}, {"c": 3, "a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3, "d": 4},
              {"a": 1, "b": 2, "x": 3}, {"x": 1, "y": -2**70, "z": -9223372036854775808}, {"a": 1, "b": 2, "c": 3})
    for fields in shapes * 2:
        assert core.json_line(fields, "info", "m", TIME) == reference.json_line(fields, "info", "m", TIME)


def test_a_batch_formats_each_record_as_it_comes_and_schedules_one_write(impl):
    scheduled = []
    batch = impl.RecordBatch(impl.json_line, lambda: scheduled.append(1))
    before = impl.rfc3339(time.time())
    batch.info("CANONICAL-PROXY-DECISION", {"allow": True, "id": "x"})
    batch.warning("bad request", {"error": "e"})
    batch.add("error", "no fields")
    after = impl.rfc3339(time.time())
    assert scheduled == [1]  # once per batch
    records = [json.loads(line) for line in batch.lines]
    assert [(record["level"], record["msg"]) for record in records] == [
        ("info", "CANONICAL-PROXY-DECISION"), ("warning", "bad request"), ("error", "no fields")]
    for line, record in zip(batch.lines, records, strict=True):
        assert before[:19] <= record["time"][:19] <= after[:19]  # stamped as emitted
        fields = {key: value for key, value in record.items() if key not in ("level", "msg", "time")}
        assert line == impl.json_line(fields, record["level"], record["msg"], record["time"])
    assert len(batch.take()) == 3 and batch.lines == [] and batch.take() == []
    batch.info("next batch")
    assert scheduled == [1, 1]


def test_a_batch_formats_with_any_format_it_is_given(impl):
    calls = []
    batch = impl.RecordBatch(lambda fields, level, msg, stamp: calls.append((fields, level, msg)) or b"line\n",
                             lambda: None)
    batch.info("m", {"a": 1})
    batch.error("n")
    assert calls == [({"a": 1}, "info", "m"), ({}, "error", "n")]
    assert batch.take() == [b"line\n", b"line\n"]
