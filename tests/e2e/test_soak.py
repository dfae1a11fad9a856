"""A quick soak in the suite: 20 concurrent streaming clients x 10 calls through a real mitmdump + addon.

The same code as the full soak (`python -m tests.e2e.soak --clients 200 --seconds 120`, figures in
docs/hardening.md): the fake backend as its own process, half the clients on HTTP/2, a mix of completions,
prefetches, agent turns, Responses/Messages and Zed chats. Asserts no error and exact counts in /metrics,
the JSON log and the daily summary; mitmdump's RSS is only reported (`pytest -s`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.soak import run_soak

pytestmark = pytest.mark.e2e

CLIENTS, CALLS_PER_CLIENT = 20, 10


def test_quick_soak_no_error_and_exact_counts(tmp_path: Path) -> None:
    # The time bound (60 s) is an upper limit, not a measure: the run ends when every client made its calls.
    result = run_soak(CLIENTS, 60.0, requests_per_client=CALLS_PER_CLIENT, warmup=0.0, work_dir=tmp_path)
    print("\n" + result.text())
    assert result.errors == []
    # Every client made its calls (an agent turn is three calls, so a client may go a little past 10).
    assert result.sent == result.completed >= CLIENTS * CALLS_PER_CLIENT
    assert result.http2_answers > 0 and result.http2_answers < result.completed
    assert result.counted_expected > 0
    assert result.metrics_requests_total == result.counted_expected == result.log_counted_lines == result.summary_total
    assert result.metrics_requests_by_kind == {k: float(v) for k, v in result.metrics_requests_by_kind.items() if v}
    assert result.metrics_responses_total == result.sent
    assert result.metrics_exporter_errors == 0
    assert result.addon_failures_logged == result.tracebacks_logged == 0
    assert result.returncode == 0
    assert result.problems == []
