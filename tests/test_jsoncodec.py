"""exporter.jsoncodec: orjson on the hot path, with the standard library's answer wherever orjson declines."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import jsoncodec
from tests import samples

# Inputs orjson declines and the standard library parses: the result must be the standard library's.
STDLIB_ONLY = [
    ("NaN", b'{"x": NaN}'),
    ("Infinity", b"[Infinity, -Infinity]"),
    ("lone surrogate escape", b'{"t": "\\ud800"}'),
    ("byte-order mark", b'\xef\xbb\xbf{"a": 1}'),
    ("UTF-16 bytes", '{"a": "é"}'.encode("utf-16-le")),
    ("nesting past orjson's limit", b"[" * 1100 + b"]" * 1100),
]


@pytest.mark.parametrize(("what", "data"), STDLIB_ONLY, ids=[w for w, _ in STDLIB_ONLY])
def test_what_orjson_declines_parses_as_the_standard_library_parses_it(what: str, data: bytes) -> None:
    expected = json.loads(data)
    got = jsoncodec.loads(data)
    if what == "NaN":
        assert math.isnan(got["x"])
    else:
        assert got == expected


def test_an_integer_past_64_bits_parses_as_a_float_which_no_count_takes() -> None:
    """orjson's one different answer: no token count, size or id is past 2**64, and every reader of counts
    wants an int (a hostile 30-digit token count is not counted)."""
    from exporter.streams import _int

    doc = jsoncodec.loads(b'{"n": 123456789012345678901234567890, "m": 18446744073709551615}')
    assert doc == {"n": 1.2345678901234568e29, "m": 2**64 - 1}
    assert _int(doc["n"]) is None
    assert _int(doc["m"]) == 2**64 - 1


# Malformed input fails with the standard library's exception, which callers catch today.
FAILURES = [
    ("truncated", b'{"a": [1, 2', ValueError),
    ("trailing garbage", b'{"a": 1} x', ValueError),
    ("invalid UTF-8", b'{"a": "\xff\xfe"}', UnicodeDecodeError),
    ("empty", b"", ValueError),
    ("too deep for either", b"[" * 200_000 + b"]" * 200_000, RecursionError),
]


@pytest.mark.parametrize(("what", "data", "error"), FAILURES, ids=[w for w, _, _ in FAILURES])
def test_malformed_input_raises_what_the_standard_library_raises(what: str, data: bytes, error: type) -> None:
    with pytest.raises(error):
        json.loads(data)
    with pytest.raises(error):
        jsoncodec.loads(data)


def test_every_sample_body_parses_to_what_the_standard_library_gives() -> None:
    bodies = [e.request_body for e in samples.ALL if e.request_body]
    bodies += [
        line[5:].strip() for e in samples.ALL for line in e.response_body.split(b"\n") if line.startswith(b"data:")
    ]
    parsed = 0
    for body in bodies:
        try:
            expected = json.loads(body)
        except ValueError:
            continue
        assert jsoncodec.loads(body) == expected
        assert jsoncodec.loads(body.decode("utf-8")) == expected
        parsed += 1
    assert parsed > 20


# Integers within 64 bits: past them orjson parses a float (the one kept difference, tested below).
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_round_trips_agree_with_the_standard_library(value: object) -> None:
    line = jsoncodec.dumps_line(value)
    assert json.loads(line) == json.loads(json.dumps(value))
    assert jsoncodec.loads(line) == json.loads(line)
    assert jsoncodec.loads(line.encode("utf-8", "surrogatepass")) == json.loads(line)


def test_an_integer_literal_past_64_bits_parses_as_a_float_and_one_within_them_as_an_int() -> None:
    assert jsoncodec.loads("[-9223372036854775808, 18446744073709551615]") == [-(2**63), 2**64 - 1]
    beyond = jsoncodec.loads("[-9223372036854775809, 18446744073709551616]")
    assert [type(v) for v in beyond] == [float, float]
    assert beyond == [float(-(2**63) - 1), float(2**64)]
    assert json.loads(jsoncodec.dumps_line(2**70)) == 2**70  # rendering keeps it (the standard library renders it)


def test_a_non_finite_float_renders_as_null_so_the_line_stays_json() -> None:
    # The standard library wrote NaN / Infinity, which no JSON reader (Loki's `| json`, jq) takes.
    line = jsoncodec.dumps_line({"a": math.nan, "b": math.inf, "c": 0.5})
    assert line == '{"a":null,"b":null,"c":0.5}'


def test_the_line_is_compact_and_not_ascii_escaped() -> None:
    line = jsoncodec.dumps_line({"user": "zoë", "n": 2, "tools": ("read_file", "grep"), "none": None})
    assert line == '{"user":"zoë","n":2,"tools":["read_file","grep"],"none":null}'


@dataclass
class _Thing:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {"big": 2**70},  # past 64 bits
        {1: "an int key"},  # non-string key
        {"s": "\ud800"},  # a lone surrogate (from a JSON \ud800 escape)
    ],
)
def test_what_orjson_refuses_to_render_is_rendered_compact_by_the_standard_library(value: dict) -> None:
    line = jsoncodec.dumps_line(value)
    assert line == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_unknown_objects_go_to_default_as_with_the_standard_library() -> None:
    when = datetime(2026, 12, 3, tzinfo=UTC)
    line = jsoncodec.dumps_line({"thing": _Thing(1), "when": when, "set": {1}}, default=repr)
    assert json.loads(line) == {"thing": "_Thing(x=1)", "when": repr(when), "set": "{1}"}
