"""Property-based tests: hostile and broken input never raises out of a parser or a hook, memory stays bounded.

The number of inputs each property tries is set by `FUZZ_EXAMPLES` (default 300; `FUZZ_EXAMPLES=5000`
for a long run). `docs/hardening.md` records the counts of the last long run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.bodies import parse_request
from exporter.classify import HostTable, Kind, route
from exporter.counting import Call, Counter
from exporter.identity import identify, user_from_proxy_authorization
from exporter.sse import BodyDecoder, DecodeError, SSEDecoder
from exporter.streams import AnswerParser, Shape
from tests import samples
from tests.conftest import Harness

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
# CI runs a fixed, reproducible set of inputs; local runs draw new ones each time (and keep failures).
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("CI") == "true",
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
# Dictionaries that look like Copilot payloads, with wrong types in the right places.
copilot_like = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": json_values,
                    "text": json_values,
                    "finish_reason": json_values,
                    "delta": st.fixed_dictionaries(
                        {}, optional={"content": json_values, "tool_calls": json_values, "function_call": json_values}
                    )
                    | json_values,
                    "message": json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
        "usage": json_values,
        "copilot_usage": json_values,
        "model": json_values,
        "type": st.sampled_from(
            [
                "response.output_text.delta",
                "response.completed",
                "response.output_item.added",
                "message_start",
                "message_delta",
                "content_block_start",
                "content_block_delta",
                "message_stop",
                "error",
            ]
        )
        | json_values,
        "delta": json_values,
        "response": json_values,
        "message": json_values,
        "content_block": json_values,
        "item": json_values,
        "error": json_values,
    },
)


@FUZZ
@given(st.lists(copilot_like, max_size=8), st.sampled_from(list(Shape)))
def test_answer_parser_never_raises_on_copilot_shaped_garbage(events: list[object], shape: Shape) -> None:
    p = AnswerParser(shape, keep_events=2)
    d = SSEDecoder()
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
    for ev in d.feed(body) + d.close():
        p.feed_event(ev)
    p.feed_json(events[0] if events else None)
    a = p.answer
    assert isinstance(a.text, str) and len(p.kept) <= 2
    assert a.input_tokens is None or a.input_tokens >= 0


@FUZZ
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_sse_decoder_never_raises_and_bounds_lines(data: bytes, step: int) -> None:
    d = SSEDecoder(max_line=256)
    for i in range(0, len(data), step):
        for ev in d.feed(data[i : i + step]):
            assert len(ev.data) <= 256 * 4
    d.close()


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, br"]))
def test_body_decoder_raises_only_decode_error(data: bytes, encoding: str) -> None:
    d = BodyDecoder(encoding, max_bytes=64 * 1024)
    with contextlib.suppress(DecodeError):
        d.feed(data)


@FUZZ
@given(
    st.binary(max_size=4000) | st.builds(lambda v: json.dumps(v).encode(), json_values), st.sampled_from(list(Shape))
)
def test_request_parser_never_raises(body: bytes, shape: Shape) -> None:
    facts = parse_request(body, shape)
    assert facts.language is None or len(facts.language) <= 64


def test_deeply_nested_and_huge_bodies() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert parse_request(deep, Shape.CHAT).error == "malformed_json"
    huge = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]})
    facts = parse_request(huge.encode(), Shape.CHAT)
    assert facts.model == "gpt-4.1" and facts.user_last is True
    assert facts.prompt is not None and len(facts.prompt) == 64 * 1024
    assert parse_request(b"x" * (17 * 1024 * 1024), Shape.CHAT).error == "body_too_large"


@FUZZ
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=300))
def test_header_parsing_never_raises(editor: str, plugin: str, agent: str) -> None:
    ident = identify({"editor-version": editor, "editor-plugin-version": plugin, "user-agent": agent})
    if ident is not None:
        assert len(ident.summary_key) <= 128
        assert all(ord(c) >= 0x20 for c in ident.summary_key)
    user_from_proxy_authorization(editor)


@FUZZ
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=10))
def test_classification_never_raises(host: str, path: str, method: str) -> None:
    table = HostTable()
    route(table.role(host), method, path)


stream_samples = [e for e in samples.ALL if e.is_event_stream]


@FUZZ
@given(
    st.sampled_from(stream_samples),
    st.data(),
)
def test_hooks_survive_mutated_streams(harness: Harness, ex: samples.Exchange, data: st.DataObject) -> None:
    body = bytearray(ex.response_body)
    for _ in range(data.draw(st.integers(0, 8))):
        if not body:
            break
        i = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "junk"]))
        if op == "flip":
            body[i] ^= 0xFF
        elif op == "cut":
            del body[i:]
        elif op == "dup":
            body[i:i] = body[i : i + 20]
        else:
            body[i:i] = data.draw(st.binary(min_size=1, max_size=20))
    cut = data.draw(st.integers(0, len(body)))
    before = len(harness.events)
    harness.flow(ex, chunks=(bytes(body[:cut]), bytes(body[cut:])), request_id=f"fz-{len(harness.events)}")
    assert len(harness.events) == before + 1  # one event, counted or skipped, never an exception
    _no_exporter_errors(harness)


@FUZZ
@given(
    st.sampled_from(list(samples.ALL)),
    st.sampled_from(["application/json", "text/html", "text/event-stream", "", "application/octet-stream"]),
    st.sampled_from(["", "gzip", "br", "bogus"]),
    st.binary(max_size=500),
)
def test_hooks_survive_wrong_content_types_and_encodings(
    harness: Harness, ex: samples.Exchange, ctype: str, encoding: str, body: bytes
) -> None:
    headers = (("content-type", ctype), *((("content-encoding", encoding),) if encoding else ()))
    mutated = replace(ex, response_headers=headers, response_body=body)
    before = len(harness.events)
    harness.flow(mutated, chunks=(body,), request_id=f"ct-{len(harness.events)}")
    assert len(harness.events) == before + 1
    _no_exporter_errors(harness)


def _no_exporter_errors(harness: Harness) -> None:
    """Nothing failed anywhere, the writes of the JSON log and the summary included."""
    harness.flush()
    for component in ("addon", "jsonlog", "daily", "recorder"):
        assert harness.sample("copilot_exporter_errors_total", component=component) == 0, component


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_odd_unicode_in_body_fields_reaches_every_output(harness: Harness, model: str, lang: str, iid: str) -> None:
    """Lone surrogates (JSON \\ud800 escapes), control and non-BMP characters in fields that reach outputs."""
    harness.tctx.configure(harness.addon, copilot_record=True, copilot_capture_content=True)
    ex = samples.BY_NAME["vscode_completion"]
    body = json.loads(ex.request_body)
    body["extra"]["language"] = lang + "\ud800"
    body["prompt"] = model + "\udfff"
    completion = replace(ex, request_body=json.dumps(body, ensure_ascii=True).encode())
    harness.flow(completion, request_id=f"u-{len(harness.events)}", headers={"x-interaction-id": iid + "\udcff"})
    nes = samples.BY_NAME["vscode_next_edit"]
    body = json.loads(nes.request_body)
    body["model"] = "copilot-nes-" + model + "\ud800"
    body["messages"][-1]["content"] = lang + "\udfff"
    harness.flow(replace(nes, request_body=json.dumps(body).encode()), request_id=f"n-{len(harness.events)}")
    assert "\ufffd" not in (harness.last().model or "")[:12]
    _no_exporter_errors(harness)


def test_gzip_bomb_stream_is_passed_through_and_not_expanded(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    bomb = gzip.compress(b"data: " + b"x" * (64 * 1024 * 1024) + b"\n\n", compresslevel=9)
    gz = replace(ex, response_headers=(("content-type", "text/event-stream"), ("content-encoding", "gzip")))
    harness.flow(gz, chunks=tuple(bomb[i : i + 65536] for i in range(0, len(bomb), 65536)), request_id="bomb")
    ev = harness.last()
    assert not ev.counted and ev.error is not None and "over" in ev.error


def test_non_utf8_and_huge_headers(harness: Harness) -> None:
    ex = samples.BY_NAME["vscode_completion"]
    odd = replace(
        ex,
        request_headers=(
            *[(k, v) for k, v in ex.request_headers if k.lower() != "editor-version"],
            ("editor-version", "vs\udcffcode/1.0".encode("utf-8", "surrogateescape").decode("latin-1")),
            ("x-padding", "p" * 60_000),
            ("x-interaction-id", "i" * 10_000),
        ),
    )
    harness.flow(odd, request_id="odd")
    ev = harness.last()
    assert ev.counted and ev.interaction_id is not None and len(ev.interaction_id) <= 128
    assert len(zlib.compress(ev.summary_key.encode())) < 200


_frames = st.builds(
    lambda headers, extra: json.dumps({"type": "response.create", "headers": headers, **extra}).encode(),
    json_values | st.dictionaries(st.sampled_from(["X-Interaction-Id", "x-agent-task-id", "X-Initiator"]), json_values),
    st.dictionaries(st.sampled_from(["initiator", "agent_task_id", "input"]), json_values, max_size=3),
)


@FUZZ
@given(_frames)
def test_response_create_frame_facts_never_raise_and_stay_bounded(frame: bytes) -> None:
    facts = parse_request(frame, Shape.RESPONSES)
    assert facts.frame_type == "response.create" and facts.initiator in (None, "user", "agent")
    for value in (facts.interaction_id, facts.task_id, facts.interaction_type):
        assert value is None or (isinstance(value, str) and 0 < len(value) <= 128)


_chat_calls = st.builds(
    lambda kind, status, initiator, intent, task: Call(
        kind=kind,
        status=status,
        request_id=None,
        interaction_id="T",
        initiator=initiator,
        intent=intent,
        speculative=False,
        user_last=None,
        task_id=task,
    ),
    st.sampled_from([Kind.CHAT_AGENT, Kind.CHAT_PANEL, Kind.CHAT]),
    st.sampled_from([200, 200, 429, 500, None]),
    st.sampled_from(["user", "agent", None]),
    st.sampled_from(["conversation-agent", "conversation-user", "conversation-panel", "conversation-other", None]),
    st.sampled_from(["K1", "K2", None]),
)


@FUZZ
@given(st.lists(_chat_calls, max_size=12))
def test_one_interaction_is_counted_at_most_once_and_only_after_a_user_call(calls: list[Call]) -> None:
    counter = Counter()
    decisions = [counter.decide(c, None, float(i)) for i, c in enumerate(calls)]
    counted = [i for i, d in enumerate(decisions) if d.counted]
    assert len(counted) <= 1
    if counted:
        first_user = next(i for i, c in enumerate(calls) if c.initiator == "user")
        assert first_user <= counted[0]
        assert calls[counted[0]].status == 200 and decisions[counted[0]].initiator == "user"
