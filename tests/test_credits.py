"""AI credits per call: copilot_usage in every stream shape, estimates per token class, prices learned from
/models, unbilled kinds, the event log fields, the counter and the extended summary's `credits` section."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import metricdefs as md
from exporter.calls import CallTracker, RequestMeta, ResponseHead, ResponseMeta, WsFrame
from exporter.classify import HostTable
from exporter.credits import (
    CallUsage,
    ModelPrice,
    PriceBook,
    PriceTableError,
    Tier,
    Tokens,
    credits_of,
    error_code,
    estimate,
    load_table,
    price_from_billing,
    shipped_table,
    table_from_doc,
)
from exporter.events import UsageEvent
from exporter.insight import InsightDay, insight_from_records
from exporter.labels import LabelBounds
from exporter.observe import observations
from exporter.sse import SSEEvent
from exporter.streams import AnswerParser, Shape, token_details
from exporter.writer import ErrorReporter

API = "api.business.githubcopilot.com"
CHAT_USAGE = {
    "choices": [],
    "model": "gpt-4.1-2025-04-14",
    "usage": {"completion_tokens": 21, "prompt_tokens": 9120, "prompt_tokens_details": {"cached_tokens": 8064}},
    "copilot_usage": {
        "total_nano_aiu": 412000000,
        "token_details": [{"batch_size": 1000000, "cost_per_batch": 200, "token_count": 1056, "token_type": "input"}],
    },
}
RESPONSES_DONE = {
    "type": "response.completed",
    "response": {"status": "completed", "model": "gpt-5.1-codex", "usage": {"input_tokens": 812, "output_tokens": 9}},
    "copilot_usage": {"total_nano_aiu": 95000000},
}
MESSAGE_DELTA = {
    "type": "message_delta",
    "delta": {"stop_reason": "tool_use"},
    "usage": {"output_tokens": 48},
    "copilot_usage": {"total_nano_aiu": 260000000},
}


def _sse(*objs: Any) -> list[SSEEvent]:
    return [SSEEvent(None, json.dumps(o)) for o in objs]


@pytest.mark.parametrize(
    ("shape", "events", "nano", "details"),
    [
        (Shape.CHAT, _sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}, CHAT_USAGE), 412000000, 1),
        (Shape.RESPONSES, _sse(RESPONSES_DONE), 95000000, 0),
        (
            Shape.MESSAGES,
            _sse({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}, MESSAGE_DELTA),
            260000000,
            0,
        ),
        (Shape.CHAT, _sse({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}), None, 0),
        (Shape.CHAT, _sse({"choices": [], "copilot_usage": {"total_nano_aiu": "12"}}), None, 0),
        (Shape.CHAT, _sse({"choices": [], "copilot_usage": {"total_nano_aiu": -5}}), None, 0),
    ],
    ids=["chat-usage-chunk", "responses-completed", "anthropic-message-delta", "absent", "string", "negative"],
)
def test_copilot_usage_in_each_stream_shape(
    shape: Shape, events: list[SSEEvent], nano: int | None, details: int
) -> None:
    parser = AnswerParser(shape)
    for ev in events:
        parser.feed_event(ev)
    assert parser.answer.nano_aiu == nano
    assert len(parser.answer.token_details) == details


@pytest.mark.parametrize(
    ("value", "good", "bad"),
    [
        ([{"batch_size": 1000000, "cost_per_batch": 300, "token_count": 10, "token_type": "output"}], 1, 0),
        ([{"batch_size": None, "cost_per_batch": 300, "token_count": 10, "token_type": "output"}], 0, 1),
        ([{"batch_size": 1000000, "cost_per_batch": 3, "token_count": "10", "token_type": "input"}, "x", None], 0, 3),
        ([{"batch_size": 0, "cost_per_batch": 3, "token_count": 1, "token_type": "input"}], 0, 1),
        ("not-a-list", 0, 0),
        ([], 0, 0),
    ],
    ids=["well-formed", "null-batch", "wrong-types", "zero-batch", "not-a-list", "empty"],
)
def test_malformed_token_details_cost_only_themselves(value: Any, good: int, bad: int) -> None:
    details, malformed = token_details(value)
    assert (len(details), malformed) == (good, bad)


def test_a_malformed_token_details_keeps_the_server_figure_and_the_usage() -> None:
    parser = AnswerParser(Shape.CHAT)
    chunk = {**CHAT_USAGE, "copilot_usage": {"total_nano_aiu": 7, "token_details": [{"token_count": None}]}}
    parser.feed_event(SSEEvent(None, json.dumps(chunk)))
    a = parser.answer
    assert (a.nano_aiu, a.input_tokens, a.output_tokens, a.token_details_malformed) == (7, 9120, 21, 1)


def _per_million(inp: str, cached: str, write: str, out: str) -> Tier:
    per = Fraction(10**9, 10**6)
    return Tier(Fraction(inp) * per, Fraction(cached) * per, Fraction(write) * per, Fraction(out) * per)


SONNET = ModelPrice(_per_million("300", "30", "375", "1500"))
GPT54 = ModelPrice(_per_million("250", "25", "250", "1500"), _per_million("500", "50", "500", "2250"), 272_000)


@pytest.mark.parametrize(
    ("price", "tokens", "auto", "nano"),
    [
        # 1M uncached input at 300 credits per 1M = 300 credits
        (SONNET, Tokens(input=1_000_000), False, 300 * 10**9),
        # 9120 input of which 8064 cached, 21 output: 1056*300 + 8064*30 + 21*1500 credits per 1M
        (SONNET, Tokens(input=9120, cached=8064, output=21), False, 1056 * 300_000 + 8064 * 30_000 + 21 * 1_500_000),
        # Anthropic cache writes at their own price; input counts fresh + read + written
        (
            SONNET,
            Tokens(input=3000, cached=1000, cache_write=1500, output=0),
            False,
            500 * 300_000 + 1000 * 30_000 + 1500 * 375_000,
        ),
        # output only (reasoning is inside output_tokens)
        (SONNET, Tokens(output=1), False, 1_500_000),
        # at the long-context threshold: still the default tier; above it: the long-context tier
        (GPT54, Tokens(input=272_000), False, 272_000 * 250_000),
        (GPT54, Tokens(input=272_001), False, 272_001 * 500_000),
        # Auto: 10 % off, rounded to a whole nano-AIU
        (SONNET, Tokens(input=1, output=1), True, round(Fraction(1_800_000 * 9, 10))),
        (SONNET, Tokens(input=3), True, 810_000),
    ],
    ids=["input", "cached", "cache-write", "output", "long-ctx-edge", "long-ctx", "auto", "auto-small"],
)
def test_estimate_arithmetic_per_token_class(price: ModelPrice, tokens: Tokens, auto: bool, nano: int) -> None:
    assert estimate(price, tokens, auto) == nano


def _usage(**overrides: Any) -> CallUsage:
    base: dict[str, Any] = {
        "kind": "chat_agent",
        "model": "claude-sonnet-4.6",
        "resolved_model": None,
        "skip_reason": None,
        "server_nano_aiu": None,
        "tokens": Tokens(input=1000, output=100),
        "auto": False,
        "ok": True,
    }
    return CallUsage(**{**base, **overrides})


SONNET_1000_100 = 1000 * 300_000 + 100 * 1_500_000


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ({}, (True, SONNET_1000_100, "estimated", SONNET_1000_100, False)),
        ({"server_nano_aiu": 5}, (True, 5, "server", SONNET_1000_100, False)),
        ({"server_nano_aiu": 0}, (True, SONNET_1000_100, "estimated", SONNET_1000_100, False)),
        ({"kind": "completion"}, (False, None, None, None, False)),
        ({"kind": "next_edit"}, (False, None, None, None, False)),
        ({"kind": "instant_apply"}, (False, None, None, None, False)),
        ({"kind": "embeddings"}, (False, None, None, None, False)),
        ({"kind": "chat_panel", "model": "gpt-4o-mini", "skip_reason": "auxiliary"}, (False, None, None, None, False)),
        (
            {"kind": "chat_panel", "model": "gpt-4.1", "skip_reason": None},
            (True, 1000 * 200_000 + 100 * 800_000, "estimated", 1000 * 200_000 + 100 * 800_000, False),
        ),
        ({"model": "mystery-model-9"}, (True, None, None, None, True)),
        (
            {"model": None, "resolved_model": "claude-sonnet-4.6-2026-01-01"},
            (True, SONNET_1000_100, "estimated", SONNET_1000_100, False),
        ),
        ({"ok": False}, (True, None, None, SONNET_1000_100, False)),
        ({"tokens": None}, (True, None, None, None, False)),
        ({"auto": True}, (True, SONNET_1000_100 * 9 // 10, "estimated", SONNET_1000_100 * 9 // 10, False)),
    ],
    ids=[
        "estimated",
        "server-wins",
        "server-zero",
        "completion",
        "next-edit",
        "instant-apply",
        "embeddings",
        "utility-auxiliary",
        "utility-as-main-model",
        "unknown-model",
        "dated-resolved-model",
        "failed",
        "no-usage",
        "auto",
    ],
)
def test_credits_of_one_call(overrides: dict[str, Any], want: tuple[Any, ...]) -> None:
    c = credits_of(_usage(**overrides), PriceBook())
    assert (c.billed, c.nano_aiu, c.source, c.estimated, c.unknown_price) == want


MODELS_ANSWER = {
    "data": [
        {
            "id": "mystery-model-9",
            "billing": {
                "is_premium": True,
                "multiplier": 1,
                "token_prices": {
                    "batch_size": 1000000,
                    "default": {"input_price": 100, "output_price": 400, "cache_price": 10, "context_max": 200000},
                    "long_context": {"input_price": 200, "output_price": 800, "cache_price": 20},
                },
            },
        },
        {
            "id": "claude-sonnet-4.6",
            "billing": {"token_prices": {"batch_size": 1000, "default": {"input_price": 1, "output_price": 2}}},
        },
        {"id": "flat-model", "billing": {"token_prices": {"input_price": 5000, "output_price": 20000}}},
        {
            "id": "bad-batch",
            "billing": {"token_prices": {"batch_size": 0, "default": {"input_price": 1, "output_price": 1}}},
        },
        {"id": "no-billing"},
        "junk",
    ]
}


def test_prices_learned_from_a_models_answer_win_over_the_table() -> None:
    book = PriceBook()
    assert book.learn(MODELS_ANSWER) == ["mystery-model-9", "claude-sonnet-4.6", "flat-model"]
    mystery = credits_of(_usage(model="mystery-model-9"), book)
    assert (mystery.nano_aiu, mystery.price_source) == (1000 * 100_000 + 100 * 400_000, "learned")
    long_ctx = credits_of(_usage(model="mystery-model-9", tokens=Tokens(input=200_001)), book)
    assert long_ctx.nano_aiu == 200_001 * 200_000
    # credits per 1000 tokens: 1000 input at 1 credit per 1000 + 100 output at 2 per 1000 = 1.2 credits
    sonnet = credits_of(_usage(), book)
    assert (sonnet.nano_aiu, sonnet.price_source) == (1_200_000_000, "learned")
    # the older flat form: nano-AIU per batch (1M) tokens
    flat = credits_of(_usage(model="flat-model"), book)
    assert flat.nano_aiu == round(Fraction(1000 * 5000 + 100 * 20000, 10**6))
    assert credits_of(_usage(model="bad-batch"), book).unknown_price


def test_price_from_billing_refuses_what_it_cannot_read() -> None:
    assert price_from_billing(None) is None
    assert price_from_billing({"token_prices": {"default": {"input_price": "x", "output_price": 1}}}) is None
    assert price_from_billing({"token_prices": {"default": {"input_price": -1, "output_price": 1}}}) is None


def test_the_shipped_table_is_dated_and_prices_the_documented_models() -> None:
    table = shipped_table()
    assert table.version[:4] == "2026"
    sonnet = table.get("claude-sonnet-4.6")
    assert sonnet is not None and sonnet.default.cache_write == 375_000
    mini = table.get("GPT-5-mini")
    assert mini is not None and mini.default.cached == 2_500
    assert "gpt-4o-mini" in table.utility_models


def test_a_price_table_file_overrides_and_bad_ones_are_named(tmp_path: Path) -> None:
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"version": "2026-11-01", "models": {"mystery-model-9": {"input": 1, "output": 2}}}))
    book = PriceBook(load_table(str(good)))
    assert credits_of(_usage(model="mystery-model-9"), book).nano_aiu == 1000 * 1000 + 100 * 2000
    assert credits_of(_usage(), book).unknown_price  # the override replaces the shipped table
    for doc, needle in (
        ({"models": []}, "'models' object"),
        ({"models": {"m": {"input": 1}}}, "needs input and output"),
        ({"models": {"m": {"input": -1, "output": 1}}}, "negative"),
        ({"models": {"m": {"input": 1, "output": 1, "long_context": {"input": 1, "output": 1}}}}, "'above'"),
    ):
        with pytest.raises(PriceTableError, match=needle):
            table_from_doc(doc, "t.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PriceTableError, match="not JSON"):
        load_table(str(tmp_path / "bad.json"))


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("quota_exceeded", "quota_exceeded"),
        ("user_weekly_rate_limited_premium", "user_weekly_rate_limited"),
        ("free_quota_exceeded", "free_quota_exceeded"),
        ("RATE_LIMITED", "rate_limited"),
        ("something new", "other"),
        (None, "none"),
    ],
)
def test_error_codes_are_bounded(code: str | None, label: str) -> None:
    assert error_code(code) == label


# -- through the tracker ------------------------------------------------------------------------------------


def _tracker() -> CallTracker:
    return CallTracker(HostTable(), LabelBounds(), ErrorReporter(lambda c: None), lambda: 1_764_000_000.0)


def _call(
    tracker: CallTracker,
    path: str,
    body: dict[str, Any] | None,
    answer: bytes,
    status: int = 200,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    resp_headers: tuple[tuple[str, str], ...] = (),
    host: str = API,
) -> UsageEvent:
    h = {"x-initiator": "user", "openai-intent": "conversation-agent", **(headers or {})}
    role = tracker.hosts.role(host)
    assert role is not None
    tracker.start("f", RequestMeta(host, role, method, path, h, "alice", "c1"))
    tracker.request_body("f", json.dumps(body).encode() if body is not None else None, None)
    sse = answer.startswith(b"data:")
    feed = tracker.stream("f", ResponseHead(status, "text/event-stream" if sse else "application/json", None))
    if feed is not None:
        feed(answer)
        feed(b"")
    done = tracker.finish("f", ResponseMeta(status, None, None if sse else answer, quota_headers=resp_headers))
    assert done is not None
    return done.event


def _data(*objs: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_server_figure_and_estimate_reach_the_log_line_and_the_counter() -> None:
    tracker = _tracker()
    body = {"model": "claude-sonnet-4.6", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    usage = {"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}
    server = _call(
        tracker, "/chat/completions", body, _data({**usage, "copilot_usage": {"total_nano_aiu": 2_000_000_000}})
    )
    estimated = _call(tracker, "/chat/completions", body, _data(usage))
    assert (server.credits_nano_aiu, server.credits_source, server.nano_aiu_estimated) == (
        2 * 10**9,
        "server",
        SONNET_1000_100,
    )
    assert (estimated.credits_nano_aiu, estimated.credits_source, estimated.nano_aiu) == (
        SONNET_1000_100,
        "estimated",
        None,
    )
    fields = server.log_fields()
    assert (fields["nano_aiu"], fields["nano_aiu_estimated"], fields["credits_source"]) == (
        2 * 10**9,
        SONNET_1000_100,
        "server",
    )
    json.dumps(fields)  # every field is JSON
    obs = [o for o in observations(estimated) if o.metric is md.NANO_AIU]
    assert [(o.value, o.labels) for o in obs] == [
        (SONNET_1000_100, ("alice", "chat_agent", "claude-sonnet-4.6", "estimated", "unknown", "false"))
    ]


def test_background_and_auto_calls_are_separable() -> None:
    tracker = _tracker()
    body = {"model": "claude-sonnet-4.6", "messages": [], "stream": True}
    usage = _data({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}})
    bg = _call(
        tracker,
        "/chat/completions",
        body,
        usage,
        headers={"x-interaction-type": "conversation-background", "openai-intent": ""},
    )
    auto = _call(tracker, "/chat/completions", body, usage, headers={"copilot-session-token": "opaque"})
    assert bg.background and [o.labels[5] for o in observations(bg) if o.metric is md.NANO_AIU] == ["true"]
    assert auto.auto_model and auto.credits_nano_aiu == SONNET_1000_100 * 9 // 10


def test_a_models_answer_through_the_tracker_teaches_prices() -> None:
    tracker = _tracker()
    models = _call(tracker, "/models", None, json.dumps(MODELS_ANSWER).encode(), method="GET")
    assert models.kind == "model_list" and models.credits_nano_aiu is None
    body = {"model": "mystery-model-9", "messages": [], "stream": True}
    event = _call(
        tracker,
        "/chat/completions",
        body,
        _data({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}),
    )
    assert (event.credits_nano_aiu, event.price_source) == (1000 * 100_000 + 100 * 400_000, "learned")


def test_unknown_price_and_unbilled_completion() -> None:
    tracker = _tracker()
    body = {"model": "mystery-model-9", "messages": [], "stream": True}
    unknown = _call(
        tracker,
        "/chat/completions",
        body,
        _data({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}),
    )
    assert unknown.unknown_price and [o.labels for o in observations(unknown) if o.metric is md.COST_UNKNOWN] == [
        ("mystery-model-9",)
    ]
    completion = _call(
        tracker,
        "/v1/engines/gpt-41-copilot/completions",
        {"prompt": "def", "stream": True},
        _data({"choices": [{"index": 0, "text": "x"}], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}),
        host="proxy.business.githubcopilot.com",
    )
    assert completion.kind == "completion" and not completion.billed and completion.credits_nano_aiu is None
    assert not [o for o in observations(completion) if o.metric in (md.NANO_AIU, md.COST_UNKNOWN)]


def test_a_402_is_labelled_with_its_error_code() -> None:
    tracker = _tracker()
    body = {"model": "claude-sonnet-4.6", "messages": [], "stream": True}
    answer = json.dumps({"error": {"code": "quota_exceeded", "message": "You have no AI credits left"}}).encode()
    event = _call(tracker, "/chat/completions", body, answer, status=402)
    assert event.error_code == "quota_exceeded" and event.credits_nano_aiu is None
    errors = [o.labels for o in observations(event) if o.metric is md.USER_ERRORS]
    assert errors == [("alice", "chat_agent", "402", "quota_exceeded")]


def test_responses_over_websocket_frames_carry_copilot_usage() -> None:
    tracker = _tracker()
    role = tracker.hosts.role(API)
    assert role is not None
    tracker.start("ws", RequestMeta(API, role, "GET", "/responses", {"x-initiator": "user"}, "alice", "c1"))
    assert tracker.finish("ws", ResponseMeta(101, websocket=True)) is None
    create = {"type": "response.create", "model": "gpt-5.4", "input": [{"role": "user", "content": "hi"}]}
    tracker.ws_frame("ws", WsFrame(True, True, json.dumps(create).encode()))
    done = {**RESPONSES_DONE, "response": {**RESPONSES_DONE["response"], "model": "gpt-5.4"}}  # type: ignore[dict-item]
    finished = tracker.ws_frame("ws", WsFrame(False, True, json.dumps(done).encode()))
    assert [(f.event.kind, f.event.credits_nano_aiu, f.event.credits_source) for f in finished] == [
        ("chat_ws", 95_000_000, "server")
    ]


# -- the extended summary ------------------------------------------------------------------------------------


def _rec(user: str, model: str, kind: str, nano: int, source: str) -> dict[str, Any]:
    return {
        "timestamp": "2026-12-02T08:00:00Z",
        "user": user,
        "model_call": True,
        "counted": True,
        "kind": kind,
        "model": model,
        "status": 200,
        "credits_nano_aiu": nano,
        "credits_source": source,
    }


def test_extended_summary_credits_section_and_merge() -> None:
    recs = [
        _rec("alice", "gpt-5.4", "chat_agent", 10, "server"),
        _rec("alice", "claude-sonnet-4.6", "chat_panel", 5, "estimated"),
        _rec("bob", "gpt-5.4", "chat_agent", 7, "server"),
        {**_rec("carol", "gpt-5.4", "completion", 0, "server")},
        {**_rec("dave", "gpt-5.4", "chat_agent", 3, "bogus")},
    ]
    day = insight_from_records("2026-12-02", recs)
    users = day.to_doc()["users"]
    assert users["alice"]["credits"] == {
        "nano_aiu": 15,
        "by_source": {"server": 10, "estimated": 5},
        "by_model": {"gpt-5.4": 10, "claude-sonnet-4.6": 5},
        "by_kind": {"chat_agent": 10, "chat_panel": 5},
    }
    assert users["bob"]["credits"]["nano_aiu"] == 7
    assert "credits" not in users["carol"] and "credits" not in users["dave"]
    merged = InsightDay("2026-12-02")
    merged.merge(day.to_doc())
    merged.merge(day.to_doc())
    assert merged.to_doc()["users"]["alice"]["credits"]["by_source"] == {"server": 20, "estimated": 10}


def test_the_same_figure_on_the_span_and_the_otel_counter() -> None:
    from tests.factories import chat
    from tests.test_otel import make

    o = make()
    o.sink.handle(
        chat(credits_nano_aiu=412_000_000, credits_source="server", nano_aiu=412_000_000, nano_aiu_estimated=440)
    )
    o.sink.handle(chat(user="bob", credits_nano_aiu=7, credits_source="estimated", background=True))
    assert o.value("copilot.nano_aiu", **{"enduser.id": "alice", "copilot.credits.source": "server"}) == 412_000_000
    assert o.value("copilot.nano_aiu", **{"enduser.id": "bob", "copilot.background": "true"}) == 7
    attrs = [dict(s.attributes or {}) for s in o.finished()]
    assert [(a["copilot.credits.nano_aiu"], a["copilot.credits.source"]) for a in attrs] == [
        (412_000_000, "server"),
        (7, "estimated"),
    ]
    assert (
        attrs[0]["copilot.credits.nano_aiu_estimated"] == 440 and "copilot.credits.nano_aiu_estimated" not in attrs[1]
    )
    o.sink.close()


_PRICE = st.fractions(min_value=0, max_value=10**6, max_denominator=10**7)
_COUNT = st.integers(min_value=0, max_value=10**9)


@settings(max_examples=400, deadline=None)
@given(
    prices=st.tuples(_PRICE, _PRICE, _PRICE, _PRICE),
    counts=st.tuples(_COUNT, _COUNT, _COUNT, _COUNT),
    auto=st.booleans(),
)
def test_the_integer_estimate_equals_the_exact_fraction_rounded_half_to_even(
    prices: tuple[Fraction, Fraction, Fraction, Fraction], counts: tuple[int, int, int, int], auto: bool
) -> None:
    tier = Tier(*prices)
    inp, cached, write, out = counts
    tokens = Tokens(input=inp + cached + write, cached=cached, cache_write=write, output=out)
    exact = inp * prices[0] + cached * prices[1] + write * prices[2] + out * prices[3]
    if auto:
        exact *= Fraction(9, 10)
    assert estimate(ModelPrice(tier), tokens, auto) == round(exact)


def test_rounding_of_an_exact_half_goes_to_the_even_neighbour() -> None:
    half = ModelPrice(Tier(Fraction(1, 2), Fraction(0), Fraction(0), Fraction(1, 2)))
    assert [estimate(half, Tokens(input=n)) for n in (1, 3, 5)] == [0, 2, 2]  # 0.5, 1.5, 2.5
