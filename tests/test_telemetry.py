"""Reading telemetry posts: both clients' envelopes, both stores, arrays and NDJSON, hostile bodies."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import telemetry as t
from exporter.telemetry import ENHANCED_IKEY, TelemetryFact, event_suffix, parse_post, redacted_for_recording
from tests import telemetry_samples as ts

RID = "0c3a5a3e-1111-4a1b-9f00-000000000001"


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("copilot/ghostText.shown", "ghostText.shown"),
        ("agent/ghostText.accepted", "ghostText.accepted"),
        ("copilot-chat/copilot-nes/provideInlineEdit", "copilot-nes/provideInlineEdit"),
        ("agent/copilot-nes/provideInlineEdit", "copilot-nes/provideInlineEdit"),
        ("GitHub.copilot-chat/panel.edit.feedback", "panel.edit.feedback"),
        ("copilot/agent/ghostText.shown", "ghostText.shown"),
        ("ghostText.rejected", "ghostText.rejected"),
        ("other/thing", "other/thing"),
    ],
)
def test_event_names_match_by_suffix_after_the_known_prefixes(name: str, suffix: str) -> None:
    assert event_suffix(name) == suffix


def _facts(body: bytes) -> list[TelemetryFact]:
    post = parse_post(body)
    assert post.skipped == ()
    return list(post.facts)


# (envelope, the fact it states) for both clients; VS Code names the event `copilot/`, the language server `agent/`.
FACT_TABLE: list[tuple[str, dict[str, Any], TelemetryFact | None]] = [
    (
        "vscode shown",
        ts.ghost("shown", RID, chars=56, lines=2),
        TelemetryFact("shown", "standard", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, 0, 0),
    ),
    (
        "ls shown, choice 2",
        ts.ghost("shown", RID, "agent/", choice=2, language="lua", editor=ts.NEOVIM_EDITOR, plugin=ts.NEOVIM_PLUGIN),
        TelemetryFact("shown", "standard", RID, 2, "lua", ts.NEOVIM_EDITOR, ts.NEOVIM_PLUGIN),
    ),
    (
        "partial accept",
        ts.ghost("accepted", RID, chars=12, lines=1, comp_type="partial"),
        TelemetryFact("accepted", "standard", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, 12, 1, True),
    ),
    (
        "full accept (ls)",
        ts.ghost("accepted", RID, "agent/", chars=56, lines=3, comp_type="full"),
        TelemetryFact("accepted", "standard", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, 56, 3, False),
    ),
    (
        "reject",
        ts.ghost("rejected", RID, chars=40, comp_type="full"),
        TelemetryFact("rejected", "standard", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, 40, 0),
    ),
    (
        "still in code after 5 min",
        ts.still_in_code(RID, 300, True),
        TelemetryFact(
            "still_in_code", "standard", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, after="5m", still=True
        ),
    ),
    ("still in code after 2 min: not kept", ts.still_in_code(RID, 120, True), None),
    (
        "next edit shown and accepted",
        ts.next_edit(RID, True, "accepted", editor=None, plugin=None),
        TelemetryFact("next_edit", "standard", RID, 0, "python", shown=True, outcome="accepted"),
    ),
    (
        "next edit not shown",
        ts.next_edit(RID, False, "notAccepted", editor=None, plugin=None),
        TelemetryFact("next_edit", "standard", RID, 0, "python", shown=False, outcome=None),
    ),
    (
        "chat edit rejected",
        ts.chat_edit("rejected", "typescript"),
        TelemetryFact(
            "chat_edit", "standard", None, 0, "typescript", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, outcome="rejected"
        ),
    ),
    (
        "inline chat accepted",
        ts.inline_done(True),
        TelemetryFact(
            "chat_edit", "standard", None, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, outcome="accepted"
        ),
    ),
    ("chat edit with an unknown outcome", ts.chat_edit("exploded"), None),
    ("issued: counted as an event, no fact", ts.ghost("issued", RID), None),
    (
        "enhanced store accept",
        ts.ghost("accepted", RID, chars=5, lines=1, ikey=ENHANCED_IKEY),
        TelemetryFact("accepted", "enhanced", RID, 0, "python", ts.VSCODE_EDITOR, ts.VSCODE_PLUGIN, 5, 1),
    ),
]


@pytest.mark.parametrize(("what", "env", "want"), FACT_TABLE, ids=[row[0] for row in FACT_TABLE])
@pytest.mark.parametrize("shape", ["ndjson", "array"])
def test_fact_table(what: str, env: dict[str, Any], want: TelemetryFact | None, shape: str) -> None:
    body = ts.ndjson([env], gz=False) if shape == "ndjson" else ts.array([env])
    assert _facts(body) == ([want] if want is not None else [])


def test_events_are_counted_per_store_and_bounded_name() -> None:
    body = ts.array(
        [
            ts.ghost("shown", RID),
            ts.ghost("shown", RID, "agent/"),
            ts.envelope("agent/conversation.turnCompleted"),
            ts.envelope("copilot/some.brandNewEvent"),
            ts.captured(RID),
            ts.envelope("agent/thing", ikey="aaaaaaaa-0000-0000-0000-000000000000"),
        ]
    )
    post = parse_post(body)
    assert post.events == (
        ("enhanced", "ghostText.capturedAfterAccepted", 1),
        ("other", "other", 1),
        ("standard", "conversation.turnCompleted", 1),
        ("standard", "ghostText.shown", 2),
        ("standard", "other", 1),
    )


def test_a_single_object_body_and_blank_lines() -> None:
    body = b"\n" + json.dumps(ts.ghost("shown", RID)).encode() + b"\n\n"
    assert [f.signal for f in _facts(body)] == ["shown"]
    assert parse_post(b"") == t.ParsedPost()


HOSTILE: list[tuple[str, bytes, tuple[tuple[str, int], ...]]] = [
    ("not json", b"hello world", (("malformed_body", 1),)),
    ("truncated array", b'[{"iKey": "x", "data": {', (("malformed_body", 1),)),
    ("a json number", b"42", (("malformed_body", 1),)),
    ("an object that is no envelope", b'{"a": 1}', (("bad_envelope", 1),)),
    ("array of junk", b'[1, "x", null, {"data": "nope"}, {"data": {"baseData": {"name": 7}}}]', (("bad_envelope", 5),)),
    ("ndjson with a cut line", json.dumps(ts.ghost("shown", RID)).encode() + b'\n{"iKey": "7d', (("bad_envelope", 1),)),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, (("malformed_body", 1),)),
    ("too large", b"[" + b" " * (t.MAX_TELEMETRY_BYTES + 1) + b"]", (("too_large", 1),)),
]


@pytest.mark.parametrize(("what", "body", "skipped"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_bodies_are_skipped_and_counted(what: str, body: bytes, skipped: tuple[tuple[str, int], ...]) -> None:
    post = parse_post(body)
    assert post.skipped == skipped
    assert all(f.signal == "shown" for f in post.facts)


def test_too_many_envelopes_are_cut_at_the_cap() -> None:
    body = ts.ndjson([ts.ghost("shown", f"r{i}") for i in range(t.MAX_ENVELOPES + 5)], gz=False)
    post = parse_post(body)
    assert len(post.facts) == t.MAX_ENVELOPES
    assert post.skipped == (("too_many_events", 5),)
    array = parse_post(ts.array([ts.ghost("shown", f"r{i}") for i in range(t.MAX_ENVELOPES + 3)]))
    assert len(array.facts) == t.MAX_ENVELOPES and array.skipped == (("too_many_events", 3),)


@pytest.mark.parametrize(
    ("meas", "chars"),
    [
        ({"compCharLen": -5}, 0),
        ({"compCharLen": float("nan")}, 0),
        ({"compCharLen": 1e12}, 0),
        ({"compCharLen": True}, 0),
        ({"compCharLen": "17"}, 17),
        ({"compCharLen": 17.9}, 17),
    ],
)
def test_absurd_measurements_are_not_counted(meas: dict[str, Any], chars: int) -> None:
    env = ts.envelope("copilot/ghostText.accepted", {"headerRequestId": RID}, meas)
    (fact,) = _facts(ts.array([env]))
    assert fact.chars == chars


def test_hostile_strings_are_cleaned_and_bounded() -> None:
    env = ts.ghost("shown", "r\x00\x1b[31m" + "x" * 500, language="py\nthon")
    (fact,) = _facts(ts.array([env]))
    assert fact.request_id is not None and len(fact.request_id) <= 128 and "\x00" not in fact.request_id
    assert fact.language == "python"


def test_recording_body_drops_the_enhanced_store_and_code_properties() -> None:
    conversation = ts.envelope("agent/conversation.turnCompleted", {"messageText": "my secret prompt"})
    body = gzip.decompress(ts.ndjson([ts.captured(RID), ts.ghost("accepted", RID, chars=3), conversation]))
    doc = redacted_for_recording(body)
    text = json.dumps(doc)
    assert ts.SECRET_CODE not in text and "leaked_secret" not in text and "my secret prompt" not in text
    enhanced, accepted, turn = doc
    assert enhanced["data"]["baseData"] == {
        "name": "copilot/ghostText.capturedAfterAccepted",
        "properties": "[dropped]",
        "measurements": "[dropped]",
    }
    assert accepted["data"]["baseData"]["properties"]["headerRequestId"] == RID
    assert accepted["data"]["baseData"]["measurements"] == {"compCharLen": 3}
    assert accepted["tags"] == "[dropped]"
    assert turn["data"]["baseData"]["properties"]["messageText"] == "[dropped]"
    assert redacted_for_recording(b"garbage") == {"dropped": "malformed_body"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_NAMES = st.sampled_from(["copilot/ghostText.accepted", "agent/ghostText.stillInCode", "copilot-chat/inline.done"])


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    post = parse_post(body)
    assert all(reason in t.SKIP_REASONS for reason, _ in post.skipped)


@given(
    st.lists(
        st.builds(
            lambda n, p, m: ts.envelope(n, p, m),
            _NAMES,
            st.dictionaries(
                st.sampled_from(
                    [
                        "headerRequestId",
                        "choiceIndex",
                        "languageId",
                        "compType",
                        "timeout",
                        "stillInCodeHeuristic",
                        "accepted",
                    ]
                ),
                _JSON,
                max_size=6,
            ),
            st.dictionaries(st.sampled_from(["compCharLen", "numLines", "timeout", "accepted"]), _JSON),
        ),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_hostile_envelope_fields_give_bounded_facts(envs: list[dict[str, Any]]) -> None:
    for shape in (ts.array(envs), ts.ndjson(envs, gz=False)):
        for fact in parse_post(shape).facts:
            assert 0 <= fact.chars <= t.MAX_NUMBER and 0 <= fact.lines <= t.MAX_NUMBER
            assert 0 <= fact.choice <= t.MAX_CHOICE
            for text in (fact.request_id, fact.language, fact.editor_version):
                assert text is None or (len(text) <= 128 and not any(ord(c) < 32 or ord(c) == 127 for c in text))
