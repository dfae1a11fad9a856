"""Agent tools: tool calls by name, source and MCP server in the three answer shapes; MCP servers of requests."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from exporter import metricdefs as md
from exporter.labels import OTHER, LabelPolicy
from exporter.observe import governance
from exporter.sse import SSEEvent
from exporter.streams import AnswerParser, Shape
from exporter.tools import BUILTIN, MCP, UNKNOWN_SOURCE, RequestTools, classify_tool, mcp_server, request_tools
from tests import samples as S
from tests.conftest import Harness
from tests.factories import chat

# -- classification -----------------------------------------------------------------------------------------

CLASSIFY = [
    # name, server the answer named, servers the request offered -> tool label, source, server
    ("read_file", "", (), ("read_file", BUILTIN, "")),
    ("run_in_terminal", "", (), ("run_in_terminal", BUILTIN, "")),
    ("bash", "", (), ("bash", BUILTIN, "")),
    ("mcp_github_get_issue", "", (), ("get_issue", MCP, "github")),
    ("mcp__github__create_pull_request", "", (), ("create_pull_request", MCP, "github")),
    ("mcp__my_server__do_thing", "", (), (OTHER, MCP, "my_server")),
    ("github-mcp-server-list_issues", "", (), ("list_issues", MCP, "github")),
    ("mcp_notion_search", "", (), (OTHER, MCP, "notion")),
    ("get_issue", "GitHub", (), ("get_issue", MCP, "github")),
    ("search_pages", "", ("notion",), (OTHER, MCP, "notion")),
    ("search_pages", "", ("notion", "linear"), (OTHER, UNKNOWN_SOURCE, "")),  # ambiguous: not guessed
    ("read_file", "", ("notion",), ("read_file", BUILTIN, "")),
    ("totally_made_up_tool", "", (), (OTHER, UNKNOWN_SOURCE, "")),
]


@pytest.mark.parametrize(("name", "server", "offered", "expected"), CLASSIFY)
def test_classify_tool(name: str, server: str, offered: tuple[str, ...], expected: tuple[str, str, str]) -> None:
    use = classify_tool(name, server, RequestTools(offered))
    assert (use.tool, use.source, use.server) == expected


MCP_URLS = [
    ("api.githubcopilot.com", "/mcp/readonly", True, "github"),
    ("api.business.githubcopilot.com", "/mcp/x/issues", True, "github"),
    ("api.githubcopilot.com", "/chat/completions", True, None),
    ("mcp.notion.com", "/mcp", False, "notion"),
    ("mcp.internal.example.com", "/", False, "mcp.internal.example.com"),
    ("tools.example.com", "/api/mcp/sse", False, "tools.example.com"),
    ("jira-mcp.corp.example", "/sse", False, "jira-mcp.corp.example"),
    ("www.example.com", "/index.html", False, None),
    ("mcpmail.example.com", "/inbox", False, None),
]


@pytest.mark.parametrize(("host", "path", "copilot", "expected"), MCP_URLS)
def test_mcp_server_of_a_url(host: str, path: str, copilot: bool, expected: str | None) -> None:
    assert mcp_server(host, path, copilot) == expected


def test_request_tool_lists_name_their_mcp_servers() -> None:
    responses = {"tools": [{"type": "function", "name": "read_file"}, {"type": "mcp", "server_label": "Notion"}]}
    anthropic = {"mcp_servers": [{"type": "url", "url": "https://mcp.linear.app/sse", "name": "linear"}]}
    toolset = {"tools": [{"type": "mcp_toolset", "mcp_server_name": "sentry"}]}
    assert request_tools(json.dumps(responses).encode()).servers == ("notion",)
    assert request_tools(json.dumps(anthropic).encode()).servers == ("linear",)
    assert request_tools(json.dumps(toolset).encode()).servers == ("sentry",)
    assert request_tools(S.VSCODE_AGENT_TURN.request_body).servers == ()
    assert request_tools(b"[" * 100_000 + b'"mcp"').servers == ()  # hostile: never raises


def test_the_tool_label_is_bounded() -> None:
    policy = LabelPolicy()
    names = [f"invented_tool_{i}" for i in range(500)] + [f"mcp__srv{i}__x" for i in range(500)]
    labels = set()
    for obs in governance(chat(tool_calls=tuple(names), tool_sources=(), tool_servers=())):
        labels.add(policy.bound(obs.metric.name, obs.labels, obs.metric.labels, set()))
    assert {lab[2] for lab in labels} == {OTHER}
    servers = {lab[4] for lab in labels}
    assert OTHER in servers and "none" in servers
    assert len(servers) <= 200 + 1  # 200 first-come values (one is "none"), then `other`


# -- answers: multi-round agent turns in the three shapes --------------------------------------------------------


def _sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {payload}\n\n")
    return "".join(out).encode()


def _chat_round(tools: list[str]) -> bytes:
    events: list[tuple[str | None, dict[str, Any] | str]] = []
    for i, name in enumerate(tools):
        call = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
        events.append((None, {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]}))
        more = {"index": i, "function": {"arguments": '{"filePath":"/w/a.py"}'}}
        events.append((None, {"choices": [{"index": 0, "delta": {"tool_calls": [more]}}]}))
    if not tools:
        events.append((None, {"choices": [{"index": 0, "delta": {"content": "Done."}}]}))
    reason = "tool_calls" if tools else "stop"
    events.append((None, {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}], "usage": {}}))
    events.append((None, "[DONE]"))
    return _sse(*events)


def _responses_round(tools: list[tuple[str, str]]) -> bytes:
    items = []
    for name, server in tools:
        item = {"type": "mcp_call", "name": name, "server_label": server} if server else {"type": "function_call"}
        item.setdefault("name", name)
        items.append(item)
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        ("response.created", {"type": "response.created", "response": {"model": "gpt-5.1-codex"}})
    ]
    for i, item in enumerate(items):
        events.append(
            ("response.output_item.added", {"type": "response.output_item.added", "output_index": i, "item": item})
        )
    if not items:
        events.append(("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Done."}))
    done = {"type": "response.completed", "response": {"status": "completed", "output": items, "usage": {}}}
    events.append(("response.completed", done))
    return _sse(*events)


def _messages_round(tools: list[tuple[str, str]]) -> bytes:
    events: list[tuple[str | None, dict[str, Any] | str]] = [
        (
            "message_start",
            {"type": "message_start", "message": {"model": "claude-sonnet-4.5", "usage": {"input_tokens": 9}}},
        )
    ]
    for i, (name, server) in enumerate(tools):
        block = {"type": "mcp_tool_use", "id": f"t{i}", "name": name, "server_name": server}
        if not server:
            block = {"type": "tool_use", "id": f"t{i}", "name": name, "input": {}}
        events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": block}))
        delta = {"type": "input_json_delta", "partial_json": "{}"}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
    if not tools:
        events.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
            )
        )
    stop = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use" if tools else "end_turn"},
        "usage": {"output_tokens": 3},
    }
    events.append(("message_delta", stop))
    events.append(("message_stop", {"type": "message_stop"}))
    return _sse(*events)


def _round(base: S.Exchange, body: bytes, rid: str, request_body: bytes | None = None) -> S.Exchange:
    headers = tuple((k, rid if k.lower() == "x-request-id" else v) for k, v in base.request_headers)
    return replace(base, response_body=body, request_headers=headers, request_body=request_body or base.request_body)


ROUNDS: dict[str, list[list[tuple[str, str]]]] = {
    # Round after round of one agent turn: the tool calls each answer asks for ("" = not an MCP call by answer).
    "chat": [[("read_file", ""), ("mcp_github_get_issue", "")], [("run_in_terminal", ""), ("read_file", "")], []],
    "responses": [[("read_file", ""), ("get_issue", "github")], [("search_pages", ""), ("apply_patch", "")], []],
    "messages": [[("run_in_terminal", ""), ("list_issues", "github")], [("mcp__linear__create_issue", "")], []],
}


def _expected(shape: str, offered: RequestTools) -> Counter[tuple[str, str, str]]:
    expected: Counter[tuple[str, str, str]] = Counter()
    for calls in ROUNDS[shape]:
        for name, server in calls:
            use = classify_tool(name, server, offered)
            expected[(use.tool, use.source, use.server or "none")] += 1
    return expected


@pytest.mark.parametrize("shape", sorted(ROUNDS))
def test_tool_calls_of_a_multi_round_agent_turn_equal_the_calls_in_the_answers(harness: Harness, shape: str) -> None:
    base = {"chat": S.VSCODE_AGENT_TURN, "responses": S.VSCODE_RESPONSES, "messages": S.VSCODE_MESSAGES}[shape]
    request_body = None
    if shape == "responses":  # the request offers one remote MCP server: its unprefixed tools belong to it
        doc = json.loads(base.request_body)
        doc["tools"].append({"type": "mcp", "server_label": "notion", "server_url": "https://mcp.notion.com/mcp"})
        request_body = json.dumps(doc).encode()
    for i, calls in enumerate(ROUNDS[shape]):
        if shape == "chat":
            body = _chat_round([name for name, _ in calls])
        elif shape == "responses":
            body = _responses_round(calls)
        else:
            body = _messages_round(calls)
        harness.flow(_round(base, body, f"{shape}-round-{i}", request_body), user="dana")
    offered = request_tools(request_body) if request_body else RequestTools()
    expected = _expected(shape, offered)
    assert sum(expected.values()) == sum(len(calls) for calls in ROUNDS[shape])
    assert [len(e.tool_calls) for e in harness.events] == [len(calls) for calls in ROUNDS[shape]]
    got: Counter[tuple[str, str, str]] = Counter()
    for tool, source, server in expected:
        got[(tool, source, server)] = int(
            harness.sample(
                "copilot_tool_calls_total", user="dana", editor="vscode", tool=tool, source=source, server=server
            )
        )
    assert got == expected
    total = sum(
        s.value
        for m in harness.addon.prometheus.registry.collect()
        if m.name == md.TOOL_CALLS.name
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert total == sum(expected.values())


NON_STREAMED = [
    (
        Shape.CHAT,
        {"choices": [{"index": 0, "message": {"tool_calls": [{"function": {"name": "read_file"}}] * 2}}]},
        ["read_file", "read_file"],
        ["", ""],
    ),
    (
        Shape.RESPONSES,
        {
            "output": [
                {"type": "function_call", "name": "grep"},
                {"type": "mcp_call", "name": "q", "server_label": "s1"},
            ]
        },
        ["grep", "q"],
        ["", "s1"],
    ),
    (
        Shape.MESSAGES,
        {"content": [{"type": "tool_use", "name": "bash"}, {"type": "mcp_tool_use", "name": "x", "server_name": "s2"}]},
        ["bash", "x"],
        ["", "s2"],
    ),
]


@pytest.mark.parametrize(("shape", "doc", "names", "servers"), NON_STREAMED)
def test_non_streamed_answers(shape: Shape, doc: dict[str, Any], names: list[str], servers: list[str]) -> None:
    parser = AnswerParser(shape)
    parser.feed_json(doc)
    assert (parser.answer.tool_calls, parser.answer.tool_servers) == (names, servers)


def test_a_responses_stream_counts_each_call_once_despite_the_final_output_list() -> None:
    parser = AnswerParser(Shape.RESPONSES)
    for line in _responses_round([("read_file", ""), ("get_issue", "github")]).decode().split("\n\n"):
        data = next((x[6:] for x in line.splitlines() if x.startswith("data: ")), "")
        if data:
            parser.feed_event(SSEEvent(None, data))
    assert parser.answer.tool_calls == ["read_file", "get_issue"]
    assert parser.answer.tool_servers == ["", "github"]


# -- MCP requests through the proxy ----------------------------------------------------------------------------


def _mcp_exchange(host: str, path: str) -> S.Exchange:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    return replace(
        S.VSCODE_AGENT_TURN,
        host=host,
        path=path,
        request_body=body,
        response_headers=(("content-type", "application/json"),),
        response_body=b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}',
    )


def test_mcp_requests_by_user_and_server(harness: Harness) -> None:
    harness.flow(_mcp_exchange("api.githubcopilot.com", "/mcp/readonly"), user="erin")
    harness.flow(_mcp_exchange("api.githubcopilot.com", "/mcp/readonly"), user="erin")
    assert harness.sample("copilot_mcp_requests_total", user="erin", server="github") == 2
    assert harness.events[-1].mcp_server == "github" and harness.events[-1].kind == "mcp"
    # A non-Copilot host, intercepted (copilot_intercept=all): an MCP server by its host.
    harness.flow(_mcp_exchange("mcp.notion.com", "/mcp"), user="erin")
    harness.flow(_mcp_exchange("www.example.com", "/"), user="erin")
    assert harness.sample("copilot_mcp_requests_total", user="erin", server="notion") == 1
    total = sum(
        s.value
        for m in harness.addon.prometheus.registry.collect()
        if m.name == md.MCP_REQUESTS.name
        for s in m.samples
        if s.name.endswith("_total")
    )
    assert total == 3
