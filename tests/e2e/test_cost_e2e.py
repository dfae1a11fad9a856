"""End to end, AI credits through a real mitmdump: two users, chat, agent and CLI-style calls (chat
completions, Responses, Anthropic Messages), answers with and without `copilot_usage`, a `/models` answer
that teaches a price, quota headers and a 402. /metrics, the event log, the extended summary and a rebuild
from the log must agree on credits per user, model and source, and with the figures computed here."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.rebuild import rebuild_both
from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, proxy_client, send
from tests.e2e.test_e2e import (
    PASSWORDS,
    Samples,
    metric,
    parse_metrics,
    read_extended,
    read_log,
    scrape,
    start_proxy,
    write_htpasswd,
)

pytestmark = pytest.mark.e2e

API = "api.business.githubcopilot.com"
# Per 1M tokens in the shipped table: claude-sonnet-4.6 300 in / 1500 out, gpt-5.4 250 / 25 cached / 1500,
# gpt-5-mini 25 / 200; a credit per 1M tokens is 1,000 nano-AIU per token.
SONNET_ESTIMATE = 1000 * 300_000 + 100 * 1_500_000  # 450,000,000
GPT54_ESTIMATE = 1000 * 250_000 + 1000 * 25_000 + 50 * 1_500_000  # 350,000,000
MINI_ESTIMATE = 10_000 * 25_000 + 1000 * 200_000  # 450,000,000
LEARNED_ESTIMATE = 1000 * 100_000 + 100 * 400_000  # mystery-model-2 learned from /models: 100 in / 400 out
GPT41_SERVER = 412_000_000
MESSAGES_SERVER = 260_000_000
QUOTA_FULL = "ent=300&ov=0.0&ovPerm=false&rem=87.5&rst=2026-12-01T00%3A00%3A00Z"
QUOTA_LOW = "ent=300&ov=1.0&ovPerm=true&rem=5&rst=2026-12-01T00%3A00%3A00Z"


def _data(*objs: Any) -> list[bytes]:
    return [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs] + [b"data: [DONE]\n\n"]


def _headers(
    rid: str, initiator: str, intent: str | None, extra: tuple[tuple[str, str], ...] = ()
) -> tuple[tuple[str, str], ...]:
    drop = {"openai-intent", "x-interaction-type", "x-initiator", "x-request-id", "x-agent-task-id", "x-interaction-id"}
    base = [(k, v) for k, v in samples.VSCODE_AGENT_TURN.request_headers if k.lower() not in drop]
    own = [("x-initiator", initiator), ("x-request-id", rid), ("x-interaction-id", f"turn-{rid}")]
    if intent:
        own += [("openai-intent", intent), ("x-interaction-type", intent)]
    return (*base, *own, *extra)


@dataclass(frozen=True, slots=True)
class Call:
    user: str
    exchange: samples.Exchange
    status: int
    response_headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]


def _call(
    user: str,
    path: str,
    body: dict[str, Any] | None,
    chunks: list[bytes],
    *,
    initiator: str = "user",
    intent: str | None = "conversation-agent",
    status: int = 200,
    content_type: str = "text/event-stream",
    quota: str | None = None,
    method: str = "POST",
    extra: tuple[tuple[str, str], ...] = (),
) -> Call:
    rid = f"cost-{uuid.uuid4()}"
    ex = replace(
        samples.VSCODE_AGENT_TURN,
        name=rid,
        method=method,
        path=path,
        request_headers=_headers(rid, initiator, intent, extra),
        request_body=json.dumps(body).encode() if body is not None else b"",
    )
    headers = [("content-type", content_type), ("x-request-id", rid)]
    if quota:
        headers.append(("x-quota-snapshot-premium_interactions", quota))
    return Call(user, ex, status, tuple(headers), tuple(chunks))


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}


MODELS_ANSWER = {
    "data": [
        {
            "id": "mystery-model-2",
            "billing": {"token_prices": {"batch_size": 1000000, "default": {"input_price": 100, "output_price": 400}}},
        }
    ]
}


def plan() -> list[Call]:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    return [
        # alice, VS Code agent turn with the server's figure and a quota header
        _call(
            "alice",
            "/chat/completions",
            _chat("gpt-4.1"),
            _data(
                {"choices": [{"index": 0, "delta": {"content": "ok"}}]},
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 9120,
                        "completion_tokens": 21,
                        "prompt_tokens_details": {"cached_tokens": 8064},
                    },
                    "copilot_usage": {"total_nano_aiu": GPT41_SERVER},
                },
            ),
            quota=QUOTA_FULL,
        ),
        # alice, the tool round of that turn: no copilot_usage, estimated from the shipped table
        _call(
            "alice",
            "/chat/completions",
            _chat("claude-sonnet-4.6"),
            _data({"choices": [], "usage": usage}),
            initiator="agent",
        ),
        # alice, CLI-style Responses call (X-Interaction-Type only, agent initiator), estimated with cached input
        _call(
            "alice",
            "/responses",
            {"model": "gpt-5.4", "input": "hi", "stream": True},
            _data(
                {
                    "type": "response.completed",
                    "response": {
                        "status": "completed",
                        "model": "gpt-5.4",
                        "usage": {
                            "input_tokens": 2000,
                            "input_tokens_details": {"cached_tokens": 1000},
                            "output_tokens": 50,
                        },
                    },
                }
            ),
            initiator="agent",
            intent=None,
            extra=(("x-interaction-type", "conversation-agent"),),
        ),
        # alice is refused: 402 quota_exceeded, with a low quota snapshot
        _call(
            "alice",
            "/chat/completions",
            _chat("claude-sonnet-4.6"),
            [json.dumps({"error": {"code": "quota_exceeded", "message": "no credits left"}}).encode()],
            status=402,
            content_type="application/json",
            quota=QUOTA_LOW,
        ),
        # bob, Anthropic Messages with the server's figure in message_delta
        _call(
            "bob",
            "/v1/messages",
            {"model": "claude-sonnet-4.6", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            _data(
                {"type": "message_start", "message": {"model": "claude-sonnet-4.6", "usage": {"input_tokens": 50}}},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 48},
                    "copilot_usage": {"total_nano_aiu": MESSAGES_SERVER},
                },
                {"type": "message_stop"},
            ),
        ),
        # bob, a background call (title generation style), estimated, separable by label
        _call(
            "bob",
            "/chat/completions",
            _chat("gpt-5-mini"),
            _data({"choices": [], "usage": {"prompt_tokens": 10_000, "completion_tokens": 1000}}),
            intent="conversation-background",
        ),
        # bob, a model nobody prices yet: counted as unknown
        _call("bob", "/chat/completions", _chat("mystery-model-2"), _data({"choices": [], "usage": usage})),
        # bob's client lists the models: the proxy learns mystery-model-2's price
        _call(
            "bob",
            "/models",
            None,
            [json.dumps(MODELS_ANSWER).encode()],
            method="GET",
            content_type="application/json",
            intent=None,
        ),
        _call("bob", "/chat/completions", _chat("mystery-model-2"), _data({"choices": [], "usage": usage})),
    ]


EXPECTED: Counter[tuple[str, str, str]] = Counter(
    {
        ("alice", "gpt-4.1", "server"): GPT41_SERVER,
        ("alice", "claude-sonnet-4.6", "estimated"): SONNET_ESTIMATE,
        ("alice", "gpt-5.4", "estimated"): GPT54_ESTIMATE,
        ("bob", "claude-sonnet-4.6", "server"): MESSAGES_SERVER,
        ("bob", "gpt-5-mini", "estimated"): MINI_ESTIMATE,
        ("bob", "mystery-model-2", "estimated"): LEARNED_ESTIMATE,
    }
)


@dataclass
class CostRun:
    first_quota: float | None
    metrics: Samples
    log: list[dict[str, Any]]
    extended: list[dict[str, Any]]
    data_dir: Path
    statuses: list[int]


def _gauge(proxy: Mitmdump, user: str) -> float | None:
    for name, labels, value in parse_metrics(scrape(proxy.metrics_url)):
        if name == "copilot_quota_remaining_ratio" and labels == {"user": user, "quota": "premium_interactions"}:
            return value
    return None


@pytest.fixture(scope="module")
def cost_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CostRun]:
    tmp = tmp_path_factory.mktemp("cost")
    data_dir = tmp / "data"
    htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
    calls = plan()
    statuses: list[int] = []
    with FakeCopilotBackend() as backend:
        for c in calls:
            backend.script(str(c.exchange.request_id), c.status, c.response_headers, c.chunks)
        proxy = start_proxy(backend, tmp / "mitmdump", data_dir, htpasswd, copilot_flush_interval="0.2")
        try:
            clients = {u: proxy_client(proxy.port, u, PASSWORDS[u], proxy.ca_cert_path) for u in PASSWORDS}
            first_quota = None
            try:
                for i, c in enumerate(calls):
                    statuses.append(send(clients[c.user], c.exchange).status)
                    if i == 0:
                        first_quota = proxy.wait_for(lambda: _gauge(proxy, "alice"), 10.0, "alice's first quota gauge")
            finally:
                for client in clients.values():
                    client.close()

            def all_counted() -> Samples | None:
                parsed = parse_metrics(scrape(proxy.metrics_url))
                done = sum(v for n, _, v in parsed if n == "copilot_responses_total")
                return parsed if done >= len(calls) else None

            metrics: Samples = proxy.wait_for(all_counted, 15.0, "every call in copilot_responses_total")
        finally:
            proxy.stop()
    yield CostRun(first_quota, metrics, read_log(data_dir), read_extended(data_dir), data_dir, statuses)


def test_the_traffic_passed_unchanged(cost_run: CostRun) -> None:
    assert cost_run.statuses == [c.status for c in plan()]


def test_metrics_count_credits_per_user_model_and_source(cost_run: CostRun) -> None:
    got = metric(cost_run.metrics, "copilot_nano_aiu_total", ("user", "model", "source"))
    assert got == EXPECTED
    background = metric(cost_run.metrics, "copilot_nano_aiu_total", ("user", "background"))
    assert background[("bob", "true")] == MINI_ESTIMATE
    unknown = metric(cost_run.metrics, "copilot_cost_unknown_total", ("model",))
    assert unknown == Counter({("mystery-model-2",): 1})


def test_the_event_log_carries_both_figures(cost_run: CostRun) -> None:
    log = [r for r in cost_run.log if r.get("model_call")]
    counted: Counter[tuple[str, str, str]] = Counter()
    for r in log:
        if r["credits_nano_aiu"]:
            counted[(r["user"], r["model"], r["credits_source"])] += r["credits_nano_aiu"]
    assert counted == EXPECTED
    server = next(r for r in log if r["model"] == "gpt-4.1")
    # the server figure next to the estimate (gpt-4.1 at 200/50/800 per 1M: 1056 fresh, 8064 cached, 21 out)
    assert (server["nano_aiu"], server["nano_aiu_estimated"]) == (
        GPT41_SERVER,
        1056 * 200_000 + 8064 * 50_000 + 21 * 800_000,
    )
    refused = next(r for r in log if r["status"] == 402)
    assert (refused["error_code"], refused["credits_nano_aiu"]) == ("quota_exceeded", None)
    learned = [r["price_source"] for r in log if r["model"] == "mystery-model-2"]
    assert learned == [None, "learned"]


def test_extended_summary_and_rebuild_agree_with_metrics(cost_run: CostRun) -> None:
    (doc,) = cost_run.extended
    by: Counter[tuple[str, str, str]] = Counter()
    for user, entry in doc["users"].items():
        credits = entry.get("credits")
        if not credits:
            continue
        assert credits["nano_aiu"] == sum(credits["by_source"].values()) == sum(credits["by_model"].values())
        assert credits["nano_aiu"] == sum(credits["by_kind"].values())
        for model, n in credits["by_model"].items():
            by[(user, model, "any")] += n
    assert by == Counter({(u, m, "any"): n for (u, m, _), n in EXPECTED.items()})
    sources = {u: e["credits"]["by_source"] for u, e in doc["users"].items() if e.get("credits")}
    assert sources == {
        "alice": {"server": GPT41_SERVER, "estimated": SONNET_ESTIMATE + GPT54_ESTIMATE},
        "bob": {"server": MESSAGES_SERVER, "estimated": MINI_ESTIMATE + LEARNED_ESTIMATE},
    }
    _, rebuilt, bad = rebuild_both(cost_run.data_dir, doc["day"], write=False)
    assert bad == 0
    assert {u: e.get("credits") for u, e in json.loads(rebuilt)["users"].items()} == {
        u: e.get("credits") for u, e in doc["users"].items()
    }


def test_quota_gauges_follow_the_headers_and_the_402_is_labelled(cost_run: CostRun) -> None:
    assert cost_run.first_quota == 0.875
    quota = metric(cost_run.metrics, "copilot_quota_remaining_ratio", ("user", "quota"))
    assert quota == Counter({("alice", "premium_interactions"): 0.05})
    overage = metric(cost_run.metrics, "copilot_quota_overage_used", ("user", "quota"))
    assert overage == Counter({("alice", "premium_interactions"): 1})
    errors = metric(cost_run.metrics, "copilot_user_errors_total", ("user", "code", "error_code"))
    assert errors == Counter({("alice", "402", "quota_exceeded"): 1})


def test_budget_gauges_hold_month_to_date_credits(cost_run: CostRun) -> None:
    used = metric(cost_run.metrics, "copilot_budget_used_credits", ("user",))
    per_user: Counter[str] = Counter()
    for (user, _, _), n in EXPECTED.items():
        per_user[user] += n
    assert used == Counter({(u,): pytest.approx(n / 1e9) for u, n in per_user.items()})
    allowance = metric(cost_run.metrics, "copilot_budget_allowance_credits", ("user",))
    assert allowance == Counter({("alice",): 1900, ("bob",): 1900})
    assert datetime.now(UTC).strftime("%Y-%m") == cost_run.extended[0]["day"][:7]


def test_month_to_date_survives_a_restart(cost_run: CostRun, tmp_path: Path) -> None:
    """A new process on the same data dir starts with this month's credits from the extended summary."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    with FakeCopilotBackend() as backend:
        proxy = start_proxy(backend, tmp_path / "mitmdump", cost_run.data_dir, htpasswd)
        try:

            def used() -> Counter[tuple[str, ...]] | None:
                got = metric(parse_metrics(scrape(proxy.metrics_url)), "copilot_budget_used_credits", ("user",))
                return got or None

            after_restart = proxy.wait_for(used, 10.0, "month-to-date gauges after the restart")
        finally:
            proxy.stop()
    before = metric(cost_run.metrics, "copilot_budget_used_credits", ("user",))
    assert after_restart == before and set(after_restart) == {("alice",), ("bob",)}
