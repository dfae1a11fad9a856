"""Acceptance: deduplicated increments from telemetry facts, the tracker hook-in, metrics, log, summary, rebuild."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.acceptance import AcceptanceState, AcceptanceTally, Suggestion, TelemetryReport
from exporter.calls import ResponseMeta
from exporter.classify import HostRole
from exporter.insight import InsightDay, insight_path
from exporter.labels import LabelBounds
from exporter.observe import observations
from exporter.rebuild import rebuild_both
from exporter.telemetry import ParsedPost, TelemetryFact, parse_post
from tests import telemetry_samples as ts
from tests.conftest import Harness
from tests.factories import event
from tests.samples import Exchange

R1, R2 = "11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002"


def _report(state: AcceptanceState, envelopes: list[dict[str, Any]], user: str = "alice") -> TelemetryReport:
    return state.report(parse_post(ts.array(envelopes)), user, "unknown", LabelBounds(), now=1000.0)


def _sum(reports: list[TelemetryReport], signal: str, what: str = "n") -> int:
    return sum(getattr(s, what) for r in reports for s in r.suggestions if s.signal == signal)


# (what happens, the posts in order, expected shown / accepted / rejected / accepted chars / accepted lines)
SCENARIOS: list[tuple[str, list[list[dict[str, Any]]], tuple[int, int, int, int, int]]] = [
    (
        "shown then full accept",
        [[ts.ghost("shown", R1)], [ts.ghost("accepted", R1, chars=40, lines=2)]],
        (1, 1, 0, 40, 2),
    ),
    (
        "partial, partial, full: the maximum",
        [
            [ts.ghost("shown", R1)],
            [ts.ghost("accepted", R1, chars=10, lines=1, comp_type="partial")],
            [ts.ghost("accepted", R1, chars=25, lines=1, comp_type="partial")],
            [ts.ghost("accepted", R1, chars=60, lines=3, comp_type="full")],
        ],
        (1, 1, 0, 60, 3),
    ),
    (
        "partial accept then the rest rejected: an accept",
        [
            [ts.ghost("shown", R1), ts.ghost("accepted", R1, chars=8, lines=1, comp_type="partial")],
            [ts.ghost("rejected", R1, chars=30, comp_type="partial")],
        ],
        (1, 1, 0, 8, 1),
    ),
    (
        "an accept sent twice (retried post) counts once",
        [
            [ts.ghost("shown", R1), ts.ghost("accepted", R1, chars=9, lines=1)],
            [ts.ghost("accepted", R1, chars=9, lines=1)],
        ],
        (1, 1, 0, 9, 1),
    ),
    (
        "a late smaller cumulative value adds nothing",
        [
            [ts.ghost("accepted", R1, chars=30, lines=2, comp_type="partial")],
            [ts.ghost("accepted", R1, chars=12, lines=1, comp_type="partial")],
        ],
        (0, 1, 0, 30, 2),
    ),
    (
        "shown and rejected",
        [[ts.ghost("shown", R1), ts.ghost("rejected", R1)], [ts.ghost("rejected", R1)]],
        (1, 0, 1, 0, 0),
    ),
    (
        "two choices of one request are two suggestions",
        [
            [
                ts.ghost("shown", R1, choice=0),
                ts.ghost("shown", R1, choice=1),
                ts.ghost("accepted", R1, choice=1, chars=5, lines=1),
            ]
        ],
        (2, 1, 0, 5, 1),
    ),
    ("shown twice (cycling back) counts once", [[ts.ghost("shown", R1)], [ts.ghost("shown", R1)]], (1, 0, 0, 0, 0)),
    (
        "events without a request id count as sent",
        [
            [ts.envelope("agent/ghostText.shown", {"languageId": "go"})] * 2
            + [ts.envelope("agent/ghostText.accepted", {}, {"compCharLen": 4, "numLines": 1})]
        ],
        (2, 1, 0, 4, 1),
    ),
]


@pytest.mark.parametrize(("what", "posts", "want"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_dedupe_scenarios(what: str, posts: list[list[dict[str, Any]]], want: tuple[int, ...]) -> None:
    state = AcceptanceState()
    reports = [_report(state, p) for p in posts]
    got = (
        _sum(reports, "shown"),
        _sum(reports, "accepted"),
        _sum(reports, "rejected"),
        _sum(reports, "accepted", "chars"),
        _sum(reports, "accepted", "lines"),
    )
    assert got == want


def test_next_edits_and_chat_edits() -> None:
    state = AcceptanceState()
    report = _report(
        state,
        [
            ts.next_edit(R1, True, "accepted"),
            ts.next_edit(R2, True, "rejected"),
            ts.next_edit("r3", False, "notAccepted"),
            ts.next_edit(R1, True, "accepted"),  # the same lifetime again: nothing new
            ts.chat_edit("accepted"),
            ts.chat_edit("saved"),
            ts.inline_done(False),
        ],
    )
    by = {(s.signal, s.kind, s.outcome): 0 for s in report.suggestions}
    for s in report.suggestions:
        by[(s.signal, s.kind, s.outcome)] += s.n
    assert by == {
        ("shown", "next_edit", None): 2,
        ("accepted", "next_edit", None): 1,
        ("rejected", "next_edit", None): 1,
        ("chat_edit", "chat_edit", "accepted"): 1,
        ("chat_edit", "chat_edit", "saved"): 1,
        ("chat_edit", "chat_edit", "rejected"): 1,
    }
    assert all(s.chars == 0 for s in report.suggestions if s.kind == "next_edit")


def test_survival_checks_once_per_check_and_only_of_known_suggestions() -> None:
    state = AcceptanceState()
    _report(state, [ts.ghost("shown", R1), ts.ghost("accepted", R1, chars=3, lines=1)])
    report = _report(
        state,
        [
            ts.still_in_code(R1, 30, True),
            ts.still_in_code(R1, 30, True),
            ts.still_in_code(R1, 300, False),
            ts.still_in_code(R1, 15, True),
        ],
    )
    assert [(s.outcome, s.still) for s in report.suggestions] == [("30s", True), ("5m", False)]


def test_editor_and_language_come_from_the_event_else_the_shown_event_else_the_connection() -> None:
    state = AcceptanceState()
    bounds = LabelBounds()
    shown = ts.ghost("shown", R1, "agent/", language="lua", editor=ts.NEOVIM_EDITOR, plugin=ts.NEOVIM_PLUGIN)
    later = ts.envelope(
        "agent/ghostText.accepted", {"headerRequestId": R1}, {"compCharLen": 3}, editor=None, plugin=None
    )
    first = state.report(parse_post(ts.array([shown])), "bob", "jetbrains", bounds, now=1.0)
    second = state.report(parse_post(ts.array([later])), "bob", "jetbrains", bounds, now=2.0)
    assert (first.suggestions[0].editor, first.suggestions[0].language) == ("neovim", "lua")
    assert (second.suggestions[0].editor, second.suggestions[0].language) == ("neovim", "lua")
    alone = state.report(
        parse_post(ts.array([ts.chat_edit("accepted", editor=None, plugin=None)])), "bob", "jetbrains", bounds
    )
    assert alone.suggestions[0].editor == "jetbrains"
    jb = ts.ghost("shown", R2, "agent/", language="kotlin", editor=ts.JETBRAINS_EDITOR, plugin=ts.JETBRAINS_PLUGIN)
    assert state.report(parse_post(ts.array([jb])), "bob", "unknown", bounds).suggestions[0].editor == "jetbrains-ic"
    hostile = ts.ghost("shown", "r9", language="x" * 40, editor="Evil\x00Editor/1.0")
    s = state.report(parse_post(ts.array([hostile])), "bob", "unknown", bounds).suggestions[0]
    assert (s.editor, s.language) == ("other", "other")


def test_keys_of_different_users_are_apart_and_the_state_is_bounded_in_time_and_size() -> None:
    state = AcceptanceState(max_keys=3)
    assert (
        _sum(
            [_report(state, [ts.ghost("shown", R1)], "alice"), _report(state, [ts.ghost("shown", R1)], "bob")], "shown"
        )
        == 2
    )
    for i in range(10):
        _report(state, [ts.ghost("shown", f"k{i}")])
    assert len(state) <= 4
    state = AcceptanceState()
    bounds = LabelBounds()
    state.report(parse_post(ts.array([ts.ghost("shown", R1)])), "alice", "unknown", bounds, now=0.0)
    again = state.report(parse_post(ts.array([ts.ghost("shown", R1)])), "alice", "unknown", bounds, now=16 * 60.0)
    assert len(again.suggestions) == 1 and len(state) == 1  # expired after 15 minutes: a new suggestion


# -- observations: the one rule ---------------------------------------------------------------------------------


def test_observations_of_a_telemetry_post() -> None:
    report = TelemetryReport(
        events=(("standard", "ghostText.shown", 2), ("enhanced", "other", 1)),
        skipped=(("bad_envelope", 3),),
        suggestions=(
            Suggestion("shown", "completion", "vscode", "python", R1),
            Suggestion("accepted", "completion", "vscode", "python", R1, chars=40, lines=2),
            Suggestion("accepted", "completion", "vscode", "python", R1, n=0, chars=5),
            Suggestion("rejected", "next_edit", "vscode", "go", R2),
            Suggestion("accepted", "next_edit", "vscode", "go", R2),
            Suggestion("survival", "completion", "vscode", "python", R1, outcome="10m", still=False),
            Suggestion("chat_edit", "chat_edit", "vscode", "python", None, outcome="saved"),
        ),
    )
    ev = event(kind="telemetry", model_call=False, counted=False, skip_reason="not_interaction", telemetry=report)
    got = {
        (o.metric.name, o.labels): o.value
        for o in observations(ev)
        if o.metric.name.startswith(("copilot_sugg", "copilot_code", "copilot_chat", "copilot_telemetry"))
    }
    assert got == {
        ("copilot_telemetry_events", ("alice", "standard", "ghostText.shown")): 2,
        ("copilot_telemetry_events", ("alice", "enhanced", "other")): 1,
        ("copilot_telemetry_skipped", ("bad_envelope",)): 3,
        ("copilot_suggestions_shown", ("alice", "vscode", "python", "completion")): 1,
        ("copilot_suggestions_accepted", ("alice", "vscode", "python", "completion")): 1,
        ("copilot_suggestion_accepted_chars", ("alice", "vscode", "python")): 5,  # the last of the two increments
        ("copilot_suggestion_accepted_lines", ("alice", "vscode", "python")): 2,
        ("copilot_suggestions_rejected", ("alice", "vscode", "go", "next_edit")): 1,
        ("copilot_suggestions_accepted", ("alice", "vscode", "go", "next_edit")): 1,
        ("copilot_code_survival", ("alice", "vscode", "python", "10m", "false")): 1,
        ("copilot_chat_edit_decisions", ("alice", "vscode", "python", "saved")): 1,
    }


# -- through the addon: the post passes untouched, metrics, log line, summaries, rebuild ----------------------


def _day_posts() -> list[tuple[str, Exchange]]:
    # Decoded: mitmproxy's Request.make gzips it again for the Content-Encoding: gzip header.
    vscode = ts.ndjson(
        [
            ts.ghost("shown", R1),
            ts.ghost("accepted", R1, chars=10, lines=1, comp_type="partial"),
            ts.ghost("accepted", R1, chars=30, lines=2, comp_type="full"),
            ts.ghost("shown", R2),
            ts.ghost("rejected", R2),
            ts.captured(R1),
        ],
        gz=False,
    )
    ls = ts.array(
        [
            ts.ghost(
                "shown", "b1", "agent/", language="kotlin", editor=ts.JETBRAINS_EDITOR, plugin=ts.JETBRAINS_PLUGIN
            ),
            ts.ghost(
                "accepted",
                "b1",
                "agent/",
                language="kotlin",
                chars=7,
                lines=1,
                editor=ts.JETBRAINS_EDITOR,
                plugin=ts.JETBRAINS_PLUGIN,
            ),
        ]
    )
    return [
        ("alice", ts.telemetry_exchange(vscode, ts.vscode_headers(), rid="t1")),
        ("bob", ts.telemetry_exchange(ls, ts.ls_headers(), rid="t2")),
    ]


def test_posts_through_the_addon_reach_metrics_log_summary_and_rebuild(harness: Harness) -> None:
    for user, ex in _day_posts():
        f = harness.flow(ex, user=user)  # asserts the request is unchanged
        assert f.request.content == ex.request_body
    refused = ts.telemetry_exchange(ts.array([ts.ghost("shown", "never")]), ts.ls_headers(), status=503, rid="t3")
    harness.flow(refused, user="bob")
    s = harness.sample
    assert (
        s("copilot_suggestions_shown_total", user="alice", editor="vscode", language="python", kind="completion") == 2
    )
    assert (
        s("copilot_suggestions_accepted_total", user="alice", editor="vscode", language="python", kind="completion")
        == 1
    )
    assert (
        s("copilot_suggestions_rejected_total", user="alice", editor="vscode", language="python", kind="completion")
        == 1
    )
    assert s("copilot_suggestion_accepted_chars_total", user="alice", editor="vscode", language="python") == 30
    assert s("copilot_suggestion_accepted_lines_total", user="alice", editor="vscode", language="python") == 2
    assert (
        s("copilot_suggestions_shown_total", user="bob", editor="jetbrains-ic", language="kotlin", kind="completion")
        == 1
    )
    assert (
        s("copilot_telemetry_events_total", user="alice", store="enhanced", event="ghostText.capturedAfterAccepted")
        == 1
    )
    assert (
        s("copilot_telemetry_events_total", user="bob", store="standard", event="ghostText.shown") == 1
    )  # not the 503
    harness.flush()
    day = harness.events[0].day
    log_text = (harness.data_dir / "events" / f"copilot-events_{day}.jsonl").read_text()
    assert ts.SECRET_CODE not in log_text and "capturedCodeJson" not in log_text
    lines = [json.loads(line) for line in log_text.splitlines()]
    # The refused post is a failed call (logged as such) whose events are not read: the client sends them again.
    assert [(r["event"], r["user"]) for r in lines] == [
        ("copilot.telemetry", "alice"),
        ("copilot.telemetry", "bob"),
        ("copilot.skipped", "bob"),
    ]
    assert "telemetry" not in lines[2]
    live = json.loads(insight_path(harness.data_dir, day).read_text())
    alice = live["users"]["alice"]["acceptance"]
    assert (alice["shown"], alice["accepted"], alice["rejected"], alice["accepted_lines"], alice["ratio"]) == (
        2,
        1,
        1,
        2,
        0.5,
    )
    assert live["users"]["bob"]["acceptance"]["by_editor"]["jetbrains-ic"]["accepted_chars"] == 7
    harness.addon.done()
    _, extended, bad = rebuild_both(harness.data_dir, day, write=False)
    assert bad == 0 and json.loads(extended) == live


def test_a_user_without_telemetry_has_null_acceptance_and_one_with_only_other_events_has_zeros() -> None:
    day = InsightDay("2026-11-24")
    day.add_event(event(user="carol"))
    quiet = TelemetryReport(events=(("standard", "conversation.turnCompleted", 1),))
    day.add_event(
        event(
            user="dave",
            kind="telemetry",
            counted=False,
            model_call=False,
            skip_reason="not_interaction",
            telemetry=quiet,
        )
    )
    doc = day.to_doc()
    assert doc["users"]["carol"]["acceptance"] is None
    dave = doc["users"]["dave"]["acceptance"]
    assert (dave["shown"], dave["accepted"], dave["ratio"], dave["telemetry_events"]) == (0, 0, None, {"standard": 1})


def test_the_section_survives_a_restart_merge() -> None:
    report = TelemetryReport(
        events=(("standard", "ghostText.shown", 3),),
        suggestions=(
            Suggestion("shown", "completion", "vscode", "python", R1),
            Suggestion("accepted", "completion", "vscode", "python", R1, chars=9, lines=1),
            Suggestion("survival", "completion", "vscode", "python", R1, outcome="30s", still=True),
            Suggestion("chat_edit", "chat_edit", "vscode", "python", None, outcome="rejected"),
        ),
    )
    ev = event(kind="telemetry", counted=False, model_call=False, skip_reason="not_interaction", telemetry=report)
    first = InsightDay("2026-11-24")
    first.add_event(ev)
    restarted = InsightDay("2026-11-24")
    restarted.merge(json.loads(json.dumps(first.to_doc())))
    restarted.add_event(replace(ev, telemetry=report))
    acc = restarted.to_doc()["users"]["alice"]["acceptance"]
    assert (acc["shown"], acc["accepted"], acc["accepted_chars"], acc["ratio"]) == (2, 2, 18, 1.0)
    assert acc["code_survival"] == {"30s": {"true": 2}} and acc["chat_edits"] == {"rejected": 2}
    assert acc["telemetry_events"] == {"standard": 6}
    tally = AcceptanceTally()
    tally.merge({"detail": {"completion": {"x": "not a tree"}}, "telemetry_events": "junk"})
    assert not tally.seen and tally.to_doc()["shown"] == 0


def test_recording_a_telemetry_post_drops_the_enhanced_store(harness: Harness, tmp_path: Path) -> None:
    harness.tctx.configure(harness.addon, copilot_record=True, copilot_record_telemetry=True)
    _, ex = _day_posts()[0]
    harness.flow(ex)
    harness.flush()
    (recorded,) = (harness.data_dir / "usage").rglob("*.json")
    text = recorded.read_text()
    assert ts.SECRET_CODE not in text and "leaked_secret" not in text
    doc = json.loads(text)
    names = [e["data"]["baseData"]["name"] for e in doc["request"]["content"]]
    assert names[0] == "copilot/ghostText.shown" and "copilot/ghostText.capturedAfterAccepted" in names


def test_an_undecodable_post_is_counted() -> None:
    from tests.test_calls import FakeClock, _meta, _tracker

    tracker, failures = _tracker(FakeClock())
    ex = ts.telemetry_exchange(b"", ts.vscode_headers())
    for i, (raw, reason) in enumerate([(b"\x1f\x8bnot gzip at all", "malformed_body"), (b"[1]", "bad_envelope")]):
        tracker.start(f"f{i}", _meta(ex, HostRole.TELEMETRY))
        assert tracker.wants_body(f"f{i}")
        tracker.request_body(f"f{i}", raw, "gzip" if i == 0 else None)
        done = tracker.finish(f"f{i}", ResponseMeta(200))
        assert done is not None and done.event.telemetry is not None
        assert done.event.telemetry.skipped == ((reason, 1),)
    assert failures == []


def test_a_bug_in_reading_telemetry_is_counted_and_the_post_still_has_its_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kw: Any) -> ParsedPost:
        raise RuntimeError("boom")

    monkeypatch.setattr("exporter.calls.parse_post", broken)
    harness.flow(_day_posts()[1][1], user="bob")
    assert harness.sample("copilot_exporter_errors_total", component="telemetry") == 1
    assert harness.last().kind == "telemetry" and harness.last().telemetry is None


def test_fact_dataclass_is_frozen() -> None:
    fact = TelemetryFact("shown", "standard")
    with pytest.raises(AttributeError):
        fact.signal = "accepted"  # type: ignore[misc]


def test_top_level_by_editor_and_by_language_are_completions_next_edits_by_kind() -> None:
    report = TelemetryReport(
        events=(("standard", "ghostText.shown", 5),),
        suggestions=(
            Suggestion("shown", "completion", "vscode", "python", R1, n=2),
            Suggestion("accepted", "completion", "vscode", "python", R1, chars=4, lines=1),
            Suggestion("shown", "next_edit", "neovim", "lua", R2, n=3),
            Suggestion("accepted", "next_edit", "neovim", "lua", R2, n=3),
        ),
    )
    tally = AcceptanceTally()
    tally.add(report.log())
    doc = tally.to_doc()
    assert (doc["shown"], doc["accepted"], doc["accepted_lines"], doc["ratio"]) == (2, 1, 1, 0.5)
    assert doc["by_kind"]["next_edit"]["ratio"] == 1.0 and doc["by_kind"]["completion"]["ratio"] == 0.5
    assert set(doc["by_editor"]) == {"vscode"} and set(doc["by_language"]) == {"python"}
    nes_only = AcceptanceTally()
    nes_only.add(TelemetryReport(events=report.events, suggestions=report.suggestions[2:]).log())
    assert (nes_only.to_doc()["shown"], nes_only.to_doc()["ratio"]) == (0, None)
