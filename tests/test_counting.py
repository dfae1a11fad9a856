"""Counting decisions as sequences of calls: turns once per interaction id, fallbacks, retries, skips."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.bodies import parse_request
from exporter.classify import Kind, chat_mode
from exporter.counting import Call, Counter, SeenSet
from exporter.sse import SSEDecoder, SSEEvent
from exporter.streams import Answer, AnswerParser, Shape, shape_for_path
from tests import samples


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
        "task_id": None,
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
    "IDE chat: the user call meets a 429, the client resends it as user: one turn, then its rounds": (
        [
            _call(interaction_id="T1", initiator="user", intent="conversation-agent", request_id="a", status=429),
            _call(interaction_id="T1", initiator="user", intent="conversation-agent", request_id="a2"),
            _call(interaction_id="T1", initiator="agent", intent="conversation-agent", request_id="b"),
            _call(Kind.CHAT_PANEL, interaction_id="T1", initiator="agent", intent="conversation-panel", request_id="c"),
        ],
        [
            (False, "http_error", "user", "header"),
            (True, None, "user", "header"),
            (False, "agent_step", "agent", "header"),
            (False, "auxiliary", "agent", "header"),
        ],
    ),
    "IDE chat: the user call fails, the retry comes as agent: the retry counts the turn once": (
        [
            _call(interaction_id="T1", initiator="user", intent="conversation-agent", request_id="a", status=429),
            _call(interaction_id="T1", initiator="agent", intent="conversation-agent", request_id="b"),
            _call(interaction_id="T1", initiator="agent", intent="conversation-agent", request_id="c"),
            _call(interaction_id="T1", initiator="user", intent="conversation-agent", request_id="d"),
        ],
        [
            (False, "http_error", "user", "header"),
            (True, None, "user", "retry"),
            (False, "agent_step", "agent", "header"),
            (False, "turn_followup", "user", "header"),
        ],
    ),
    "CLI: 429, the retry as agent (same task), a tool round: counted once, on the retry": (
        [
            _call(interaction_id="P", task_id="K", initiator="user", intent="conversation-user", status=429),
            _call(interaction_id="P", task_id="K", initiator="agent", intent="conversation-agent"),
            _call(interaction_id="P", task_id="K", initiator="agent", intent="conversation-agent"),
        ],
        [
            (False, "http_error", "user", "header"),
            (True, None, "user", "retry"),
            (False, "agent_step", "agent", "header"),
        ],
    ),
    "CLI: six 429s, no success: the prompt never counts": (
        [_call(interaction_id="P", task_id="K", initiator="user", intent="conversation-user", status=429)]
        + [_call(interaction_id="P", task_id="K", initiator="agent", intent="conversation-agent", status=429)] * 5,
        [(False, "http_error", "user", "header")] + [(False, "http_error", "agent", "header")] * 5,
    ),
    "a user call without an answer leaves the turn pending too": (
        [
            _call(interaction_id="P", task_id="K", initiator="user", status=None),
            _call(interaction_id="P", task_id="K", initiator="agent"),
        ],
        [(False, "no_response", "user", "header"), (True, None, "user", "retry")],
    ),
    "CLI /v1/messages: conversation-user then conversation-agent rounds are one loop, not auxiliary": (
        [
            _call(interaction_id="P", task_id="K", initiator="user", intent="conversation-user"),
            _call(interaction_id="P", task_id="K", initiator="agent", intent="conversation-agent"),
            _call(interaction_id="P", task_id="K", initiator="agent", intent=None),
        ],
        [
            (True, None, "user", "header"),
            (False, "agent_step", "agent", "header"),
            (False, "agent_step", "agent", "header"),
        ],
    ),
    "the same task id is the same agent loop whatever the intent says": (
        [
            _call(interaction_id="P", task_id="K", initiator="user", intent="conversation-agent"),
            _call(interaction_id="P", task_id="K", initiator="agent", intent="conversation-other"),
            _call(interaction_id="P", task_id="K2", initiator="agent", intent="conversation-other"),
        ],
        [
            (True, None, "user", "header"),
            (False, "agent_step", "agent", "header"),
            (False, "auxiliary", "agent", "header"),
        ],
    ),
    "while pending, a call of another loop (a title) neither counts nor uses up the turn": (
        [
            _call(interaction_id="T", task_id="a", initiator="user", intent="conversation-agent", status=503),
            _call(Kind.CHAT_PANEL, interaction_id="T", task_id="t", initiator="agent", intent="conversation-panel"),
            _call(interaction_id="T", task_id="b", initiator="agent", intent="conversation-agent"),
        ],
        [
            (False, "http_error", "user", "header"),
            (False, "auxiliary", "agent", "header"),
            (True, None, "user", "retry"),
        ],
    ),
    "an interaction whose first call is the agent's never counts": (
        [
            _call(interaction_id="A", initiator="agent", intent="conversation-agent", status=429),
            _call(interaction_id="A", initiator="agent", intent="conversation-agent"),
        ],
        [(False, "http_error", "agent", "header"), (False, "agent_step", "agent", "header")],
    ),
    "without an interaction id a failed user call changes nothing: the agent retry is a step": (
        [_call(Kind.CHAT, initiator="user", status=429), _call(Kind.CHAT, initiator="agent")],
        [(False, "http_error", "user", "header"), (False, "agent_step", "agent", "header")],
    ),
    "completions are not chat turns: a failed one leaves nothing pending": (
        [
            _call(Kind.COMPLETION, interaction_id="C", status=429),
            _call(Kind.CHAT_AGENT, interaction_id="C", initiator="agent"),
        ],
        [(False, "http_error", "user", "inferred"), (False, "agent_step", "agent", "header")],
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
    s: SeenSet[str] = SeenSet(max_items=3, ttl_seconds=10)
    for i in range(5):
        s.add(f"k{i}", now=float(i), value=f"v{i}")
    assert len(s) == 3 and s.get("k0", 5.0) is None and s.get("k4", 5.0) == "v4"
    assert s.get("k4", 100.0) is None  # expired
    s.add("late", now=100.0, value="")
    assert len(s) <= 3
    s.discard("late")
    s.discard("never-added")
    assert s.get("late", 100.0) is None


def test_pending_turns_expire_after_the_ttl() -> None:
    c = Counter(ttl_seconds=60)
    failed = _call(interaction_id="P", initiator="user", status=429)
    retry = _call(interaction_id="P", initiator="agent")
    c.decide(failed, None, 0.0)
    assert c.decide(retry, _answer(), 1000.0).skip is not None  # too late: a step of a forgotten turn
    c.decide(replace(failed, interaction_id="Q"), None, 0.0)
    assert c.decide(replace(retry, interaction_id="Q"), _answer(), 30.0).counted


def test_pending_turns_are_bounded_and_apart_from_the_counted_ones() -> None:
    c = Counter(max_items=3)
    assert c.decide(_call(interaction_id="counted", initiator="user"), None, 0.0).counted
    for i in range(10):  # a storm of failing prompts
        c.decide(_call(interaction_id=f"P{i}", initiator="user", status=429), None, 1.0)
    assert len(c.pending) == 3 and len(c.turns) == 1
    assert c.decide(_call(interaction_id="counted", initiator="user"), None, 2.0).skip is not None
    assert not c.decide(_call(interaction_id="P0", initiator="agent"), _answer(), 2.0).counted  # pushed out
    assert c.decide(_call(interaction_id="P9", initiator="agent"), _answer(), 2.0).counted


def _ws_answer(*frames: str) -> Answer:
    p = AnswerParser(Shape.RESPONSES)
    for frame in frames:
        p.feed_event(SSEEvent(None, frame))
    return p.answer


def test_websocket_error_event_fails_the_call_and_the_next_frame_counts_the_turn() -> None:
    c = Counter()
    ws = _call(Kind.CHAT_WS, status=101, interaction_id="W", task_id="K")
    limited = _ws_answer('{"type":"error","status":429,"error":{"type":"rate_limit_error","code":"rate_limited"}}')
    done = _ws_answer('{"type":"response.completed","response":{"status":"completed","output":[]}}')
    first = c.decide(replace(ws, initiator="user"), limited, 0.0)
    assert (first.counted, first.skip.value if first.skip else None) == (False, "http_error")
    second = c.decide(replace(ws, initiator="agent"), done, 1.0)
    assert (second.counted, second.initiator, second.initiator_source) == (True, "user", "retry")
    # A socket that closed before any answer frame is still the user's call (the answer may be lost to us).
    assert c.decide(replace(ws, initiator="user", interaction_id="W2"), None, 2.0).counted


# -- the Copilot CLI samples, as the call tracker turns them into Calls ---------------------------------


def _answer_of(ex: samples.Exchange) -> Answer:
    p = AnswerParser(shape_for_path(ex.path))
    events = SSEDecoder().feed(ex.response_body)
    if ex.status == 101 or ex.is_event_stream:
        for ev in events:
            p.feed_event(SSEEvent(None, ev.data) if ex.status == 101 else ev)
    return p.answer


def _call_of(ex: samples.Exchange) -> Call:
    """Header / frame field -> Call field, the way the tracker reads them (see Call's field comments)."""
    h = {k.lower(): v for k, v in ex.request_headers}
    if ex.status == 101:
        frame = parse_request(ex.request_body, Shape.RESPONSES)
        return Call(
            kind=Kind.CHAT_WS,
            status=101,
            request_id=None,
            interaction_id=frame.interaction_id or h.get("x-interaction-id"),
            initiator=frame.initiator,
            intent=frame.interaction_type or h.get("openai-intent") or h.get("x-interaction-type"),
            speculative=False,
            user_last=frame.user_last,
            task_id=frame.task_id or h.get("x-agent-task-id"),
        )
    body = parse_request(ex.request_body, shape_for_path(ex.path))
    return Call(
        kind=chat_mode(h.get("openai-intent"), h.get("x-interaction-type")),
        status=ex.status,
        request_id=h.get("x-request-id"),
        interaction_id=h.get("x-interaction-id"),
        initiator=h.get("x-initiator"),
        intent=h.get("openai-intent") or h.get("x-interaction-type"),
        speculative=False,
        user_last=body.user_last,
        task_id=h.get("x-agent-task-id"),
    )


CLI_REPLAY = (*samples.CLI, *samples.CLI_WEBSOCKET)


def test_cli_samples_count_one_turn_per_prompt() -> None:
    counter = Counter()
    for i, ex in enumerate(CLI_REPLAY):
        call = _call_of(ex)
        d = counter.decide(call, _answer_of(ex), 1000.0 + i)
        want = ex.expected
        assert call.kind.value == want["kind"], ex.name
        assert (d.counted, d.skip.value if d.skip else None) == (want["counted"], want["skip_reason"]), ex.name
        retry = want.get("initiator_source") == "retry"
        assert (d.initiator, d.initiator_source) == (("user", "retry") if retry else (want["initiator"], "header"))
    prompts = {e.expected["interaction_id"] for e in CLI_REPLAY}
    assert sum(e.expected["counted"] for e in CLI_REPLAY) == len(prompts) == 7


def test_cli_websocket_prompts_are_told_apart_by_their_frames() -> None:
    """The upgrade request names the first prompt; the second prompt's frame names its own."""
    upgrade = {k.lower(): v for k, v in samples.CLI_WS_SECOND_PROMPT.request_headers}
    calls = [_call_of(ex) for ex in samples.CLI_WEBSOCKET]
    assert upgrade["x-interaction-id"] == calls[0].interaction_id != calls[2].interaction_id
    counter = Counter()
    counted = [
        counter.decide(c, _answer_of(ex), 0.0).counted for c, ex in zip(calls, samples.CLI_WEBSOCKET, strict=True)
    ]
    assert counted == [True, False, True]
    merged = Counter()  # what reading the upgrade's headers for every frame would do: two prompts, one turn
    as_upgrade = [replace(c, interaction_id=upgrade["x-interaction-id"]) for c in calls]
    assert [merged.decide(c, None, 0.0).counted for c in as_upgrade] == [True, False, False]


FRAME_FACTS = [
    # frame -> (interaction id, task id, interaction type, initiator)
    (
        samples.CLI_WS_PROMPT.request_body,
        ("a48bb029-2d3a-4cb0-bb88-000000000006", "5662574f-248a-4961-b99f-000000000006", "conversation-user", "user"),
    ),
    (
        samples.CLI_WS_TOOL_ROUND.request_body,
        ("a48bb029-2d3a-4cb0-bb88-000000000006", "5662574f-248a-4961-b99f-000000000006", None, "agent"),
    ),
    (b'{"type":"response.create","agent_task_id":"t1","initiator":"agent"}', (None, "t1", None, "agent")),
    (
        b'{"type":"response.create","headers":{"x-interaction-id":"lower","X-INITIATOR":"User"}}',
        ("lower", None, None, "user"),
    ),
    (
        rb'{"type":"response.create","headers":{"X-Interaction-Id":"id\u0000\n","X-Agent-Task-Id":7}}',
        ("id", None, None, None),
    ),
    (b'{"type":"response.create","headers":["not","an","object"],"initiator":"robot"}', (None, None, None, None)),
    # An HTTP body's stray `headers` key is not a frame's: it names nothing.
    (b'{"model":"gpt-4.1","headers":{"X-Interaction-Id":"nope"}}', (None, None, None, None)),
]


@pytest.mark.parametrize(("frame", "want"), FRAME_FACTS)
def test_response_create_frame_facts(frame: bytes, want: tuple[str | None, ...]) -> None:
    f = parse_request(frame, Shape.RESPONSES)
    assert (f.interaction_id, f.task_id, f.interaction_type, f.initiator) == want


def test_turn_ids_expire_after_the_ttl() -> None:
    c = Counter(ttl_seconds=60)
    call = _call(interaction_id="T", initiator="user")
    assert c.decide(call, None, 0.0).counted
    assert not c.decide(call, None, 30.0).counted
    assert c.decide(call, None, 1000.0).counted
