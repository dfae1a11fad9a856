"""Governance through a real mitmdump: canary secrets of every type in two users' traffic, and agent tool calls.

Two users (alice on HTTP/2 like VS Code, bob on HTTP/1.1) each send fresh canaries of every secret type the
scanner knows, spread over a completion prompt, a chat message, a Responses input, an Anthropic content
block and a Responses-over-WebSocket frame, with recording and the JSON log (file and stdout) on. Then a
multi-round agent turn per answer shape asks for known tool calls.

Asserted: each canary is reported exactly once, with the right user and type (metric and log line); no
canary appears in any file under the data dir, any log line, /metrics or mitmdump's output; the backend
received every request body byte for byte; tool-call counts equal the tool calls in the answers.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from exporter.scanner import SECRET_EVENT
from exporter.tools import RequestTools, classify_tool, request_tools
from tests import canaries
from tests import samples as S
from tests.e2e.fakebackend import FakeCopilotBackend, responses_ws_frames
from tests.e2e.harness import open_websocket, proxy_client, request_headers, send
from tests.e2e.test_e2e import PASSWORDS, metric, parse_metrics, read_log, scrape, start_proxy, write_htpasswd
from tests.test_tools import ROUNDS, _chat_round, _messages_round, _responses_round

pytestmark = pytest.mark.e2e

SHAPES = ("completion", "chat", "responses", "messages", "websocket")
BASES = {
    "completion": S.VSCODE_COMPLETION,
    "chat": S.VSCODE_AGENT_TURN,
    "responses": S.VSCODE_RESPONSES,
    "messages": S.VSCODE_MESSAGES,
}
KINDS = {"completion": "completion", "chat": "chat_agent", "responses": "chat_agent", "messages": "chat_agent"}


def _with(ex: S.Exchange, rid: str, body: bytes, answer: bytes | None = None) -> S.Exchange:
    headers = tuple((k, rid if k.lower() == "x-request-id" else v) for k, v in ex.request_headers)
    return replace(ex, request_headers=headers, request_body=body, response_body=answer or ex.response_body)


def _planted(shape: str, lines: list[str]) -> bytes:
    """The shape's sample body with the canary lines in the place that shape carries prompt text."""
    text = "\n".join(lines)
    if shape == "completion":
        doc = json.loads(S.VSCODE_COMPLETION.request_body)
        doc["prompt"] = f"# Path: deploy/settings.py\n{text}\n" + doc["prompt"]
    elif shape == "chat":
        doc = json.loads(S.VSCODE_AGENT_TURN.request_body)
        doc["messages"].append({"role": "tool", "tool_call_id": "call_x", "content": text})
    elif shape in ("responses", "websocket"):
        doc = json.loads(S.VSCODE_RESPONSES.request_body)
        doc["input"][-1]["content"][0]["text"] = text
        if shape == "websocket":
            doc.pop("stream")
            doc = {"type": "response.create", **doc, "initiator": "user"}
    else:
        doc = json.loads(S.VSCODE_MESSAGES.request_body)
        doc["messages"].append({"role": "user", "content": [{"type": "text", "text": text}]})
    return json.dumps(doc).encode()


# A text-only answer per shape, so that the only tool calls of the run are the agent turns' below.
TEXT_ANSWERS = {"chat": _chat_round([]), "responses": _responses_round([]), "messages": _messages_round([])}


@dataclass
class Run:
    planted: dict[tuple[str, str], str]  # (user, type) -> the secret
    metrics: str
    outputs: dict[str, str]
    log: list[dict[str, Any]]
    sent: dict[str, bytes]  # request id -> body sent
    received: dict[str, bytes]  # request id -> body the backend received
    ws_sent: dict[str, bytes]
    ws_received: dict[str, list[bytes]]
    expected_tools: Counter[tuple[str, str, str, str]]


def _secret_traffic(backend: FakeCopilotBackend, proxy: Any, user: str, run: Run) -> None:
    fresh = canaries.fresh()
    for secret_type, line in fresh.items():
        run.planted[(user, secret_type)] = canaries.core(line, secret_type)
    types = sorted(fresh)
    per_shape = {shape: [fresh[t] for t in types[i :: len(SHAPES)]] for i, shape in enumerate(SHAPES)}
    with proxy_client(proxy.port, user, PASSWORDS[user], proxy.ca_cert_path, http2=user == "alice") as client:
        for shape in SHAPES[:-1]:
            rid = f"gov-{user}-{shape}-{uuid.uuid4()}"
            ex = _with(BASES[shape], rid, _planted(shape, per_shape[shape]), TEXT_ANSWERS.get(shape))
            backend.script_exchange(ex)
            assert send(client, ex).status == 200
            run.sent[rid] = ex.request_body
    ws_rid = f"gov-{user}-ws-{uuid.uuid4()}"
    ws_headers = request_headers(S.VSCODE_RESPONSES, ws_rid)
    frame = _planted("websocket", per_shape["websocket"])
    with open_websocket(
        proxy.port, user, PASSWORDS[user], proxy.ca_cert_path, S.VSCODE_RESPONSES.host, "/responses", ws_headers
    ) as ws:
        ws.send_text(frame.decode())
        got = [ws.receive() for _ in responses_ws_frames()]
    assert [p for _, p in got] == [f.encode() for f in responses_ws_frames()]
    run.ws_sent[ws_rid] = frame


def _agent_turns(backend: FakeCopilotBackend, proxy: Any, user: str, run: Run) -> None:
    """One multi-round agent turn per answer shape (tool calls as in tests/test_tools.py ROUNDS)."""
    makers = {
        "chat": lambda calls: _chat_round([n for n, _ in calls]),
        "responses": _responses_round,
        "messages": _messages_round,
    }
    with proxy_client(proxy.port, user, PASSWORDS[user], proxy.ca_cert_path, http2=user == "alice") as client:
        for shape, rounds in ROUNDS.items():
            body = BASES[shape].request_body
            if shape == "responses":
                doc = json.loads(body)
                doc["tools"].append({"type": "mcp", "server_label": "notion", "server_url": "https://mcp.notion.com"})
                body = json.dumps(doc).encode()
            offered = request_tools(body) if shape == "responses" else RequestTools()
            for i, calls in enumerate(rounds):
                rid = f"gov-{user}-{shape}-round{i}-{uuid.uuid4()}"
                ex = _with(BASES[shape], rid, body, makers[shape](calls))
                backend.script_exchange(ex)
                assert send(client, ex).status == 200
                run.sent[rid] = body
                for name, server in calls:
                    use = classify_tool(name, server, offered)
                    run.expected_tools[(user, use.tool, use.source, use.server or "none")] += 1


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("governance")
    data = tmp / "data"
    result = Run({}, "", {}, [], {}, {}, {}, {}, Counter())
    with FakeCopilotBackend() as backend:
        htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
        proxy = start_proxy(
            backend,
            tmp / "mitmdump",
            data,
            htpasswd,
            copilot_record=True,
            copilot_log_json="both",
            copilot_flush_interval="0.2",
        )
        try:
            for user in ("alice", "bob"):
                _secret_traffic(backend, proxy, user, result)
                _agent_turns(backend, proxy, user, result)

            want = len(result.planted)
            tools = sum(result.expected_tools.values())

            def done() -> bool:
                m = parse_metrics(scrape(proxy.metrics_url))
                found = sum(metric(m, "copilot_secrets_detected_total", ("user",)).values())
                called = sum(metric(m, "copilot_tool_calls_total", ("user",)).values())
                lines = (
                    [r for r in read_log(data) if r.get("event") == SECRET_EVENT] if (data / "events").exists() else []
                )
                return found >= want and called >= tools and len(lines) >= want

            proxy.wait_for(done, 30.0, "every canary reported and every tool call counted")
            result.metrics = scrape(proxy.metrics_url)
        finally:
            proxy.stop()
        result.received = {r.request_id: r.body for r in backend.requests() if r.request_id}
        result.ws_received = {rid: [p for _, p in backend.websockets_for(rid)[0].received] for rid in result.ws_sent}
    result.outputs = {"/metrics": result.metrics, "mitmdump stdout+stderr": proxy.log_text()}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        result.outputs[str(path.relative_to(data))] = path.read_text(encoding="utf-8", errors="replace")
    result.log = read_log(data)
    yield result


def test_every_canary_is_reported_once_with_its_user_and_type(run: Run) -> None:
    assert len(run.planted) == 2 * len(canaries.fresh())
    lines = [r for r in run.log if r["event"] == SECRET_EVENT]
    assert Counter((r["user"], r["secret_type"]) for r in lines) == Counter(run.planted.keys())
    m = parse_metrics(run.metrics)
    assert metric(m, "copilot_secrets_detected_total", ("user", "type")) == Counter({key: 1 for key in run.planted})
    fingerprints = {r["fingerprint"] for r in lines}
    assert len(fingerprints) == len(lines)  # fresh canaries: all distinct
    kinds = {r["kind"] for r in lines}
    assert kinds == {"completion", "chat_agent", "chat_ws"}
    hinted = [r for r in lines if r["kind"] == "completion"]
    assert hinted and all(r["path_hint"] == "deploy/settings.py" for r in hinted)


def test_no_canary_in_any_output(run: Run) -> None:
    assert any(name.startswith("usage/") for name in run.outputs), "recordings were written"
    assert any(name.startswith("events/") for name in run.outputs)
    leaks = [
        (name, f"{user}/{secret_type}")
        for (user, secret_type), secret in run.planted.items()
        for name, text in run.outputs.items()
        if secret in text or secret.replace("\n", "\\n") in text
    ]
    assert leaks == []


def test_request_bytes_reach_the_backend_unchanged(run: Run) -> None:
    for rid, body in run.sent.items():
        assert run.received[rid] == body, rid
    for rid, frame in run.ws_sent.items():
        assert run.ws_received[rid] == [frame], rid


def test_tool_calls_equal_the_calls_in_the_answers(run: Run) -> None:
    m = parse_metrics(run.metrics)
    got = metric(m, "copilot_tool_calls_total", ("user", "tool", "source", "server"))
    assert got == run.expected_tools
    assert sum(got.values()) == 2 * sum(len(calls) for rounds in ROUNDS.values() for calls in rounds)
