"""End to end: Copilot CLI sessions of three users through a real mitmdump, on the CLI's four transports.

dana uses `/responses` (a prompt with a tool round, and a prompt whose first call meets a 429 and is
resent as `agent`) and `/chat/completions`; erin uses `/v1/messages` (a tool round, and a 429 then the
retry); fern uses one Responses WebSocket that carries two prompts. The fake backend answers from
`samples.CLI` / `samples.CLI_WEBSOCKET` and answers the two 429s once each. Then `/metrics`, the JSON
event log and the original daily summary must agree with each other and with the samples: one turn per
prompt (the rate-limited ones included), tool rounds as `agent_step`, `editor="cli"`, one kind per turn.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, responses_ws_frames
from tests.e2e.harness import open_websocket, proxy_client, send
from tests.e2e.test_e2e import (
    Samples,
    check_extended_against_metrics,
    check_summary_schema,
    metric,
    metric_total,
    parse_metrics,
    read_extended,
    read_log,
    read_summaries,
    scrape,
    start_proxy,
    write_htpasswd,
)

pytestmark = pytest.mark.e2e

S = samples
PASSWORDS = {"dana": "dana-Pw-4kR8tY2qLz", "erin": "erin-Pw-9cV3bN6mXw", "fern": "fern-Pw-7hJ1sD5pQe"}
HTTP_PLAN: dict[str, tuple[samples.Exchange, ...]] = {
    "dana": (
        S.CLI_RESPONSES_PROMPT,
        S.CLI_RESPONSES_TOOL_ROUND,
        S.CLI_RESPONSES_RATE_LIMITED,
        S.CLI_RESPONSES_RETRY,
        S.CLI_CHAT_PROMPT,
        S.CLI_CHAT_TOOL_ROUND,
    ),
    "erin": (S.CLI_MESSAGES_PROMPT, S.CLI_MESSAGES_TOOL_ROUND, S.CLI_MESSAGES_RATE_LIMITED, S.CLI_MESSAGES_RETRY),
}
WS_USER = "fern"
# Every call in the order it is sent, with its user.
PLAN: tuple[tuple[str, samples.Exchange], ...] = (
    *((user, ex) for user, exs in HTTP_PLAN.items() for ex in exs),
    *((WS_USER, ex) for ex in S.CLI_WEBSOCKET),
)
EDITOR_KEY = f"copilot-{S.CLI_VERSION}"  # the daily summary's key: the raw Editor-Version


def expected_initiator(ex: samples.Exchange) -> str:
    """The decision's initiator: the header's, except a retry that counts its failed user call's turn."""
    return "user" if ex.expected.get("initiator_source") == "retry" else str(ex.expected["initiator"])


@dataclass
class CliRun:
    http_results: dict[str, tuple[int, bytes]]  # sample name -> (status, body as received)
    ws_frames: list[list[bytes]]  # per WebSocket call: the server frames the client received
    sources: dict[str, str]  # sample name -> how the backend chose its answer
    metrics: Samples
    log: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    extended: list[dict[str, Any]]


def _run_http(backend: FakeCopilotBackend, port: int, ca: Path) -> dict[str, tuple[int, bytes]]:
    results: dict[str, tuple[int, bytes]] = {}
    for user, exchanges in HTTP_PLAN.items():
        with proxy_client(port, user, PASSWORDS[user], ca) as client:
            for ex in exchanges:
                if ex.status == 429:  # the first call of this prompt, and only it, is rate-limited
                    match = {"x-interaction-id": str(ex.expected["interaction_id"]), "x-initiator": "user"}
                    backend.answer_once(match, 429, ex.response_headers, ex.response_body)
                result = send(client, ex)
                results[ex.name] = (result.status, result.body)
    return results


def _run_websocket(port: int, ca: Path) -> list[list[bytes]]:
    """One socket, opened with the first call's headers, carrying both prompts' calls in order."""
    got: list[list[bytes]] = []
    first = S.CLI_WEBSOCKET[0]
    with open_websocket(port, WS_USER, PASSWORDS[WS_USER], ca, first.host, first.path, first.request_headers) as ws:
        for ex in S.CLI_WEBSOCKET:
            ws.send_text(ex.request_body.decode())
            frames: list[bytes] = []
            for _ in range(50):  # bounded: six frames per call
                is_text, payload = ws.receive()
                assert is_text
                frames.append(payload)
                if json.loads(payload).get("type") == "response.completed":
                    break
            got.append(frames)
    return got


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRun]:
    tmp = tmp_path_factory.mktemp("cli")
    data_dir = tmp / "data"
    htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
    # The 429s are not samples the backend may pick by body: only `answer_once` gives them, once.
    answers = tuple(e for e in (*S.CLI, *S.CLI_WEBSOCKET) if e.status != 429)
    with FakeCopilotBackend(exchanges=answers) as backend:
        proxy = start_proxy(backend, tmp / "mitmdump", data_dir, htpasswd)
        try:
            http_results = _run_http(backend, proxy.port, proxy.ca_cert_path)
            ws_frames = _run_websocket(proxy.port, proxy.ca_cert_path)

            def all_seen() -> Samples | None:
                parsed = parse_metrics(scrape(proxy.metrics_url))
                return parsed if metric_total(parsed, "copilot_responses_total") >= len(PLAN) else None

            metrics: Samples = proxy.wait_for(all_seen, 15.0, f"{len(PLAN)} calls in copilot_responses_total")
        finally:
            proxy.stop()  # flushes the event log and the daily summary
        sources = [r.source for r in backend.requests() if r.method == "POST"]
    yield CliRun(
        http_results=http_results,
        ws_frames=ws_frames,
        sources=dict(zip((ex.name for exs in HTTP_PLAN.values() for ex in exs), sources, strict=True)),
        metrics=metrics,
        log=read_log(data_dir),
        summaries=read_summaries(data_dir),
        extended=read_extended(data_dir),
    )


def test_backend_answered_each_429_once_and_bytes_reached_the_clients_unchanged(cli_run: CliRun) -> None:
    for _user, exchanges in HTTP_PLAN.items():
        for ex in exchanges:
            assert cli_run.http_results[ex.name] == (ex.status, ex.response_body), ex.name
            assert cli_run.sources[ex.name] == ("once" if ex.status == 429 else f"sample:{ex.name}"), ex.name
    # The retry has the rate-limited call's body: only the one-time answer told them apart.
    assert S.CLI_RESPONSES_RETRY.request_body == S.CLI_RESPONSES_RATE_LIMITED.request_body
    assert cli_run.ws_frames == [[f.encode() for f in responses_ws_frames(ex)] for ex in S.CLI_WEBSOCKET]


def _model_call_lines(cli_run: CliRun) -> list[dict[str, Any]]:
    return [r for r in cli_run.log if r["kind"] in ("chat_agent", "chat_ws")]


def test_event_log_has_one_line_per_call_as_the_samples_say(cli_run: CliRun) -> None:
    lines = _model_call_lines(cli_run)
    # Calls of one user are logged in order; the users ran one after the other.
    assert [(r["user"], r["interaction_id"]) for r in lines] == [
        (user, ex.expected["interaction_id"]) for user, ex in PLAN
    ]
    for (_user, ex), rec in zip(PLAN, lines, strict=True):
        want = ex.expected
        assert rec["event"] == ("copilot.request" if want["counted"] else "copilot.skipped"), ex.name
        assert (rec["counted"], rec["skip_reason"]) == (want["counted"], want["skip_reason"]), ex.name
        assert (rec["kind"], rec["editor"], rec["editor_version"]) == (want["kind"], "cli", want["editor_version"])
        assert rec["summary_key"] == EDITOR_KEY
        assert rec["initiator"] == expected_initiator(ex), ex.name
        assert rec["initiator_source"] == want.get("initiator_source", "header"), ex.name
        assert (rec["status"], rec["model"]) == (ex.status, want["model"]), ex.name
        assert (rec["input_tokens"], rec["output_tokens"]) == (want["input_tokens"], want["output_tokens"]), ex.name
        if ex.status == 429:
            assert rec["error"] == "rate_limited" and rec["finish_reason"] is None
        else:
            assert rec["finish_reason"] == want["finish_reason"] and rec["nano_aiu"] == want["nano_aiu"], ex.name
        assert rec["request_id"] is None or ex.status == 101  # the CLI sends no X-Request-Id


def test_one_turn_per_prompt_one_kind_per_turn(cli_run: CliRun) -> None:
    lines = _model_call_lines(cli_run)
    turns = Counter(r["interaction_id"] for r in lines if r["counted"])
    prompts = {ex.expected["interaction_id"] for _user, ex in PLAN}
    assert len(prompts) == 7 and turns == Counter(dict.fromkeys(prompts, 1))
    kinds: dict[str, set[str]] = {}
    for r in lines:
        kinds.setdefault(r["interaction_id"], set()).add(r["kind"])
    assert all(len(k) == 1 for k in kinds.values()), kinds
    rounds = [r for r in lines if r["skip_reason"] == "agent_step"]
    assert len(rounds) == 4 and all(r["tool_calls"] == [] and r["initiator"] == "agent" for r in rounds)
    # The two prompts that met a 429 are counted on their retries, whose own X-Initiator is agent.
    retried = [r for r in lines if r["initiator_source"] == "retry"]
    assert sorted(r["interaction_id"] for r in retried) == sorted(
        str(ex.expected["interaction_id"]) for ex in (S.CLI_RESPONSES_RETRY, S.CLI_MESSAGES_RETRY)
    )


def test_metrics_count_the_cli_turns_steps_model_calls_and_tokens(cli_run: CliRun) -> None:
    m = cli_run.metrics
    requests = metric(m, "copilot_requests_total", ("user", "editor", "language", "kind"))
    assert requests == Counter(
        {
            ("dana", "cli", "unknown", "chat_agent"): 3,
            ("erin", "cli", "unknown", "chat_agent"): 2,
            ("fern", "cli", "unknown", "chat_ws"): 2,
        }
    )
    assert metric(m, "copilot_skipped_requests_total", ("kind", "reason")) == Counter(
        {("chat_agent", "agent_step"): 3, ("chat_agent", "http_error"): 2, ("chat_ws", "agent_step"): 1}
    )
    want_calls: Counter[tuple[str, ...]] = Counter()
    want_tokens: Counter[tuple[str, ...]] = Counter()
    for user, ex in PLAN:
        kind, model = ex.expected["kind"], ex.expected["model"]
        want_calls[(user, kind, model, expected_initiator(ex))] += 1
        for kind_of, n in (("input", ex.expected["input_tokens"]), ("output", ex.expected["output_tokens"])):
            if n:
                want_tokens[(user, kind, model, kind_of)] += n
    assert metric(m, "copilot_model_calls_total", ("user", "kind", "model", "initiator")) == want_calls
    assert metric(m, "copilot_tokens_total", ("user", "kind", "model", "type")) == want_tokens
    assert metric(m, "copilot_responses_total", ("kind", "code")) == Counter(
        {("chat_agent", "200"): 8, ("chat_agent", "429"): 2, ("chat_ws", "101"): 3}
    )
    # The rate-limited calls stay visible per user, although their prompts were answered and counted.
    assert metric(m, "copilot_user_errors_total", ("user", "kind", "code")) == Counter(
        {("dana", "chat_agent", "429"): 1, ("erin", "chat_agent", "429"): 1}
    )
    for user in PASSWORDS:  # the client inventory names the CLI and its version, not "other"
        assert metric_total(m, "copilot_client_info", user=user, editor="cli", editor_version=S.CLI_VERSION) == 1
    assert metric_total(m, "copilot_client_info", editor="other") == 0


def test_daily_summary_and_the_other_outputs_agree(cli_run: CliRun) -> None:
    docs = cli_run.summaries
    assert docs, "no daily summary written"
    for doc in docs:
        check_summary_schema(doc)
    per_user: Counter[str] = Counter()
    for doc in docs:
        for user, entry in doc["usage"].items():
            assert set(entry["chat"]) == {EDITOR_KEY} and entry["completions"] == {}, user
            per_user[user] += entry["chat"][EDITOR_KEY]
    assert per_user == Counter({"dana": 3, "erin": 2, "fern": 2})
    from_log = Counter(r["user"] for r in cli_run.log if r["event"] == "copilot.request")
    from_metrics: Counter[str] = Counter()
    for (user, *_rest), n in metric(cli_run.metrics, "copilot_requests_total", ("user", "kind")).items():
        from_metrics[user] += n
    assert per_user == from_log == from_metrics
    assert sum(d["total_chat_turns"] for d in docs) == 7


def test_the_extended_summary_agrees_with_metrics_one_kind_per_turn(cli_run: CliRun) -> None:
    check_extended_against_metrics(cli_run.extended, cli_run.metrics)
    turns: Counter[str] = Counter()
    for doc in cli_run.extended:
        for user, entry in doc["users"].items():
            turns[user] += entry["totals"]["interactions"]
            assert set(entry["interactions"]) <= {"chat_agent", "chat_ws"}, user  # agent mode on every transport
            assert all(set(by_editor) == {"cli"} for by_editor in entry["interactions"].values()), user
    assert turns == Counter({"dana": 3, "erin": 2, "fern": 2})
    errors = Counter({u: e["totals"]["errors"] for d in cli_run.extended for u, e in d["users"].items()})
    assert sum(errors.values()) == 2  # the two 429'd prompts (each still counted once above)
