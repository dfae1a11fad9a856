"""Answers from the four stream shapes (and non-streamed JSON): text, tools, finish, usage, completeness."""

from __future__ import annotations

import json

import pytest

from exporter.sse import SSEDecoder, SSEEvent
from exporter.streams import MAX_TEXT_CHARS, AnswerParser, Shape, shape_for_path
from tests import samples


def _parse(ex: samples.Exchange) -> AnswerParser:
    p = AnswerParser(shape_for_path(ex.path), keep_events=3)
    if ex.status == 101:  # a WebSocket call: one Responses event object per server frame, no SSE framing
        for ev in SSEDecoder().feed(ex.response_body):
            p.feed_event(SSEEvent(None, ev.data))
    elif ex.is_event_stream:
        d = SSEDecoder()
        for ev in d.feed(ex.response_body) + d.close():
            p.feed_event(ev)
    else:
        p.feed_json(json.loads(ex.response_body))
    return p


MODEL_SAMPLES = [e for e in samples.ALL if e.expected["model"]]
# The Copilot CLI's answered calls on its four transports (its 429s carry no answer).
MODEL_SAMPLES += [e for e in (*samples.CLI, *samples.CLI_WEBSOCKET) if e.status in (200, 101)]


@pytest.mark.parametrize("ex", MODEL_SAMPLES, ids=lambda e: e.name)
def test_sample_answers(ex: samples.Exchange) -> None:
    a = _parse(ex).answer
    want = ex.expected
    assert a.text == want["text"]
    assert a.finish_reason == want["finish_reason"]
    assert (a.input_tokens, a.output_tokens) == (want["input_tokens"], want["output_tokens"])
    assert a.resolved_model == want["resolved_model"]
    assert a.complete
    assert a.malformed_events == 0
    if "tool_calls" in want:
        assert a.tool_calls == [name for name, _ in want["tool_calls"]]
    if "cached_tokens" in want:
        assert a.cached_tokens == want["cached_tokens"]
    if "nano_aiu" in want:
        assert a.nano_aiu == want["nano_aiu"]


def test_two_choices_one_empty() -> None:
    a = _parse(samples.BY_NAME["jetbrains_completion"]).answer
    assert a.choices_with_text == 1
    assert set(a.finish_reasons) == {0, 1}


def test_first_content_event_is_reported() -> None:
    p = AnswerParser(Shape.CHAT)
    d = SSEDecoder()
    flags = [p.feed_event(ev) for ev in d.feed(samples.BY_NAME["vscode_agent_step"].response_body)]
    assert flags[0] is False  # prompt_filter_results / role-only chunk
    assert any(flags)


def test_stream_without_terminator_is_incomplete() -> None:
    body = samples.BY_NAME["vscode_completion"].response_body
    p = AnswerParser(Shape.COMPLETIONS)
    for ev in SSEDecoder().feed(body.split(b"\n\n")[0] + b"\n\n"):
        p.feed_event(ev)
    assert p.answer.text == "return a" and not p.answer.complete and not p.answer.finish_reasons


def test_malformed_events_are_counted_not_raised() -> None:
    p = AnswerParser(Shape.CHAT)
    for data in ("{", "[1]", '"x"', "null", '{"choices": "nope"}', '{"choices": [1, {"delta": 5}]}'):
        p.feed_event(SSEEvent(None, data))
    assert p.answer.malformed_events == 4 and not p.answer.has_text


def test_error_object_inside_a_stream() -> None:
    p = AnswerParser(Shape.RESPONSES)
    p.feed_event(SSEEvent("error", '{"type":"error","code":"rate_limited","message":"slow down"}'))
    assert p.answer.error == "rate_limited"


def test_text_is_capped_but_length_counted() -> None:
    p = AnswerParser(Shape.COMPLETIONS)
    chunk = json.dumps({"choices": [{"index": 0, "text": "x" * 10000}]})
    for _ in range(20):
        p.feed_event(SSEEvent(None, chunk))
    assert len(p.answer.text) == MAX_TEXT_CHARS and p.answer.text_chars == 200000


def test_kept_events_are_bounded() -> None:
    p = _parse(samples.BY_NAME["vscode_messages"])
    assert len(p.kept) == 3


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/engines/x/completions", Shape.COMPLETIONS),
        ("/chat/completions", Shape.CHAT),
        ("/responses", Shape.RESPONSES),
        ("/v1/messages?beta=true", Shape.MESSAGES),
    ],
)
def test_shape_for_path(path: str, shape: Shape) -> None:
    assert shape_for_path(path) is shape


@pytest.mark.parametrize("name", ["cli_responses_rate_limited", "cli_messages_rate_limited"])
def test_cli_rate_limit_answer_is_an_error_without_usage(name: str) -> None:
    ex = samples.CLI_BY_NAME[name]
    p = AnswerParser(shape_for_path(ex.path))
    p.feed_json(json.loads(ex.response_body))
    assert p.answer.error == "rate_limited"
    assert p.answer.input_tokens is None and p.answer.output_tokens is None and not p.answer.has_text


def test_websocket_error_event_keeps_its_nested_code() -> None:
    p = AnswerParser(Shape.RESPONSES)
    p.feed_event(
        SSEEvent(None, '{"type":"error","status":429,"error":{"type":"rate_limit_error","code":"rate_limited"}}')
    )
    assert p.answer.error == "rate_limited" and not p.answer.complete
