"""The benchmark's count check: the addon counted exactly what was sent and answered, allowing only for requests
that were in flight when a run was cut at its time limit (the proxy may answer and count those after the client
gave up). Pure: no proxy is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench import Target, count_line, counts_match
from benchmarks.loadgen import LoadResult, _unsure
from benchmarks.traffic import MIX_TEMPLATES


def _target(counted: int, calls: int, counted_unsure: int = 0, calls_unsure: int = 0) -> Target:
    return Target(
        name="addon",
        port=0,
        ca_path=Path("/nonexistent"),
        counted_sent=counted,
        calls_sent=calls,
        counted_unsure=counted_unsure,
        calls_unsure=calls_unsure,
    )


@pytest.mark.parametrize(
    ("target", "counted", "calls", "ok"),
    [
        (_target(100, 80), 100, 80, True),  # exact
        (_target(100, 80), 99, 80, False),  # one lost
        (_target(100, 80), 101, 80, False),  # one counted twice
        (_target(100, 80), 100, 81, False),
        (_target(100, 80, 3, 2), 103, 82, True),  # all three cut requests reached the addon
        (_target(100, 80, 3, 2), 101, 80, True),  # one of them did
        (_target(100, 80, 3, 2), 104, 82, False),  # more than could have been in flight
        (_target(100, 80, 3, 2), 100, 83, False),
        (_target(100, 80, 3, 2), 99, 80, False),  # in-flight slack never excuses a loss
    ],
)
def test_counts_match_allows_only_what_was_in_flight(target: Target, counted: int, calls: int, ok: bool) -> None:
    assert counts_match(target, counted, calls) is ok


def test_a_request_cut_in_flight_is_counted_as_unsure_by_its_template() -> None:
    result = LoadResult()
    templates = MIX_TEMPLATES
    for tpl in templates:
        _unsure(result, tpl)
    assert result.unsure_counted == sum(t.counted for t in templates)
    assert result.unsure_model_calls == sum(t.model_call for t in templates)
    assert 0 < result.unsure_counted < len(templates)  # token exchanges and cancelled prefetches are not counted


def test_the_report_says_how_many_were_in_flight_only_when_some_were() -> None:
    exact = {"copilot_requests_total": 7.0, "counted_sent": 7, "copilot_model_calls_total": 5.0, "model_calls_sent": 5}
    assert count_line("addon", exact) == "addon copilot_requests_total 7 / counted sent 7, model calls 5 / 5"
    cut = exact | {"copilot_requests_total": 9.0, "counted_in_flight_when_cut": 3, "model_calls_in_flight_when_cut": 2}
    assert count_line("addon_1k", cut).endswith(
        "requests_total 9 / counted sent 7, model calls 5 / 5 (+ up to 3 / 2 in flight when cut)"
    )
