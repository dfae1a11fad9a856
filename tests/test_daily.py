"""Daily summaries: the original schema exactly, restart continuity, rollover, corruption, atomic writes."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.insight import insight_path
from exporter.sinks.daily import DailySink, DaySummary, summary_from_log_lines, summary_path, write_atomically
from exporter.writer import BackgroundWriter, ErrorReporter
from tests.factories import Driven, chat, event

DAY = "2026-11-24"


def _sink(tmp_path: Path) -> tuple[Driven, BackgroundWriter, list[str]]:
    errors: list[str] = []
    writer = BackgroundWriter(ErrorReporter(errors.append))
    return Driven(DailySink(tmp_path, writer)), writer, errors


def test_schema_matches_the_original_tool() -> None:
    s = DaySummary(DAY)
    for lang, n in (("python", 2), ("javascript", 3)):
        for _ in range(n):
            s.add_event(event(language=lang))
    for _ in range(6):
        s.add_event(chat())
    s.add_event(chat(user="xuefeng", summary_key="JetBrains-PC-243.22562.220"))
    s.add_event(event(user="xuefeng", summary_key="JetBrains-PC-243.22562.220", language="python"))
    s.add_event(event(counted=False, skip_reason="speculative"))
    s.add_event(event(kind="next_edit"))  # not in the original schema
    assert s.to_doc() == {
        "day": DAY,
        "total_chat_turns": 7,
        "total_completions_count": 6,
        "usage": {
            "alice": {
                "chat_turns": 6,
                "completions_count": 5,
                "chat": {"vscode-1.111.0": 6},
                "completions": {"vscode-1.111.0": {"python": 2, "javascript": 3}},
            },
            "xuefeng": {
                "chat_turns": 1,
                "completions_count": 1,
                "chat": {"JetBrains-PC-243.22562.220": 1},
                "completions": {"JetBrains-PC-243.22562.220": {"python": 1}},
            },
        },
    }


def test_merge_adds_an_earlier_file() -> None:
    s = DaySummary(DAY)
    s.add_event(chat())
    earlier = DaySummary(DAY)
    earlier.add_event(chat())
    earlier.add_event(event())
    s.merge(json.loads(earlier.to_json()))
    assert (s.total_chat_turns, s.total_completions_count) == (2, 1)
    with pytest.raises(ValueError):
        s.merge({"day": DAY})


def test_sink_writes_and_a_restart_continues_the_day(tmp_path: Path) -> None:
    sink, writer, errors = _sink(tmp_path)
    sink.handle(event())
    sink.handle(chat())
    writer.flush()
    path = summary_path(tmp_path, DAY)
    assert json.loads(path.read_text())["total_completions_count"] == 1
    # A new process (new sink) the same day adds to the file instead of replacing it.
    sink2, writer2, _ = _sink(tmp_path)
    sink2.handle(event())
    writer2.flush()
    doc = json.loads(path.read_text())
    assert (doc["total_completions_count"], doc["total_chat_turns"]) == (2, 1)
    assert errors == []


def test_day_rollover_by_event_time(tmp_path: Path) -> None:
    sink, writer, _ = _sink(tmp_path)
    before = datetime(2026, 11, 24, 23, 59, 59, 999000, tzinfo=UTC)
    after = datetime(2026, 11, 25, 0, 0, 0, tzinfo=UTC)
    sink.handle(event(timestamp=before))
    sink.handle(event(timestamp=after))
    sink.handle(event(timestamp=after))
    writer.flush()
    assert json.loads(summary_path(tmp_path, "2026-11-24").read_text())["total_completions_count"] == 1
    assert json.loads(summary_path(tmp_path, "2026-11-25").read_text())["total_completions_count"] == 2


def test_corrupt_file_is_kept_aside_and_counting_goes_on(tmp_path: Path) -> None:
    path = summary_path(tmp_path, DAY)
    path.parent.mkdir(parents=True)
    path.write_text('{"day": "2026-11-24", "usa')  # cut by a crash of some other writer
    sink, writer, errors = _sink(tmp_path)
    sink.handle(event())
    writer.flush()
    assert errors == ["daily"]
    assert path.with_name(path.name + ".corrupt").read_text().startswith('{"day"')
    writer.flush()  # the next round writes a fresh file with this run's counts
    sink.handle(event())
    writer.flush()
    assert json.loads(path.read_text())["total_completions_count"] == 2


def test_failed_write_keeps_the_old_file_and_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink, writer, errors = _sink(tmp_path)
    sink.handle(event())
    writer.flush()
    path = summary_path(tmp_path, DAY)
    old = path.read_text()
    real_replace = os.replace

    def full_disk(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    sink.handle(event())
    writer.flush()
    assert path.read_text() == old and errors == ["daily"]
    # The failed attempts' temp files are not left behind.
    assert sorted(os.listdir(path.parent)) == sorted([path.name, insight_path(tmp_path, DAY).name])
    monkeypatch.setattr(os, "replace", real_replace)
    writer.flush()
    assert json.loads(path.read_text())["total_completions_count"] == 2


def test_write_atomically_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    write_atomically(target, "{}")
    write_atomically(target, '{"x": 1}')
    assert json.loads(target.read_text()) == {"x": 1}
    assert os.listdir(target.parent) == ["b.json"]


def test_rebuild_from_log_lines() -> None:
    lines = [
        json.dumps(
            {
                "timestamp": f"{DAY}T10:00:00Z",
                "counted": True,
                "user": "alice",
                "kind": "completion",
                "summary_key": "vscode-1.111.0",
                "language": "python",
            }
        ),
        json.dumps(
            {
                "timestamp": f"{DAY}T10:00:01Z",
                "counted": True,
                "user": "bob",
                "kind": "chat_panel",
                "summary_key": "Zed-0.205.3",
                "language": "unknown",
            }
        ),
        json.dumps(
            {
                "timestamp": f"{DAY}T10:00:02Z",
                "counted": False,
                "user": "bob",
                "kind": "completion",
                "summary_key": "Zed-0.205.3",
                "language": "rust",
            }
        ),
        json.dumps(
            {
                "timestamp": "2026-11-23T23:59:59Z",
                "counted": True,
                "user": "carol",
                "kind": "completion",
                "summary_key": "x",
                "language": "go",
            }
        ),
        "",
        '{"timestamp": "2026-11-24T10:00:03Z", "counted": tr',  # cut by kill -9
    ]
    s, bad = summary_from_log_lines(DAY, lines)
    assert bad == 1
    assert s.to_doc()["usage"] == {
        "alice": {
            "chat_turns": 0,
            "completions_count": 1,
            "chat": {},
            "completions": {"vscode-1.111.0": {"python": 1}},
        },
        "bob": {"chat_turns": 1, "completions_count": 0, "chat": {"Zed-0.205.3": 1}, "completions": {}},
    }


def test_merge_ignores_wrong_types_inside_a_valid_document() -> None:
    s = DaySummary(DAY)
    s.merge({"usage": {"alice": {"chat": ["x"], "completions": {"vscode-1": ["y"], "zed-1": {"go": 2}}}, "bob": 3}})
    assert (s.total_chat_turns, s.total_completions_count) == (0, 2)


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    stale = metrics / f".copilot-usage_{DAY}.json.999999.tmp"
    stale.write_text('{"day": "2026-11-24", "to')
    stale_extended = metrics / f".copilot-insight_{DAY}.json.999999.tmp"
    stale_extended.write_text('{"schema_version": 1, "da')
    sink, writer, errors = _sink(tmp_path)
    sink.handle(event())
    writer.flush()
    assert not stale.exists() and not stale_extended.exists() and errors == []
    assert sorted(os.listdir(metrics)) == [f"copilot-insight_{DAY}.json", f"copilot-usage_{DAY}.json"]


def test_an_events_day_is_its_own_utc_day_whatever_came_before() -> None:
    # UsageEvent.day keeps the last event's answer: alternating days and zones must never get another's.
    from datetime import timedelta, timezone

    late = datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC)
    east = datetime(2026, 12, 2, 8, 0, tzinfo=timezone(timedelta(hours=9)))  # 23:00 UTC on the 1st
    cases = [(late, "2026-12-01"), (late + timedelta(seconds=1), "2026-12-02"), (east, "2026-12-01")]
    for ts, day in cases * 3:
        e = event(timestamp=ts)
        assert e.day == day and e.day == day
