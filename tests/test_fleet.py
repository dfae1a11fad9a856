"""Several replicas: per-replica file names, the stateless turn rule, and the rebuild that merges their logs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import taddons

from exporter.hooks import CopilotInsight
from exporter.rebuild import event_logs, main, merge_logs, rebuild_both
from exporter.sinks.daily import remove_stale_temp_files, summary_path
from exporter.sinks.jsonlog import log_path
from tests import samples
from tests.conftest import CaptureSink, Harness


@contextmanager
def replica(data_dir: Path, instance: str, **options: Any) -> Iterator[Harness]:
    """One proxy replica (its own addon, tracker and counter: no shared state) writing into `data_dir`."""
    capture = CaptureSink()
    addon = CopilotInsight(sinks=[capture])
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon, copilot_data_dir=str(data_dir), copilot_metrics_port=0, copilot_instance_id=instance, **options
        )
        h = Harness(addon, tctx, data_dir, capture)
        yield h
        h.flush()
        addon.done()


def _turns(doc: dict[str, Any]) -> dict[str, int]:
    return {user: entry["chat_turns"] for user, entry in doc["usage"].items() if entry["chat_turns"]}


def test_a_turn_whose_calls_reach_two_replicas_is_counted_once(tmp_path: Path) -> None:
    with replica(tmp_path, "a") as a:
        a.flow(samples.VSCODE_AGENT_TURN, user="alice")
        assert a.last().counted
        day = a.last().day
    with replica(tmp_path, "b") as b:
        # The same turn's post-turn suggestions call went through another tunnel, to replica b, which never
        # saw the turn's first call: its last message is the assistant's, so it is no new turn.
        b.flow(samples.VSCODE_AGENT_SUGGESTIONS, user="alice")
        assert b.last().interaction_id == samples.AGENT_TURN_INTERACTION_ID  # the turn replica a counted
        assert not b.last().counted and b.last().skip_reason == "turn_followup"
        assert (
            b.sample("copilot_requests_total", user="alice", editor="vscode", language="unknown", kind=b.last().kind)
            == 0
        )
    text, _, _ = rebuild_both(tmp_path, day, write=False)
    assert json.loads(text)["total_chat_turns"] == 1


def test_replicas_sharing_a_data_dir_write_their_own_files_and_the_rebuild_is_their_sum(tmp_path: Path) -> None:
    """The issue's case: two proxies on one data dir lost bob's 3 calls; with instance ids nothing is lost."""
    per_replica = {"a": ["alice", "bob"], "b": ["carol", "bob"]}
    for instance, users in per_replica.items():
        with replica(tmp_path, instance) as h:
            for user in users:
                for _ in range(3 if user != "bob" else 1):
                    h.flow(samples.VSCODE_COMPLETION, user=user, request_id=f"{instance}-{user}-{os.urandom(4).hex()}")
            day = h.last().day
    for instance in per_replica:
        assert log_path(tmp_path, day, instance).is_file()
        own = json.loads(summary_path(tmp_path, day, instance).read_text())
        assert sum(u["completions_count"] for u in own["usage"].values()) == 4
        assert (tmp_path / "metrics" / f"copilot-insight_{day}.{instance}.json").is_file()
    assert not log_path(tmp_path, day).exists() and not summary_path(tmp_path, day).exists()
    assert event_logs(tmp_path, day) == [log_path(tmp_path, day, "a"), log_path(tmp_path, day, "b")]
    assert main(["--data-dir", str(tmp_path), day]) == 0
    merged = json.loads(summary_path(tmp_path, day).read_text())
    assert {u: e["completions_count"] for u, e in merged["usage"].items()} == {"alice": 3, "bob": 2, "carol": 3}
    assert merged["total_completions_count"] == 8
    extended = json.loads((tmp_path / "metrics" / f"copilot-insight_{day}.json").read_text())
    assert extended["totals"]["interactions"] == 8


def test_the_rebuild_writes_elsewhere_with_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with replica(tmp_path / "data", "a") as h:
        h.flow(samples.VSCODE_COMPLETION, user="alice")
        day = h.last().day
    assert main(["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out"), day]) == 0
    assert json.loads(summary_path(tmp_path / "out", day).read_text())["total_completions_count"] == 1
    assert not summary_path(tmp_path / "data", day).exists()
    assert "from 1 event log(s)" in capsys.readouterr().err


def _rec(ts: str, **kw: Any) -> dict[str, Any]:
    base = {
        "timestamp": f"2026-12-02T10:00:{ts}Z",
        "user": "alice",
        "kind": "chat_panel",
        "counted": True,
        "model_call": True,
        "summary_key": "vscode-1.111.0",
        "language": "unknown",
    }
    return base | kw


def test_merge_counts_a_call_counted_by_two_replicas_once_and_leaves_one_log_alone() -> None:
    a = [_rec("01", request_id="r1", interaction_id="T1"), _rec("05", request_id="r3", interaction_id="T3")]
    b = [
        _rec("02", request_id="r1", interaction_id="T9"),  # a retry of r1 answered by replica b
        _rec("03", request_id="r2", interaction_id="T1"),  # T1's follow-up that b counted as a turn
        _rec("04", request_id="r4", interaction_id="T3", kind="completion"),  # not a chat kind: the id is no turn
    ]
    merged = merge_logs([a, b])
    assert [(r["request_id"], r["counted"], r.get("skip_reason")) for r in merged] == [
        ("r1", True, None),
        ("r1", False, "retry_duplicate"),
        ("r2", False, "turn_followup"),
        ("r4", True, None),
        ("r3", True, None),
    ]
    same_log = [_rec("01", request_id="r1", interaction_id="T1"), _rec("02", request_id="r2", interaction_id="T1")]
    assert merge_logs([same_log]) == same_log  # one proxy's own decisions stand


def test_a_replica_sweeps_only_its_own_stale_temp_files(tmp_path: Path) -> None:
    day = "2026-12-02"
    names = [
        f".copilot-usage_{day}.a.json.999998.tmp",
        f".copilot-insight_{day}.a.json.999998.tmp",
        f".copilot-usage_{day}.b.json.999997.tmp",
        f".copilot-usage_{day}.json.999996.tmp",
    ]
    for name in names:
        (tmp_path / name).write_text("{")
    remove_stale_temp_files(tmp_path, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [names[2]]


# -- the summary built from Prometheus -------------------------------------------------------------------

START = 1_796_169_600.0  # 2026-12-02T00:00:00Z


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([(START - 60, 5), (START + 60, 7), (START + 120, 9)], 4),  # the baseline is the last sample before
        ([(START + 60, 1), (START + 120, 3)], 3),  # born during the day: its first sample counts from 0
        ([(START - 60, 5), (START + 60, 8), (START + 120, 2), (START + 180, 4)], 3 + 2 + 2),  # a reset
        ([(START - 120, 4), (START - 60, 6)], 0),  # nothing during the day
        ([(START - 60, 6), (START + 3600, 6)], 0),
    ],
)
def test_series_increase_is_exact_where_increase_extrapolates(
    samples: list[tuple[float, float]], expected: float
) -> None:
    from exporter.fleet import series_increase

    assert series_increase(samples, START) == expected


def test_the_prometheus_summary_sums_replicas_and_keys_like_the_extended_summary() -> None:
    from exporter.fleet import insight_from_prometheus

    day = "2026-12-02"
    calls: list[str] = []

    def fetch(query: str, at: float) -> list[dict[str, Any]]:
        calls.append(query)
        assert at == START + 86400
        req = {
            "job": "copilot-proxy-insight",
            "user": "alice",
            "editor": "vscode",
            "language": "python",
            "kind": "completion",
        }
        series = {
            "copilot_requests_total": [
                {"metric": req | {"instance": "a"}, "values": [[START - 30, "2"], [START + 30, "5"]]},
                {"metric": req | {"instance": "b"}, "values": [[START + 30, "1"]]},
            ],
            "copilot_tokens_total": [
                {
                    "metric": {"user": "alice", "kind": "completion", "model": "m", "type": "input", "instance": "a"},
                    "values": [[START + 30, "40"]],
                },
            ],
            "copilot_user_team_info": [
                {"metric": {"user": "alice", "team": "backend"}, "values": [[START + 30, "1"]]},
            ],
        }
        return series.get(query.split("{", 1)[0], [])

    doc = insight_from_prometheus(fetch, day).to_doc()
    alice = doc["users"]["alice"]
    assert alice["interactions"] == {"completion": {"vscode": {"python": 4}}}
    assert alice["tokens"] == {"completion": {"m": {"input": 40}}}
    assert alice["totals"]["interactions"] == 4 and alice["totals"]["input_tokens"] == 40
    assert alice["teams"] == ["backend"] and doc["teams"]["backend"]["totals"]["interactions"] == 4
    assert all('{job="copilot-proxy-insight"}[' in q for q in calls)
