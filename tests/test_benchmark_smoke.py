"""Smoke test of the benchmark (`python -m benchmarks.bench --quick`): it completes, prints its table, and the
addon counted exactly the interactions the load generator sent. Timings are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def _quick(module: str, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m <module> --quick --json-out <out>` from the checkout; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json-out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def test_quick_benchmark_completes_and_counts_match(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _quick("benchmarks.bench", out, timeout=120)
    assert "requests/s, concurrency 16" in proc.stdout
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "quick"

    doc = json.loads(out.read_text())
    assert doc["errors"] == 0
    assert not any(run["timed_out"] for run in doc["runs"])
    rps_runs = {run["config"]: run for run in doc["runs"] if run["phase"] == "rps"}
    assert set(rps_runs) == {"direct", "bare", "stream", "addon", "addon_1k"}
    for run in rps_runs.values():
        assert run["requests"] == doc["settings"]["rps_requests"] > 0
    assert [s["requests"] for s in doc["soak"].values()] == [doc["settings"]["soak_requests"]]

    counts = doc["counts"]
    assert set(counts) >= {"addon", "addon_1k", "soak_addon_1k"}
    for name, c in counts.items():
        assert c["counted_sent"] > 0, name
        assert c["copilot_requests_total"] == c["counted_sent"], (name, c)
        assert c["copilot_model_calls_total"] == c["model_calls_sent"], (name, c)
    assert doc["counts_ok"] is True


def test_the_in_process_replay_attributes_each_feature_to_its_calls() -> None:
    """`benchmarks.replay`: every entry point of a present feature is timed, once per call of the mix's
    requests that reach it, and the features' shares stay within the total. Timings are not checked."""
    from benchmarks import replay, traffic

    requests = len(traffic.MIX) * 10  # ten rounds of the mix
    result = replay.replay(requests, repeat=2)
    posts = sum(t.name == traffic.TELEMETRY.name for t in traffic.MIX_TEMPLATES) * requests // len(traffic.MIX)
    assert result.present["telemetry"] and result.present["credits"]
    # Each post: read once by the tracker, its observations built once by the dispatcher.
    assert result.calls["telemetry"] == 2 * posts
    # Every finished call builds its credit fields once; the cost sink handles every emitted event; each token
    # exchange's answer is read once (CallTracker._learn: hosts, and prices for /models answers).
    exchanges = sum(t.name == traffic.TOKEN_EXCHANGE.name for t in traffic.MIX_TEMPLATES) * requests // len(traffic.MIX)
    assert exchanges > 0
    assert result.calls["credits"] == 2 * requests + exchanges
    assert len(result.us_per_request) == 2 and all(us > 0 for us in result.us_per_request)
    assert 0 < result.feature_best("telemetry") + result.feature_best("credits") < result.best
    text = replay.report(result)
    assert "telemetry" in text and "core" in text


def test_the_fleet_benchmark_spreads_the_load_and_the_replicas_counts_add_up(tmp_path: Path) -> None:
    """`python -m benchmarks.fleet --quick`: one and two replicas behind a real HAProxy; both replicas of the
    two-replica fleet got traffic, and the sum of their counters and the merged rebuild equal what was sent."""
    out = tmp_path / "fleet.json"
    _quick("benchmarks.fleet", out, timeout=180)
    doc = json.loads(out.read_text())
    assert set(doc["fleets"]) == {"one", "two"}
    for name, fleet in doc["fleets"].items():
        c = fleet["counts"]
        assert c["counted_sent"] > 0 and c["copilot_requests_total"] == c["counted_sent"], (name, c)
        assert c["copilot_model_calls_total"] == c["model_calls_sent"], (name, c)
        assert sum(c["per_replica_requests"]) == c["counted_sent"] == fleet["rebuilt_interactions"], (name, c)
    assert all(n > 0 for n in doc["fleets"]["two"]["counts"]["per_replica_requests"])
    assert len(doc["fleets"]["two"]["counts"]["per_replica_requests"]) == 2
