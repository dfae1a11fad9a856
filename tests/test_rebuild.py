"""The rebuild command: a day's summary from its JSON event log, exactly the counted lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.rebuild import main
from exporter.sinks.daily import summary_path
from exporter.sinks.jsonlog import log_path


def _write_log(tmp_path: Path, day: str, lines: list[str]) -> None:
    path = log_path(tmp_path, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _line(**kw: object) -> str:
    base = {
        "timestamp": "2026-11-24T08:00:00Z",
        "counted": True,
        "user": "alice",
        "kind": "completion",
        "summary_key": "vscode-1.111.0",
        "language": "python",
    }
    base.update(kw)
    return json.dumps(base)


def test_rebuild_writes_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path, "2026-11-24", [_line(), _line(kind="chat_agent", language="unknown"), '{"cut'])
    assert main(["--data-dir", str(tmp_path), "2026-11-24"]) == 0
    doc = json.loads(summary_path(tmp_path, "2026-11-24").read_text())
    assert (doc["total_completions_count"], doc["total_chat_turns"]) == (1, 1)
    assert "skipped 1 unreadable line" in capsys.readouterr().err


def test_rebuild_to_stdout_and_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path, "2026-11-24", [_line()])
    assert main(["--data-dir", str(tmp_path), "--stdout", "2026-11-24", "2026-11-20"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["total_completions_count"] == 1
    assert "no event log" in out.err
    assert not summary_path(tmp_path, "2026-11-24").exists()


def test_rebuild_rejects_a_bad_day(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "24/11/2026"])
