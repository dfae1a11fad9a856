"""Counting decisions as sequences of calls: turns once per interaction id, fallbacks, retries, skips."""

from __future__ import annotations

import pytest

from exporter.classify import Kind
from exporter.counting import Call, Counter, SeenSet
from exporter.streams import Answer


def _answer(text: str = "x", complete: bool = True, finish: str | None = "stop") -> Answer:
    a = Answer()
    a.add_text(0, text)
    a.complete = complete
    a.events = 1
    if finish:
        a.finish_reasons[0] = finish
    return a


def _call(kind: Kind = Kind.CHAT_AGENT, **kw: object) -> Call:
    base: dict[str, object] = {
        "kind": kind,
        "status": 200,
        "request_id": None,
        "interaction_id": None,
        "initiator": None,
        "intent": None,
        "speculative": False,
        "user_last": None,
    }
    base.update(kw)
    return Call(**base)  # type: ignore[arg-type]


# Each case: a sequence of (call, answer) and the expected (counted, skip reason, initiator, source) per call.
SEQUENCES = {
    "vscode agent turn: user, agent rounds, suggestions follow-up, title": (
        [
            _call(interaction_id="T1", initiator="user", intent="conversation-agent", request_id="a"),
            _call(interaction_id="T1", initiator="agent", intent="conversation-agent", request_id="b"),
            _call(interaction_id="T1", initiator="agent", intent="conversation-agent", request_id="c"),
            _call(Kind.CHAT_PANEL, interaction_id="T1", initiator="user", intent="conversation-panel", request_id="d"),
            _call(Kind.CHAT_PANEL, interaction_id="T1", initiator="agent", intent="conversation-panel", request_id="e"),
        ],
        [
            (True, None, "user", "header"),
            (False, "agent_step", "agent", "header"),
            (False, "agent_step", "agent", "header"),
            (False, "turn_followup", "user", "header"),
            (False, "auxiliary", "agent", "header"),
        ],
    ),
    "two turns are two counts": (
        [
            _call(interaction_id="T1", initiator="user", intent="conversation-agent"),
            _call(interaction_id="T2", initiator="user", intent="conversation-agent"),
        ],
        [(True, None, "user", "header"), (True, None, "user", "header")],
    ),
    "a failed first request does not use up the turn": (
        [
            _call(interaction_id="T1", initiator="user", status=429),
            _call(interaction_id="T1", initiator="user", status=200),
        ],
        [(False, "http_error", "user", "header"), (True, None, "user", "header")],
    ),
    "no interaction id: every user request is a turn, agent requests are steps": (
        [
            _call(Kind.CHAT, initiator="user", request_id="z1"),
            _call(Kind.CHAT, initiator="agent", request_id="z2"),
            _call(Kind.CHAT, initiator="user", request_id="z3"),
        ],
        [(True, None, "user", "header"), (False, "agent_step", "agent", "header"), (True, None, "user", "header")],
    ),
    "no initiator header: the last message decides (heuristic)": (
        [
            _call(Kind.CHAT, user_last=True),
            _call(Kind.CHAT, user_last=False),
            _call(Kind.CHAT, user_last=None),
        ],
        [
            (True, None, "user", "heuristic"),
            (False, "not_user_turn", "agent", "heuristic"),
            (False, "agent_step", "unknown", "none"),
        ],
    ),
    "the one automatic retry reuses the request id": (
        [_call(Kind.CHAT, initiator="user", request_id="r"), _call(Kind.CHAT, initiator="user", request_id="r")],
        [(True, None, "user", "header"), (False, "retry_duplicate", "user", "header")],
    ),
    "websocket calls live inside a 101": (
        [_call(Kind.CHAT_WS, status=101, initiator="user", interaction_id="W")],
        [(True, None, "user", "header")],
    ),
    "not an interaction kind": (
        [_call(Kind.TELEMETRY), _call(Kind.EMBEDDINGS), _call(Kind.INSTANT_APPLY, initiator="agent")],
        [
            (False, "not_interaction", "unknown", "none"),
            (False, "not_interaction", "unknown", "none"),
            (False, "not_interaction", "agent", "header"),
        ],
    ),
    "no response at all": (
        [_call(Kind.CHAT, status=None, initiator="user")],
        [(False, "no_response", "user", "header")],
    ),
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_chat_sequences(name: str) -> None:
    calls, want = SEQUENCES[name]
    counter = Counter()
    got = []
    for i, call in enumerate(calls):
        d = counter.decide(call, _answer(), now=1000.0 + i)
        got.append((d.counted, d.skip.value if d.skip else None, d.initiator, d.initiator_source))
    assert got == want


COMPLETIONS = [
    # (call kwargs, answer, expected (counted, reason, initiator))
    ({}, _answer("return a + b"), (True, None, "user")),
    ({"speculative": True}, _answer("x"), (False, "speculative", "agent")),
    ({}, _answer("   \n"), (False, "empty_completion", "user")),
    ({}, _answer("x", complete=False, finish=None), (False, "cancelled", "user")),
    ({"client_aborted": True}, _answer("x"), (False, "cancelled", "user")),
    ({}, _answer("x", complete=False, finish="stop"), (True, None, "user")),  # all choices finished, no [DONE]
    ({"status": 500}, _answer("x"), (False, "http_error", "user")),
    ({}, None, (False, "malformed", "user")),
]


@pytest.mark.parametrize(("kw", "answer", "want"), COMPLETIONS)
def test_completion_decisions(kw: dict[str, object], answer: Answer | None, want: tuple[object, ...]) -> None:
    d = Counter().decide(_call(Kind.COMPLETION, **kw), answer, now=0.0)
    assert (d.counted, d.skip.value if d.skip else None, d.initiator) == want


def test_next_edit_counts_when_it_suggests_something() -> None:
    c = Counter()
    assert c.decide(_call(Kind.NEXT_EDIT, initiator="agent"), _answer("edit"), 0.0).counted
    assert c.decide(_call(Kind.NEXT_EDIT, initiator="agent"), _answer(""), 0.0).skip.value == "empty_completion"  # type: ignore[union-attr]


def test_seen_set_expires_and_is_bounded() -> None:
    s = SeenSet(max_items=3, ttl_seconds=10)
    for i in range(5):
        s.add(f"k{i}", now=float(i))
    assert len(s) == 3 and s.get("k0", 5.0) is None and s.get("k4", 5.0) == ""
    assert s.get("k4", 100.0) is None  # expired
    s.add("late", now=100.0)
    assert len(s) <= 3


def test_turn_ids_expire_after_the_ttl() -> None:
    c = Counter(ttl_seconds=60)
    call = _call(interaction_id="T", initiator="user")
    assert c.decide(call, None, 0.0).counted
    assert not c.decide(call, None, 30.0).counted
    assert c.decide(call, None, 1000.0).counted
