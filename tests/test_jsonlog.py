"""JSON log sink: one line per event with the contract's fields, per-day files, stdout, redaction."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.sinks.jsonlog import JsonLogSink, log_path, redact_value
from exporter.writer import BackgroundWriter, ErrorReporter
from tests.factories import Driven, chat, event


def _sink(tmp_path: Path, mode: str = "file") -> tuple[Driven, BackgroundWriter, io.StringIO]:
    out = io.StringIO()
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    return Driven(JsonLogSink(tmp_path, mode, writer, stdout=out)), writer, out


def test_one_line_per_event_with_the_contract_fields(tmp_path: Path) -> None:
    sink, writer, _ = _sink(tmp_path)
    sink.handle(event())
    sink.handle(chat(counted=False, skip_reason="agent_step", initiator="agent", interaction_id="T1"))
    writer.flush()
    lines = log_path(tmp_path, "2026-11-24").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "copilot.request" and second["event"] == "copilot.skipped"
    assert first["level"] == "info" and first["timestamp"] == "2026-11-24T12:00:00Z"
    for key in (
        "user",
        "editor",
        "editor_version",
        "plugin",
        "language",
        "kind",
        "model",
        "initiator",
        "interaction_id",
        "request_id",
        "status",
        "duration_s",
        "ttft_s",
        "input_tokens",
        "output_tokens",
        "streamed",
        "finish_reason",
        "skip_reason",
        "counted",
        "summary_key",
    ):
        assert key in first, key
    assert "prompt" not in first and "completion" not in first
    assert second["skip_reason"] == "agent_step" and second["interaction_id"] == "T1"


def test_files_follow_the_event_day_and_stdout_mode(tmp_path: Path) -> None:
    sink, writer, out = _sink(tmp_path, "both")
    sink.handle(event(timestamp=datetime(2026, 11, 24, 23, 59, 59, tzinfo=UTC)))
    sink.handle(event(timestamp=datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC)))
    writer.flush()
    sink.close()
    assert len(log_path(tmp_path, "2026-11-24").read_text().splitlines()) == 1
    assert len(log_path(tmp_path, "2026-11-25").read_text().splitlines()) == 1
    assert len(out.getvalue().splitlines()) == 2


def test_stdout_only_writes_no_file(tmp_path: Path) -> None:
    sink, writer, out = _sink(tmp_path, "stdout")
    sink.handle(event())
    writer.flush()
    assert json.loads(out.getvalue())["kind"] == "completion"
    assert not (tmp_path / "events").exists()


def test_off_writes_nothing(tmp_path: Path) -> None:
    sink, writer, out = _sink(tmp_path, "off")
    sink.handle(event())
    writer.flush()
    assert out.getvalue() == "" and not (tmp_path / "events").exists()


def test_secrets_are_masked_in_any_field(tmp_path: Path) -> None:
    sink, writer, _ = _sink(tmp_path)
    leaky = "Bearer tid=0123456789abcdef;exp=1;sku=x and gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    sink.handle(event(prompt=f"token is {leaky}", error=leaky))
    writer.flush()
    text = log_path(tmp_path, "2026-11-24").read_text()
    assert "tid=0123" not in text and "gho_" not in text and "[REDACTED]" in text


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("Authorization: Bearer abc.def", "Authorization: [REDACTED]"),
        ("Basic YWxpY2U6czNjcjN0", "[REDACTED]"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "[REDACTED]"),
        ("a normal sentence about tidy code", "a normal sentence about tidy code"),
        # The regex matches case-insensitively; the cheap substring pre-check must not let these through.
        ("BEARER abc.def", "[REDACTED]"),
        ("GHP_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "[REDACTED]"),
        ("Ba\u017fic YWxpY2U6czNjcjN0", "[REDACTED]"),  # long s: IGNORECASE matches it to s, lower() does not
        ("bas\u0131c YWxpY2U6czNjcjN0", "[REDACTED]"),  # dotless i
        ("BA\u0130IC YWxpY2U6czNjcjN0".replace("\u0130I", "S\u0130"), "[REDACTED]"),  # dotted capital I
        ("\u00e9t\u00e9 TID=0123456789abcdef;exp=1", "\u00e9t\u00e9 [REDACTED]"),
    ],
)
def test_redact_value(value: str, masked: str) -> None:
    assert redact_value(value) == masked


def test_unknown_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _sink(tmp_path, "syslog")


def test_masking_the_rendered_line_keeps_it_valid_json(tmp_path: Path) -> None:
    sink, writer, _ = _sink(tmp_path)
    tricky = 'say "Bearer abc\\"def" then tid=0123456789abcdef\\n and gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ"x'
    sink.handle(event(error=tricky, prompt=tricky))
    writer.flush()
    line = log_path(tmp_path, "2026-11-24").read_text().strip()
    rec = json.loads(line)
    assert "abc" not in rec["error"] and "0123456789abcdef" not in rec["error"] and "gho_" not in rec["error"]
    assert rec["error"].startswith('say "[REDACTED]')


def test_the_unrolled_hint_check_equals_the_hint_list() -> None:
    from exporter.sinks.jsonlog import _SECRET_HINTS, _hinted

    for hint in _SECRET_HINTS:
        assert _hinted(f"x {hint} y"), hint
    assert not _hinted('{"host": "api.githubcopilot.com", "path": "/chat/completions", "model": "gpt-5"}')


def test_the_first_line_after_a_quiet_spell_wakes_the_writer(tmp_path: Path) -> None:
    sink, writer, _ = _sink(tmp_path)
    sink.handle(event())
    assert not writer._wake.is_set()  # under traffic a line waits for the writer's next batch
    writer._idle = True  # what the writer thread sets while in a wait longer than a batch
    sink.handle(event())
    assert writer._wake.is_set()
    writer.flush()
    assert len(log_path(tmp_path, "2026-11-24").read_text().splitlines()) == 2
