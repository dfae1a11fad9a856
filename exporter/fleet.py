"""The extended daily summary built from Prometheus: exact per-series increases over a UTC day, from raw samples.

`increase(x[1d])` extrapolates to the window's edges and misses a series' first sample (a new user's first call:
the series is born at 1). Here every series' raw samples of the day are read with one instant query of a range
selector, the last sample before the day is the baseline (none: the series was born that day, from 0), and a
drop is a counter reset (the replica restarted: the new value counts in full). Replicas are summed. What
Prometheus never scraped (calls between a killed replica's last scrape and its death) is missing: the event
logs' merged rebuild stays the exact source.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.insight import InsightDay

LOOKBACK_S = 3600  # how far before the day a baseline sample is searched for (scrape gaps, restarts)
Fetch = Callable[[str, float], list[dict[str, Any]]]  # (PromQL, eval time) -> result of a matrix query

# metric -> (section, the labels that key the section, the total it adds to)
_SECTIONS: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("copilot_requests_total", "interactions", ("kind", "editor", "language"), "interactions"),
    ("copilot_model_calls_total", "model_calls", ("kind", "model", "initiator"), "model_calls"),
    ("copilot_tokens_total", "tokens", ("kind", "model", "type"), None),
    ("copilot_user_errors_total", "errors", ("kind", "code"), "errors"),
)


def series_increase(samples: Iterable[tuple[float, float]], start: float) -> float:
    """The increase of one counter series over the window from `start`, given its samples in time order
    (those before `start` only serve as the baseline)."""
    baseline: float | None = None
    total = 0.0
    prev: float | None = None
    for ts, value in samples:
        if ts <= start:
            baseline = value
            continue
        if prev is None:
            prev = baseline if baseline is not None else 0.0  # born inside the window: from 0
        total += value - prev if value >= prev else value  # a drop is a reset: the new value counts in full
        prev = value
    return total


def day_bounds(day: str) -> tuple[float, float]:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()


def prometheus_fetch(base_url: str, timeout: float = 60.0) -> Fetch:
    """A Fetch against Prometheus' HTTP API (`/api/v1/query`)."""

    def fetch(query: str, at: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/api/v1/query?{params}", timeout=timeout) as resp:
            doc = json.load(resp)
        if doc.get("status") != "success" or doc.get("data", {}).get("resultType") != "matrix":
            raise ValueError(f"Prometheus answered {str(doc)[:200]}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    return fetch


def _increases(fetch: Fetch, metric: str, keys: tuple[str, ...], day: str) -> dict[tuple[str, ...], float]:
    start, end = day_bounds(day)
    window = int(end - start) + LOOKBACK_S
    sums: dict[tuple[str, ...], float] = {}
    for series in fetch(f'{metric}{{job="copilot-proxy-insight"}}[{window}s]', end):
        labels: Mapping[str, str] = series["metric"]
        samples = [(float(ts), float(v)) for ts, v in series["values"]]
        n = series_increase(samples, start)
        if n:
            key = (labels.get("user", "unknown"), *(labels.get(k, "unknown") for k in keys))
            sums[key] = sums.get(key, 0.0) + n
    return sums


def _teams(fetch: Fetch, day: str) -> dict[str, set[str]]:
    start, end = day_bounds(day)
    out: dict[str, set[str]] = {}
    for series in fetch(f'copilot_user_team_info{{job="copilot-proxy-insight"}}[{int(end - start)}s]', end):
        labels = series["metric"]
        out.setdefault(labels.get("user", "unknown"), set()).add(labels.get("team", "unknown"))
    return out


def insight_from_prometheus(fetch: Fetch, day: str) -> InsightDay:
    """The day's extended summary from the counters (no `skipped`, which Prometheus holds without users, and
    no cached/reasoning tokens, which are in the event log only)."""
    summary = InsightDay(day)
    for metric, section, keys, total in _SECTIONS:
        for (user, *rest), n in sorted(_increases(fetch, metric, keys, day).items()):
            count = round(n)  # exact sums of integer increments; round() only undoes float noise
            token_total = f"{rest[2]}_tokens" if section == "tokens" and rest[2] in ("input", "output") else None
            summary.add_count(user, section, tuple(rest), count, total or token_total)
    for user, teams in _teams(fetch, day).items():
        if user in summary.users:
            summary.add_teams(user, teams)
    return summary
