# ruff: noqa: E501  (long JSON sample lines are kept whole so they can be compared with the spec)
"""Sample Copilot exchanges (copilot-traffic.md §6 plus counting variants) as plain test data.

Every token, id and hash here is fake (copied from the spec or made up in the same style).

`Exchange.expected` always has the keys of `EXPECTED_KEYS` (None where the fact does not apply):

* kind: `completion`, `next_edit`, `instant_apply`, `chat`, `chat_agent`, `chat_panel`, `chat_edits`,
  `chat_inline`, `token_exchange`, `telemetry`. A chat request's kind is `chat_<mode>` from its
  `OpenAI-Intent` (conversation-agent → chat_agent, ...); absent or other intent → `chat`.
* editor: lower-cased name part of `Editor-Version` (`vscode`, `jetbrains-iu`, `neovim`, `zed`), else
  derived from `User-Agent` (`GitHubCopilotChat/` → vscode, `copilot/` → cli), else `unknown`.
* editor_version: the raw `Editor-Version` header value, or None. plugin: raw `Editor-Plugin-Version`.
* language: lower-cased `extra.language` of completions, None where the request carries none (the
  metric label for None is `unknown`).
* model: the requested model (completions: the engine path segment); resolved_model: first non-empty
  `model` of the response, if any.
* initiator: `X-Initiator` value or None. interaction_id / request_id: header values or None.
* streamed: the response is an event stream. text / finish_reason: reconstructed answer of choice 0
  (Responses API: `completed`; Messages API: `stop_reason`).
* input_tokens / output_tokens: from the response usage, None when the response reports none. Input
  counts every input token: the Messages API's fresh + cache-read + cache-creation tokens, like OpenAI's
  prompt_tokens (which include cached ones); `cached_tokens` repeats the cached part.
* counted: whether this exchange, replayed in `ALL` order through one proxy, is a counted interaction
  (`copilot_requests_total`); skip_reason: why not, one of `SKIP_REASONS`, None when counted.

Optional extra keys: tool_calls (tuple of (name, arguments)), choices (tuple of (index, text, finish)),
cached_tokens, nano_aiu, speculative, endpoints, sku, telemetry_events, initiator_source (`retry`: the call
counts its turn as the user's although its own X-Initiator is `agent`: it retries a failed user call).

`ALL` is the IDE day (VS Code, JetBrains, Neovim, Zed, telemetry). The Copilot CLI's calls are apart: `CLI`
(HTTP exchanges, replayed in order through one proxy) and `CLI_WEBSOCKET` (the `response.create` calls of one
Responses WebSocket: `request_body` is the client frame, `response_body` the server frames as an event
stream). They carry no X-Request-Id, like the real CLI.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------------
# Types and helpers


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request/response pair as seen inside the CONNECT tunnel."""

    name: str
    method: str
    scheme: str
    host: str
    path: str
    http_version: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    status: int
    response_headers: tuple[tuple[str, str], ...]
    response_body: bytes
    expected: dict[str, Any] = field(hash=False)

    @property
    def url(self) -> str:
        """Absolute URL of the request."""
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def request_id(self) -> str | None:
        """The `X-Request-Id` header value (every sample has a unique one)."""
        return self.header("x-request-id")

    @property
    def is_event_stream(self) -> bool:
        """True when the response is `text/event-stream`."""
        return (self.response_header("content-type") or "").startswith("text/event-stream")

    def header(self, name: str) -> str | None:
        """First request header with this name, case-insensitively."""
        return _lookup(self.request_headers, name)

    def response_header(self, name: str) -> str | None:
        """First response header with this name, case-insensitively."""
        return _lookup(self.response_headers, name)

    def response_chunks(self) -> tuple[bytes, ...]:
        """The response body split as a server would send it: one SSE event per chunk, else one chunk."""
        if self.is_event_stream:
            return split_sse_events(self.response_body)
        return (self.response_body,)


@dataclass(frozen=True, slots=True)
class ConnectSample:
    """A CONNECT request a client sends to the proxy and the answer it expects (§6.10)."""

    name: str
    authority: str
    request_headers: tuple[tuple[str, str], ...]
    status: int
    reason: str
    response_headers: tuple[tuple[str, str], ...]
    expected: dict[str, Any] = field(hash=False)

    def raw_request(self) -> bytes:
        """The CONNECT request bytes as sent on the wire."""
        lines = [f"CONNECT {self.authority} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self.request_headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _lookup(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def split_sse_events(body: bytes) -> tuple[bytes, ...]:
    """Split an event-stream body into events, each keeping its trailing blank line."""
    events: list[bytes] = []
    rest = body
    while rest:
        idx = rest.find(b"\n\n")
        if idx < 0:
            events.append(rest)
            break
        events.append(rest[: idx + 2])
        rest = rest[idx + 2 :]
    return tuple(events)


def _json(value: Any) -> str:
    """Compact JSON, as the clients and the backend send it."""
    return json.dumps(value, separators=(",", ":"))


def _sse(*payloads: str) -> bytes:
    """An event stream of `data:` events, each followed by a blank line."""
    return "".join(f"data: {p}\n\n" for p in payloads).encode("utf-8")


def _sse_typed(*events: tuple[str, str]) -> bytes:
    """An event stream of `event:` + `data:` events, each followed by a blank line."""
    return "".join(f"event: {t}\ndata: {p}\n\n" for t, p in events).encode("utf-8")


EXPECTED_KEYS: tuple[str, ...] = (
    "kind",
    "editor",
    "editor_version",
    "plugin",
    "language",
    "model",
    "resolved_model",
    "initiator",
    "interaction_id",
    "request_id",
    "streamed",
    "text",
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "counted",
    "skip_reason",
)

SKIP_REASONS: tuple[str, ...] = (
    "speculative",  # x-copilot-speculative: true prefetch
    "empty_completion",  # completion stream whose choices carry no text
    "agent_step",  # chat tool-loop round (x-initiator: agent) of an already counted turn
    "turn_followup",  # a further user-initiated request of an already counted interaction id (suggestions)
    "auxiliary",  # an agent request of another intent within a counted turn (title, categorisation, ...)
    "not_interaction",  # token exchange, telemetry, ...: never an interaction
    "http_error",  # a non-2xx answer (a 429 before the retry that counts the turn)
)


def _expected(**facts: Any) -> dict[str, Any]:
    unknown = set(facts) - set(EXPECTED_KEYS) - _OPTIONAL_KEYS
    if unknown:
        raise ValueError(f"unknown expected keys: {sorted(unknown)}")
    out: dict[str, Any] = dict.fromkeys(EXPECTED_KEYS)
    out.update(facts)
    if out["counted"] is None:
        raise ValueError("expected needs counted")
    if out["counted"] == (out["skip_reason"] is not None):
        raise ValueError("skip_reason must be set exactly when not counted")
    if out["skip_reason"] is not None and out["skip_reason"] not in SKIP_REASONS:
        raise ValueError(f"unknown skip reason {out['skip_reason']}")
    return out


_OPTIONAL_KEYS = frozenset(
    {
        "tool_calls",
        "choices",
        "cached_tokens",
        "nano_aiu",
        "speculative",
        "endpoints",
        "sku",
        "telemetry_events",
        "initiator_source",
    }
)

# ---------------------------------------------------------------------------------------------------
# Shared fake credentials and identities

PROXY_USER = "alice"
PROXY_PASSWORD = "s3cr3t"

BUSINESS_TOKEN = (
    "tid=00000000000000000000000000000000;exp=1767225600;sku=copilot_for_business_seat;"
    "proxy-ep=proxy.business.githubcopilot.com;8kp=1:0000000000000000000000000000000000000000000000000000000000000000"
)
INDIVIDUAL_TOKEN = (
    "tid=11111111111111111111111111111111;exp=1767225600;sku=copilot_pro;"
    "proxy-ep=proxy.individual.githubcopilot.com:1111111111111111111111111111111111111111111111111111111111111111"
)
ZED_TOKEN = (
    "tid=22222222222222222222222222222222;exp=1767225600;"
    "sku=copilot_pro:2222222222222222222222222222222222222222222222222222222222222222"
)
GITHUB_OAUTH_TOKEN = "gho_FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE0000"

VSCODE_SESSION_ID = "6f1d2c4e-2222-4c3d-8e00-0000000000021767220000000"
VSCODE_MACHINE_ID = "1111111111111111111111111111111111111111111111111111111111111111"
LS_MACHINE_ID = "2222222222222222222222222222222222222222222222222222222222222222"

AGENT_TURN_INTERACTION_ID = "9d9d9d9d-6666-4e4e-8c8c-000000000006"

# ---------------------------------------------------------------------------------------------------
# §6.1 VS Code ghost-text completion

_VSCODE_COMPLETION_BODY = (
    rb'{"prompt":"# Path: src/util.py\ndef add(a, b):\n    ","suffix":"\n\nprint(add(1, 2))\n",'
    rb'"max_tokens":500,"temperature":0,"top_p":1,"n":1,"stop":["\n"],"stream":true,'
    rb'"extra":{"language":"python","next_indent":0,"trim_by_indentation":true,"prompt_tokens":18,'
    rb'"suffix_tokens":9},"code_annotations":false,"nwo":"octo-org/octo-repo"}'
)


def _vscode_completion_headers(request_id: str, speculative: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {BUSINESS_TOKEN}"),
        ("content-type", "application/json"),
        ("editor-version", "vscode/1.111.0"),
        ("editor-plugin-version", "copilot-chat/0.42.0"),
        ("copilot-language-server-version", "0.42.0"),
        ("openai-organization", "github-copilot"),
        ("openai-intent", "copilot-ghost"),
        ("x-request-id", request_id),
        ("vscode-sessionid", VSCODE_SESSION_ID),
        ("vscode-machineid", VSCODE_MACHINE_ID),
        ("x-github-api-version", "2025-05-01"),
        ("x-copilot-async", "true"),
        ("x-copilot-speculative", speculative),
        ("x-policy-id", "nil"),
        ("user-agent", "GitHubCopilotChat/0.42.0"),
        ("x-vscode-user-agent-library-version", "electron-fetch"),
    )


VSCODE_COMPLETION = Exchange(
    name="vscode_completion",
    method="POST",
    scheme="https",
    host="proxy.business.githubcopilot.com",
    path="/v1/engines/gpt-41-copilot/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_completion_headers("0c3a5a3e-1111-4a1b-9f00-000000000001", "false"),
    request_body=_VSCODE_COMPLETION_BODY,
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("openai-processing-ms", "41.2"),
        ("x-request-id", "0c3a5a3e-1111-4a1b-9f00-000000000001"),
        ("x-github-request-id", "ABCD:1234:5678:9ABC:00000001"),
        ("azureml-model-deployment", "d000-20260101000000"),
    ),
    response_body=_sse(
        r'{"id":"cmpl-FAKE000000000000000000001","created":1767220000,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"return a","index":0,"finish_reason":null,"logprobs":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000001","created":1767220000,"model":"gpt-41-copilot",'
        r'"choices":[{"text":" + b","index":0,"finish_reason":"stop","logprobs":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000001","created":1767220000,"model":"gpt-41-copilot",'
        r'"choices":[],"usage":{"prompt_tokens":27,"completion_tokens":4,"total_tokens":31}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="completion",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        language="python",
        model="gpt-41-copilot",
        resolved_model="gpt-41-copilot",
        request_id="0c3a5a3e-1111-4a1b-9f00-000000000001",
        streamed=True,
        text="return a + b",
        finish_reason="stop",
        input_tokens=27,
        output_tokens=4,
        speculative=False,
        choices=((0, "return a + b", "stop"),),
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.2 JetBrains (LS over HTTP/1.1) completion, two choices, one empty

JETBRAINS_COMPLETION = Exchange(
    name="jetbrains_completion",
    method="POST",
    scheme="https",
    host="proxy.individual.githubcopilot.com",
    path="/v1/engines/copilot-codex/completions",
    http_version="HTTP/1.1",
    request_headers=(
        ("Host", "proxy.individual.githubcopilot.com"),
        ("Authorization", f"Bearer {INDIVIDUAL_TOKEN}"),
        ("content-type", "application/json"),
        ("Copilot-Language-Server-Version", "1.539.0"),
        ("Editor-Plugin-Version", "copilot-intellij/1.5.60-243"),
        ("Editor-Version", "JetBrains-IU/243.22562.218"),
        ("OpenAI-Intent", "copilot-ghost"),
        ("Openai-Organization", "github-copilot"),
        ("user-agent", "GithubCopilot/1.539.0"),
        ("VScode-MachineId", LS_MACHINE_ID),
        ("VScode-SessionId", "7a7a7a7a-3333-4d4d-9e9e-0000000000031767220100000"),
        ("X-GitHub-Api-Version", "2026-01-09"),
        ("X-Request-Id", "5e5e5e5e-4444-4f4f-8a8a-000000000004"),
    ),
    request_body=(
        rb'{"prompt":"// Path: src/main/java/Greeter.java\npublic class Greeter {\n    public String '
        rb'greet(String name) {\n        ","suffix":"\n    }\n}\n","max_tokens":500,"temperature":0.2,'
        rb'"top_p":1,"n":2,"stop":["\n\n\n","\n```"],"stream":true,"extra":{"language":"java",'
        rb'"next_indent":8,"trim_by_indentation":true,"prompt_tokens":31,"suffix_tokens":5}}'
    ),
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("x-request-id", "5e5e5e5e-4444-4f4f-8a8a-000000000004"),
    ),
    response_body=_sse(
        r'{"choices":[{"text":"return \"Hello, \" + name;","index":0,"finish_reason":null}]}',
        r'{"choices":[{"text":"","index":1,"finish_reason":"stop"}]}',
        r'{"choices":[{"text":"","index":0,"finish_reason":"stop"}]}',
        "[DONE]",
    ),
    expected=_expected(
        kind="completion",
        editor="jetbrains-iu",
        editor_version="JetBrains-IU/243.22562.218",
        plugin="copilot-intellij/1.5.60-243",
        language="java",
        model="copilot-codex",
        request_id="5e5e5e5e-4444-4f4f-8a8a-000000000004",
        streamed=True,
        text='return "Hello, " + name;',
        finish_reason="stop",
        choices=((0, 'return "Hello, " + name;', "stop"), (1, "", "stop")),
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.3 / §6.4 VS Code agent mode: user turn with a tool round, then the tool-loop step


def _vscode_chat_headers(
    request_id: str,
    initiator: str,
    interaction_id: str = AGENT_TURN_INTERACTION_ID,
    intent: str = "conversation-agent",
    extra: tuple[tuple[str, str], ...] = (),
) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {BUSINESS_TOKEN}"),
        ("content-type", "application/json"),
        ("user-agent", "GitHubCopilotChat/0.42.0"),
        ("editor-version", "vscode/1.111.0"),
        ("editor-plugin-version", "copilot-chat/0.42.0"),
        ("editor-device-id", "3f3f3f3f-5555-4a4a-9b9b-000000000005"),
        ("copilot-integration-id", "vscode-chat"),
        ("openai-intent", intent),
        ("x-interaction-type", intent),
        ("x-initiator", initiator),
        ("x-interaction-id", interaction_id),
        ("x-request-id", request_id),
        ("x-agent-task-id", request_id),
        ("x-github-api-version", "2025-05-01"),
        ("vscode-sessionid", VSCODE_SESSION_ID),
        ("vscode-machineid", VSCODE_MACHINE_ID),
        ("x-vscode-user-agent-library-version", "electron-fetch"),
        *extra,
    )


_AGENT_SYSTEM = r'{"role":"system","content":"You are an expert AI programming assistant, working with a user in the VS Code editor."}'
_AGENT_USER = r'{"role":"user","content":"<userRequest>\nAdd a unit test for add() in src/util.py\n</userRequest>"}'
_READ_FILE_TOOL = (
    r'{"type":"function","function":{"name":"read_file","description":"Read the contents of a file.",'
    r'"parameters":{"type":"object","properties":{"filePath":{"type":"string"}},"required":["filePath"]}}}'
)
_AGENT_TOOL_CALL = (
    r'{"role":"assistant","content":"","tool_calls":[{"id":"call_FAKE00000000000000000001","type":"function",'
    r'"function":{"name":"read_file","arguments":"{\"filePath\":\"/w/src/util.py\"}"}}]}'
)
_AGENT_TOOL_RESULT = (
    r'{"role":"tool","tool_call_id":"call_FAKE00000000000000000001","content":"def add(a, b):\n    return a + b\n"}'
)
_CHUNK2 = r'"created":1767220100,"id":"chatcmpl-FAKE0000000000000000000002","model":"gpt-4.1-2025-04-14"'
_CHUNK3 = r'"created":1767220105,"id":"chatcmpl-FAKE0000000000000000000003","model":"gpt-4.1-2025-04-14"'
_FP = r'"system_fingerprint":"fp_fake00000"'

VSCODE_AGENT_TURN = Exchange(
    name="vscode_agent_turn",
    method="POST",
    scheme="https",
    host="api.business.githubcopilot.com",
    path="/chat/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_chat_headers("1a1a1a1a-7777-4b4b-9d9d-000000000007", "user"),
    request_body=(
        '{"messages":['
        + _AGENT_SYSTEM
        + ","
        + _AGENT_USER
        + '],"model":"gpt-4.1","temperature":0,"top_p":1,"max_tokens":16384,"n":1,"stream":true,"tools":['
        + _READ_FILE_TOOL
        + "]}"
    ).encode(),
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("x-request-id", "1a1a1a1a-7777-4b4b-9d9d-000000000007"),
        (
            "x-quota-snapshot-premium_interactions",
            "ent=300&ov=0.0&ovPerm=false&rem=87.5&rst=2026-12-01T00%3A00%3A00Z",
        ),
    ),
    response_body=_sse(
        r'{"choices":[],"created":0,"id":"","prompt_filter_results":[{"content_filter_results":{"hate":'
        r'{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":'
        r'{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"prompt_index":0}]}',
        r'{"choices":[{"index":0,"delta":{"content":null,"role":"assistant","tool_calls":[{"function":'
        r'{"arguments":"","name":"read_file"},"id":"call_FAKE00000000000000000001","index":0,"type":"function"}]}}],'
        + _CHUNK2
        + ","
        + _FP
        + "}",
        r'{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"function":{"arguments":"{\"filePath\":"},'
        r'"index":0}]}}],' + _CHUNK2 + "," + _FP + "}",
        r'{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"function":{"arguments":'
        r'"\"/w/src/util.py\"}"},"index":0}]}}],' + _CHUNK2 + "," + _FP + "}",
        r'{"choices":[{"finish_reason":"tool_calls","index":0,"delta":{"content":null}}],' + _CHUNK2 + "," + _FP + "}",
        r'{"choices":[],' + _CHUNK2 + r',"usage":{"completion_tokens":21,"completion_tokens_details":'
        r'{"accepted_prediction_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":9120,'
        r'"prompt_tokens_details":{"cached_tokens":8064},"total_tokens":9141},"copilot_usage":'
        r'{"total_nano_aiu":412000000}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="chat_agent",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        model="gpt-4.1",
        resolved_model="gpt-4.1-2025-04-14",
        initiator="user",
        interaction_id=AGENT_TURN_INTERACTION_ID,
        request_id="1a1a1a1a-7777-4b4b-9d9d-000000000007",
        streamed=True,
        text="",
        finish_reason="tool_calls",
        input_tokens=9120,
        output_tokens=21,
        cached_tokens=8064,
        nano_aiu=412000000,
        tool_calls=(("read_file", '{"filePath":"/w/src/util.py"}'),),
        counted=True,
    ),
)

VSCODE_AGENT_STEP = Exchange(
    name="vscode_agent_step",
    method="POST",
    scheme="https",
    host="api.business.githubcopilot.com",
    path="/chat/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_chat_headers("2b2b2b2b-8888-4c4c-9e9e-000000000008", "agent"),
    request_body=(
        '{"messages":['
        + ",".join((_AGENT_SYSTEM, _AGENT_USER, _AGENT_TOOL_CALL, _AGENT_TOOL_RESULT))
        + '],"model":"gpt-4.1","temperature":0,"top_p":1,"max_tokens":16384,"n":1,"stream":true,"tools":['
        + _READ_FILE_TOOL
        + "]}"
    ).encode(),
    status=200,
    response_headers=(("content-type", "text/event-stream"),),
    response_body=_sse(
        r'{"choices":[],"created":0,"id":"","prompt_filter_results":[{"content_filter_results":{},"prompt_index":0}]}',
        r'{"choices":[{"index":0,"delta":{"content":"","role":"assistant"}}],' + _CHUNK3 + "}",
        r'{"choices":[{"index":0,"delta":{"content":"Added `tests/test_util.py`","role":null}}],' + _CHUNK3 + "}",
        r'{"choices":[{"index":0,"delta":{"content":" with a test for `add()`.","role":null}}],' + _CHUNK3 + "}",
        r'{"choices":[{"finish_reason":"stop","index":0,"delta":{"content":null,"role":null}}],'
        + _CHUNK3
        + r',"usage":{"completion_tokens":14,"prompt_tokens":9190,"prompt_tokens_details":{"cached_tokens":9088},'
        r'"total_tokens":9204}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="chat_agent",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        model="gpt-4.1",
        resolved_model="gpt-4.1-2025-04-14",
        initiator="agent",
        interaction_id=AGENT_TURN_INTERACTION_ID,
        request_id="2b2b2b2b-8888-4c4c-9e9e-000000000008",
        streamed=True,
        text="Added `tests/test_util.py` with a test for `add()`.",
        finish_reason="stop",
        input_tokens=9190,
        output_tokens=14,
        cached_tokens=9088,
        counted=False,
        skip_reason="agent_step",
    ),
)

# Extra: the follow-up "suggestions" request after the turn (§8.3): same interaction id, intent
# conversation-panel, a forced showSuggestions tool, x-initiator user. Must not count a second turn.
_SUGGEST_TOOL = (
    r'{"type":"function","function":{"name":"showSuggestions","description":"Show follow-up suggestions '
    r'to the user.","parameters":{"type":"object","properties":{"suggestions":{"type":"array","items":'
    r'{"type":"string"}}},"required":["suggestions"]}}}'
)
_CHUNK_SUGG = r'"created":1767220110,"id":"chatcmpl-FAKE0000000000000000000018","model":"gpt-4.1-2025-04-14"'
_SUGGESTIONS_ARGS = r"{\"suggestions\":[\"Run the new test\",\"Add a test for negative numbers\"]}"

VSCODE_AGENT_SUGGESTIONS = Exchange(
    name="vscode_agent_suggestions",
    method="POST",
    scheme="https",
    host="api.business.githubcopilot.com",
    path="/chat/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_chat_headers("5f5f5f5f-aaaa-4f4f-8b8b-000000000018", "user", intent="conversation-panel"),
    request_body=(
        '{"messages":[{"role":"system","content":"Suggest two short follow-up requests the user might ask '
        'next."},'
        + _AGENT_USER
        + r',{"role":"assistant","content":"Added `tests/test_util.py` with a test for `add()`."}],'
        r'"model":"gpt-4.1","temperature":0,"top_p":1,"max_tokens":512,"n":1,"stream":true,"tools":['
        + _SUGGEST_TOOL
        + r'],"tool_choice":{"type":"function","function":{"name":"showSuggestions"}}}'
    ).encode(),
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("x-request-id", "5f5f5f5f-aaaa-4f4f-8b8b-000000000018"),
    ),
    response_body=_sse(
        r'{"choices":[],"created":0,"id":"","prompt_filter_results":[{"content_filter_results":{},"prompt_index":0}]}',
        r'{"choices":[{"index":0,"delta":{"content":null,"role":"assistant","tool_calls":[{"function":'
        r'{"arguments":"","name":"showSuggestions"},"id":"call_FAKE00000000000000000018","index":0,'
        r'"type":"function"}]}}],' + _CHUNK_SUGG + "}",
        r'{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"function":{"arguments":"'
        + _SUGGESTIONS_ARGS
        + r'"},"index":0}]}}],'
        + _CHUNK_SUGG
        + "}",
        r'{"choices":[{"finish_reason":"stop","index":0,"delta":{"content":null}}],'
        + _CHUNK_SUGG
        + r',"usage":{"completion_tokens":25,"prompt_tokens":1200,"total_tokens":1225}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="chat_panel",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        model="gpt-4.1",
        resolved_model="gpt-4.1-2025-04-14",
        initiator="user",
        interaction_id=AGENT_TURN_INTERACTION_ID,
        request_id="5f5f5f5f-aaaa-4f4f-8b8b-000000000018",
        streamed=True,
        text="",
        finish_reason="stop",
        input_tokens=1200,
        output_tokens=25,
        tool_calls=(("showSuggestions", '{"suggestions":["Run the new test","Add a test for negative numbers"]}'),),
        counted=False,
        skip_reason="turn_followup",
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.5 Responses API (HTTP SSE). Headers as 6.3 but its own interaction id (an independent turn).

_RESPONSES_INTERACTION_ID = "9d9d9d9d-6666-4e4e-8c8c-000000000010"
_RESP_MSG_DONE = (
    r'{"id":"msg_FAKE0001","type":"message","status":"completed","role":"assistant","content":'
    r'[{"type":"output_text","text":"It defines add(a, b).","annotations":[]}]}'
)

VSCODE_RESPONSES = Exchange(
    name="vscode_responses",
    method="POST",
    scheme="https",
    host="api.business.githubcopilot.com",
    path="/responses",
    http_version="HTTP/2.0",
    request_headers=_vscode_chat_headers(
        "4d4d4d4d-aaaa-4e4e-8a8a-000000000010", "user", interaction_id=_RESPONSES_INTERACTION_ID
    ),
    request_body=(
        rb'{"model":"gpt-5.1-codex","input":[{"role":"system","content":[{"type":"input_text","text":'
        rb'"You are an expert AI programming assistant."}]},{"role":"user","content":[{"type":"input_text",'
        rb'"text":"Explain what src/util.py does."}]}],"stream":true,"tools":[{"type":"function","name":'
        rb'"read_file","description":"Read the contents of a file.","strict":false,"parameters":{"type":'
        rb'"object","properties":{"filePath":{"type":"string"}},"required":["filePath"]}}],'
        rb'"max_output_tokens":16384,"store":false,"truncation":"disabled","reasoning":{"effort":"medium",'
        rb'"summary":"detailed"},"include":["reasoning.encrypted_content"],"prompt_cache_key":'
        rb'"9d9d9d9d-6666-4e4e-8c8c-000000000006:gpt-5.1-codex"}'
    ),
    status=200,
    response_headers=(("content-type", "text/event-stream"),),
    response_body=_sse_typed(
        (
            "response.created",
            r'{"type":"response.created","sequence_number":0,"response":{"id":"resp_FAKE0001","object":'
            r'"response","created_at":1767220200,"status":"in_progress","model":"gpt-5.1-codex","output":[]}}',
        ),
        (
            "response.output_item.added",
            r'{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":'
            r'"msg_FAKE0001","type":"message","status":"in_progress","role":"assistant","content":[]}}',
        ),
        (
            "response.output_text.delta",
            r'{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_FAKE0001",'
            r'"output_index":0,"content_index":0,"delta":"It defines "}',
        ),
        (
            "response.output_text.delta",
            r'{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_FAKE0001",'
            r'"output_index":0,"content_index":0,"delta":"add(a, b)."}',
        ),
        (
            "response.output_item.done",
            r'{"type":"response.output_item.done","sequence_number":4,"output_index":0,"item":' + _RESP_MSG_DONE + "}",
        ),
        (
            "response.completed",
            r'{"type":"response.completed","sequence_number":5,"response":{"id":"resp_FAKE0001","object":'
            r'"response","created_at":1767220200,"status":"completed","model":"gpt-5.1-codex","output":['
            + _RESP_MSG_DONE
            + r'],"usage":{"input_tokens":812,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,'
            r'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":821}},"copilot_usage":'
            r'{"total_nano_aiu":95000000}}',
        ),
    ),
    expected=_expected(
        kind="chat_agent",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        model="gpt-5.1-codex",
        resolved_model="gpt-5.1-codex",
        initiator="user",
        interaction_id=_RESPONSES_INTERACTION_ID,
        request_id="4d4d4d4d-aaaa-4e4e-8a8a-000000000010",
        streamed=True,
        text="It defines add(a, b).",
        finish_reason="completed",
        input_tokens=812,
        output_tokens=9,
        cached_tokens=0,
        nano_aiu=95000000,
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.6 Anthropic Messages with a tool call. Headers as 6.3 plus anthropic-beta; own interaction id.

_MESSAGES_INTERACTION_ID = "9d9d9d9d-6666-4e4e-8c8c-000000000011"

VSCODE_MESSAGES = Exchange(
    name="vscode_messages",
    method="POST",
    scheme="https",
    host="api.business.githubcopilot.com",
    path="/v1/messages",
    http_version="HTTP/2.0",
    request_headers=_vscode_chat_headers(
        "4d4d4d4d-aaaa-4e4e-8a8a-000000000011",
        "user",
        interaction_id=_MESSAGES_INTERACTION_ID,
        extra=(("anthropic-beta", "interleaved-thinking-2025-05-14"),),
    ),
    request_body=(
        rb'{"model":"claude-sonnet-4.5","system":[{"type":"text","text":"You are an expert AI programming '
        rb'assistant.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":'
        rb'"text","text":"Run the tests."}]}],"tools":[{"name":"run_in_terminal","description":"Run a shell '
        rb'command.","input_schema":{"type":"object","properties":{"command":{"type":"string"}},"required":'
        rb'["command"]}}],"stream":true,"max_tokens":16000}'
    ),
    status=200,
    response_headers=(("content-type", "text/event-stream"),),
    response_body=_sse_typed(
        (
            "message_start",
            r'{"type":"message_start","message":{"id":"msg_FAKE0001","type":"message","role":"assistant",'
            r'"model":"claude-sonnet-4.5","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
            r'{"input_tokens":1530,"cache_creation_input_tokens":0,"cache_read_input_tokens":11200,'
            r'"output_tokens":1}}}',
        ),
        (
            "content_block_start",
            r'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        ),
        (
            "content_block_delta",
            r'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Running the test '
            r'suite."}}',
        ),
        ("content_block_stop", r'{"type":"content_block_stop","index":0}'),
        (
            "content_block_start",
            r'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_FAKE0001",'
            r'"name":"run_in_terminal","input":{}}}',
        ),
        (
            "content_block_delta",
            r'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":'
            r'"{\"command\": \"pytest -q\"}"}}',
        ),
        ("content_block_stop", r'{"type":"content_block_stop","index":1}'),
        (
            "message_delta",
            r'{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":'
            r'{"output_tokens":48},"copilot_usage":{"total_nano_aiu":260000000}}',
        ),
        ("message_stop", r'{"type":"message_stop"}'),
    ),
    expected=_expected(
        kind="chat_agent",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        model="claude-sonnet-4.5",
        resolved_model="claude-sonnet-4.5",
        initiator="user",
        interaction_id=_MESSAGES_INTERACTION_ID,
        request_id="4d4d4d4d-aaaa-4e4e-8a8a-000000000011",
        streamed=True,
        text="Running the test suite.",
        finish_reason="tool_use",
        input_tokens=1530 + 11200,  # fresh + cache reads, like OpenAI prompt_tokens and OTel GenAI
        output_tokens=48,
        cached_tokens=11200,
        nano_aiu=260000000,
        tool_calls=(("run_in_terminal", '{"command": "pytest -q"}'),),
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.7 Next edit suggestion (PROXY /chat/completions): no Editor-Version, shares the turn's interaction id

VSCODE_NEXT_EDIT = Exchange(
    name="vscode_next_edit",
    method="POST",
    scheme="https",
    host="proxy.business.githubcopilot.com",
    path="/chat/completions",
    http_version="HTTP/2.0",
    request_headers=(
        ("authorization", f"Bearer {BUSINESS_TOKEN}"),
        ("content-type", "application/json"),
        ("user-agent", "GitHubCopilotChat/0.42.0"),
        ("openai-intent", "conversation-other"),
        ("x-interaction-type", "conversation-other"),
        ("x-initiator", "agent"),
        ("x-request-id", "3c3c3c3c-9999-4d4d-8f8f-000000000009"),
        ("x-agent-task-id", "3c3c3c3c-9999-4d4d-8f8f-000000000009"),
        ("x-interaction-id", AGENT_TURN_INTERACTION_ID),
        ("x-github-api-version", "2025-05-01"),
        ("x-vscode-user-agent-library-version", "electron-fetch"),
    ),
    request_body=(
        rb'{"messages":[{"role":"system","content":"Predict the next edit."},{"role":"user","content":'
        rb'"<|current_file_content|>\ndef add(a, b):\n    return a + b\n<|code_to_edit|>\nprint(add(1, 2))\n'
        rb'<|/code_to_edit|>"}],"model":"copilot-nes-xtab","temperature":0,"stream":true,"prediction":'
        rb'{"type":"content","content":"print(add(1, 2))\n"}}'
    ),
    status=200,
    response_headers=(("content-type", "text/event-stream"),),
    response_body=_sse(
        r'{"choices":[{"index":0,"delta":{"content":"print(add(1, 2))  # 3\n","role":"assistant"}}],'
        r'"created":1767220300,"id":"chatcmpl-FAKE0000000000000000000004","model":"copilot-nes-xtab"}',
        r'{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1767220300,"id":'
        r'"chatcmpl-FAKE0000000000000000000004","model":"copilot-nes-xtab"}',
        r'{"choices":[],"created":1767220300,"id":"chatcmpl-FAKE0000000000000000000004","model":'
        r'"copilot-nes-xtab","usage":{"completion_tokens":9,"completion_tokens_details":'
        r'{"accepted_prediction_tokens":7,"rejected_prediction_tokens":2},"prompt_tokens":640,"total_tokens":649}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="next_edit",
        editor="vscode",
        model="copilot-nes-xtab",
        resolved_model="copilot-nes-xtab",
        initiator="agent",
        interaction_id=AGENT_TURN_INTERACTION_ID,
        request_id="3c3c3c3c-9999-4d4d-8f8f-000000000009",
        streamed=True,
        text="print(add(1, 2))  # 3\n",
        finish_reason="stop",
        input_tokens=640,
        output_tokens=9,
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.8 Non-streaming chat (JSON), Zed-style client, HTTP/1.1, no OpenAI-Intent → kind chat

ZED_CHAT = Exchange(
    name="zed_chat",
    method="POST",
    scheme="https",
    host="api.individual.githubcopilot.com",
    path="/chat/completions",
    http_version="HTTP/1.1",
    request_headers=(
        ("Authorization", f"Bearer {ZED_TOKEN}"),
        ("Content-Type", "application/json"),
        ("Editor-Version", "Zed/0.205.3"),
        ("Copilot-Integration-Id", "vscode-chat"),
        ("X-Initiator", "user"),
        ("X-Request-Id", "4d4d4d4d-aaaa-4e4e-8a8a-000000000012"),
    ),
    request_body=(
        b'{"intent":true,"n":1,"stream":false,"temperature":0.1,"model":"gpt-4.1","messages":'
        b'[{"role":"user","content":"Say hi"}]}'
    ),
    status=200,
    response_headers=(("Content-Type", "application/json"),),
    response_body=(
        b'{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"Hi!","role":"assistant"}}],'
        b'"created":1767220400,"id":"chatcmpl-FAKE0000000000000000000005","model":"gpt-4.1-2025-04-14",'
        b'"usage":{"completion_tokens":3,"prompt_tokens":9,"total_tokens":12}}'
    ),
    expected=_expected(
        kind="chat",
        editor="zed",
        editor_version="Zed/0.205.3",
        model="gpt-4.1",
        resolved_model="gpt-4.1-2025-04-14",
        initiator="user",
        request_id="4d4d4d4d-aaaa-4e4e-8a8a-000000000012",
        streamed=False,
        text="Hi!",
        finish_reason="stop",
        input_tokens=9,
        output_tokens=3,
        counted=True,
    ),
)

# ---------------------------------------------------------------------------------------------------
# §6.9 Token exchange (learn hosts from it; never log the token)

TOKEN_EXCHANGE_ENDPOINTS = {
    "api": "https://api.business.githubcopilot.com",
    "origin-tracker": "https://origin-tracker.business.githubcopilot.com",
    "proxy": "https://proxy.business.githubcopilot.com",
    "telemetry": "https://telemetry.business.githubcopilot.com",
}

VSCODE_TOKEN_EXCHANGE = Exchange(
    name="vscode_token_exchange",
    method="GET",
    scheme="https",
    host="api.github.com",
    path="/copilot_internal/v2/token",
    http_version="HTTP/2.0",
    request_headers=(
        ("authorization", f"token {GITHUB_OAUTH_TOKEN}"),
        ("x-github-api-version", "2025-04-01"),
        ("user-agent", "GitHubCopilotChat/0.42.0"),
        ("x-vscode-user-agent-library-version", "electron-fetch"),
        ("x-request-id", "4d4d4d4d-aaaa-4e4e-8a8a-000000000013"),
    ),
    request_body=b"",
    status=200,
    response_headers=(("content-type", "application/json; charset=utf-8"),),
    response_body=(
        '{"token":"'
        + BUSINESS_TOKEN
        + '","expires_at":1767225600,"refresh_in":1500,"sku":"copilot_for_business_seat","individual":false,'
        '"chat_enabled":true,"telemetry":"enabled","public_suggestions":"disabled","endpoints":{"api":'
        '"https://api.business.githubcopilot.com","origin-tracker":"https://origin-tracker.business.githubcopilot.com",'
        '"proxy":"https://proxy.business.githubcopilot.com","telemetry":"https://telemetry.business.githubcopilot.com"},'
        '"organization_list":["00000000000000000000000000000000"],"limited_user_quotas":null,'
        '"limited_user_reset_date":null}'
    ).encode(),
    expected=_expected(
        kind="token_exchange",
        editor="vscode",
        request_id="4d4d4d4d-aaaa-4e4e-8a8a-000000000013",
        streamed=False,
        sku="copilot_for_business_seat",
        endpoints=TOKEN_EXCHANGE_ENDPOINTS,
        counted=False,
        skip_reason="not_interaction",
    ),
)

# ---------------------------------------------------------------------------------------------------
# Extra: a speculative completion (prefetch after the 6.1 completion was shown) — a model call, not counted

VSCODE_COMPLETION_SPECULATIVE = Exchange(
    name="vscode_completion_speculative",
    method="POST",
    scheme="https",
    host="proxy.business.githubcopilot.com",
    path="/v1/engines/gpt-41-copilot/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_completion_headers("0c3a5a3e-1111-4a1b-9f00-000000000014", "true"),
    request_body=(
        rb'{"prompt":"# Path: src/util.py\ndef add(a, b):\n    return a + b\n\n","suffix":"\nprint(add(1, 2))\n",'
        rb'"max_tokens":500,"temperature":0,"top_p":1,"n":1,"stop":["\n"],"stream":true,'
        rb'"extra":{"language":"python","next_indent":0,"trim_by_indentation":true,"prompt_tokens":24,'
        rb'"suffix_tokens":8},"code_annotations":false,"nwo":"octo-org/octo-repo"}'
    ),
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("x-request-id", "0c3a5a3e-1111-4a1b-9f00-000000000014"),
    ),
    response_body=_sse(
        r'{"id":"cmpl-FAKE000000000000000000014","created":1767220010,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"def sub(a, b):","index":0,"finish_reason":"stop","logprobs":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000014","created":1767220010,"model":"gpt-41-copilot",'
        r'"choices":[],"usage":{"prompt_tokens":33,"completion_tokens":5,"total_tokens":38}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="completion",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        language="python",
        model="gpt-41-copilot",
        resolved_model="gpt-41-copilot",
        request_id="0c3a5a3e-1111-4a1b-9f00-000000000014",
        streamed=True,
        text="def sub(a, b):",
        finish_reason="stop",
        input_tokens=33,
        output_tokens=5,
        speculative=True,
        choices=((0, "def sub(a, b):", "stop"),),
        counted=False,
        skip_reason="speculative",
    ),
)

# Extra: an empty completion (the model had nothing to add) — not a served completion

VSCODE_COMPLETION_EMPTY = Exchange(
    name="vscode_completion_empty",
    method="POST",
    scheme="https",
    host="proxy.business.githubcopilot.com",
    path="/v1/engines/gpt-41-copilot/completions",
    http_version="HTTP/2.0",
    request_headers=_vscode_completion_headers("0c3a5a3e-1111-4a1b-9f00-000000000015", "false"),
    request_body=(
        rb'{"prompt":"# Path: src/util.py\ndef add(a, b):\n    return a + b\n","suffix":"",'
        rb'"max_tokens":500,"temperature":0,"top_p":1,"n":1,"stop":["\n"],"stream":true,'
        rb'"extra":{"language":"python","next_indent":0,"trim_by_indentation":true,"prompt_tokens":22,'
        rb'"suffix_tokens":0},"code_annotations":false,"nwo":"octo-org/octo-repo"}'
    ),
    status=200,
    response_headers=(
        ("content-type", "text/event-stream"),
        ("x-request-id", "0c3a5a3e-1111-4a1b-9f00-000000000015"),
    ),
    response_body=_sse(
        r'{"id":"cmpl-FAKE000000000000000000015","created":1767220020,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"","index":0,"finish_reason":null,"logprobs":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000015","created":1767220020,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"","index":0,"finish_reason":"stop","logprobs":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000015","created":1767220020,"model":"gpt-41-copilot",'
        r'"choices":[],"usage":{"prompt_tokens":26,"completion_tokens":0,"total_tokens":26}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="completion",
        editor="vscode",
        editor_version="vscode/1.111.0",
        plugin="copilot-chat/0.42.0",
        language="python",
        model="gpt-41-copilot",
        resolved_model="gpt-41-copilot",
        request_id="0c3a5a3e-1111-4a1b-9f00-000000000015",
        streamed=True,
        text="",
        finish_reason="stop",
        input_tokens=26,
        output_tokens=0,
        speculative=False,
        choices=((0, "", "stop"),),
        counted=False,
        skip_reason="empty_completion",
    ),
)

# Extra: Neovim (copilot.vim via the language server, HTTP/1.1) completion in Lua

NEOVIM_COMPLETION = Exchange(
    name="neovim_completion",
    method="POST",
    scheme="https",
    host="proxy.individual.githubcopilot.com",
    path="/v1/engines/gpt-41-copilot/completions",
    http_version="HTTP/1.1",
    request_headers=(
        ("Host", "proxy.individual.githubcopilot.com"),
        ("Authorization", f"Bearer {INDIVIDUAL_TOKEN}"),
        ("Content-Type", "application/json"),
        ("Copilot-Language-Server-Version", "1.539.0"),
        ("Editor-Plugin-Version", "copilot.vim/1.50.0"),
        ("Editor-Version", "Neovim/0.11.2"),
        ("OpenAI-Intent", "copilot-ghost"),
        ("Openai-Organization", "github-copilot"),
        ("User-Agent", "GithubCopilot/1.539.0"),
        ("VScode-MachineId", "3333333333333333333333333333333333333333333333333333333333333333"),
        ("VScode-SessionId", "8b8b8b8b-4444-4e4e-9f9f-0000000000161767220500000"),
        ("X-Copilot-Async", "true"),
        ("X-Copilot-Speculative", "false"),
        ("X-GitHub-Api-Version", "2026-01-09"),
        ("X-Request-Id", "6a6a6a6a-bbbb-4a4a-8c8c-000000000016"),
    ),
    request_body=(
        rb'{"prompt":"-- Path: lua/config/keymaps.lua\nlocal opts = { silent = true }\n","suffix":"",'
        rb'"max_tokens":500,"temperature":0,"top_p":1,"n":1,"stop":["\n"],"stream":true,"extra":'
        rb'{"language":"lua","next_indent":0,"trim_by_indentation":true,"prompt_tokens":16,"suffix_tokens":0}}'
    ),
    status=200,
    response_headers=(
        ("Content-Type", "text/event-stream"),
        ("X-Request-Id", "6a6a6a6a-bbbb-4a4a-8c8c-000000000016"),
    ),
    response_body=_sse(
        r'{"id":"cmpl-FAKE000000000000000000016","created":1767220500,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"vim.keymap.set(\"n\", \"<leader>w\", ","index":0,"finish_reason":null}]}',
        r'{"id":"cmpl-FAKE000000000000000000016","created":1767220500,"model":"gpt-41-copilot",'
        r'"choices":[{"text":"\"<cmd>write<cr>\", opts)","index":0,"finish_reason":"stop"}]}',
        r'{"id":"cmpl-FAKE000000000000000000016","created":1767220500,"model":"gpt-41-copilot",'
        r'"choices":[],"usage":{"prompt_tokens":21,"completion_tokens":14,"total_tokens":35}}',
        "[DONE]",
    ),
    expected=_expected(
        kind="completion",
        editor="neovim",
        editor_version="Neovim/0.11.2",
        plugin="copilot.vim/1.50.0",
        language="lua",
        model="gpt-41-copilot",
        resolved_model="gpt-41-copilot",
        request_id="6a6a6a6a-bbbb-4a4a-8c8c-000000000016",
        streamed=True,
        text='vim.keymap.set("n", "<leader>w", "<cmd>write<cr>", opts)',
        finish_reason="stop",
        input_tokens=21,
        output_tokens=14,
        speculative=False,
        choices=((0, 'vim.keymap.set("n", "<leader>w", "<cmd>write<cr>", opts)', "stop"),),
        counted=True,
    ),
)

# Extra: telemetry (Application Insights envelopes, one JSON object per line; no editor headers)


def _telemetry_envelope(event: str, time: str, props: str, measurements: str) -> str:
    return (
        r'{"name":"Microsoft.ApplicationInsights.Event","time":"' + time + r'","iKey":'
        r'"00000000-0000-0000-0000-000000000000","tags":{"ai.session.id":'
        r'"8b8b8b8b-4444-4e4e-9f9f-0000000000161767220500000","ai.device.osVersion":"Linux 6.8.0",'
        r'"ai.cloud.roleInstance":"REDACTED"},"data":{"baseType":"EventData","baseData":{"ver":2,"name":"'
        + event
        + r'","properties":'
        + props
        + r',"measurements":'
        + measurements
        + "}}}"
    )


_TELEMETRY_PROPS = (
    r'{"headerRequestId":"6a6a6a6a-bbbb-4a4a-8c8c-000000000016","languageId":"lua",'
    r'"copilot_build":"1.539.0","choiceIndex":"0"}'
)

TELEMETRY = Exchange(
    name="telemetry",
    method="POST",
    scheme="https",
    host="copilot-telemetry.githubusercontent.com",
    path="/telemetry",
    http_version="HTTP/1.1",
    request_headers=(
        ("Host", "copilot-telemetry.githubusercontent.com"),
        ("Content-Type", "application/x-json-stream"),
        ("User-Agent", "GithubCopilot/1.539.0"),
        ("X-Request-Id", "6a6a6a6a-bbbb-4a4a-8c8c-000000000017"),
    ),
    request_body=(
        _telemetry_envelope(
            "agent/ghostText.shown",
            "2026-01-01T00:08:20.512Z",
            _TELEMETRY_PROPS,
            r'{"compCharLen":56,"numLines":1}',
        )
        + "\n"
        + _telemetry_envelope(
            "agent/ghostText.accepted",
            "2026-01-01T00:08:21.730Z",
            _TELEMETRY_PROPS,
            r'{"compCharLen":56,"numLines":1,"timeToAccept":1218}',
        )
    ).encode(),
    status=200,
    response_headers=(("Content-Type", "application/json; charset=utf-8"),),
    response_body=b'{"itemsReceived":2,"itemsAccepted":2,"appId":null,"errors":[]}',
    expected=_expected(
        kind="telemetry",
        editor="unknown",
        request_id="6a6a6a6a-bbbb-4a4a-8c8c-000000000017",
        streamed=False,
        telemetry_events=("agent/ghostText.shown", "agent/ghostText.accepted"),
        counted=False,
        skip_reason="not_interaction",
    ),
)

# ---------------------------------------------------------------------------------------------------
# Collections. Order matters for `counted`: VSCODE_AGENT_TURN precedes the step and the suggestions.

ALL: tuple[Exchange, ...] = (
    VSCODE_COMPLETION,
    JETBRAINS_COMPLETION,
    VSCODE_AGENT_TURN,
    VSCODE_AGENT_STEP,
    VSCODE_AGENT_SUGGESTIONS,
    VSCODE_RESPONSES,
    VSCODE_MESSAGES,
    VSCODE_NEXT_EDIT,
    ZED_CHAT,
    VSCODE_TOKEN_EXCHANGE,
    VSCODE_COMPLETION_SPECULATIVE,
    VSCODE_COMPLETION_EMPTY,
    NEOVIM_COMPLETION,
    TELEMETRY,
)

BY_NAME: dict[str, Exchange] = {e.name: e for e in ALL}

# ---------------------------------------------------------------------------------------------------
# The Copilot CLI 1.0.102 (copilot-cli.md): its four transports, tool rounds, a 429 and its retry, and a
# Responses WebSocket carrying two prompts. The CLI sends no X-Request-Id; `X-Interaction-Id` and
# `X-Agent-Task-Id` are per prompt, shared by its tool rounds and retries, which carry `X-Initiator: agent`
# and `X-Interaction-Type: conversation-agent`. Not in `ALL` (whose replay fixes the VS Code day's totals):
# `CLI` holds the HTTP exchanges in replay order, `CLI_WEBSOCKET` the calls of one socket.

CLI_VERSION = "1.0.102"
CLI_USER_AGENT = f"copilot/{CLI_VERSION} (linux v24.20.0) term/unknown client/github/cli"
CLI_SESSION_ID = "3b2792ba-b1ba-456c-a8c2-53b9292c4d09"
_CLI_MACHINE_ID = "cfc33fdf-1be2-473c-a48c-52bceb9e5967"
_CLI_HOST = "api.business.githubcopilot.com"


def _cli_prompt_ids(n: int) -> tuple[str, str]:
    """(X-Interaction-Id, X-Agent-Task-Id) of the CLI sample prompt number n: two UUIDs per prompt."""
    return f"a48bb029-2d3a-4cb0-bb88-{n:012d}", f"5662574f-248a-4961-b99f-{n:012d}"


def _cli_headers(prompt: int, initiator: str, transport: str) -> tuple[tuple[str, str], ...]:
    """A CLI model call's headers in the CLI's order; `transport` is responses, chat or messages."""
    interaction_id, task_id = _cli_prompt_ids(prompt)
    mode = "conversation-user" if initiator == "user" else "conversation-agent"
    messages = transport == "messages"
    return (
        ("accept", "*/*" if messages else "application/json"),
        ("copilot-integration-id", "copilot-developer-cli"),
        ("x-github-repository-host", "__no_repository__"),
        ("x-agent-task-id", task_id),
        ("x-client-machine-id", _CLI_MACHINE_ID),
        ("editor-version", f"copilot/{CLI_VERSION}"),
        ("x-interaction-id", interaction_id),
        ("content-type", "application/json"),
        *((("anthropic-version", "2023-06-01"),) if messages else (("openai-intent", "conversation-agent"),)),
        ("x-stainless-helper-method", "stream"),
        ("authorization", f"Bearer {GITHUB_OAUTH_TOKEN}"),
        ("x-github-api-version", "2026-08-01"),
        ("x-client-session-id", CLI_SESSION_ID),
        ("user-agent", CLI_USER_AGENT),
        ("x-github-repository-nwo", "__no_repository__"),
        ("x-interaction-type", mode),
        ("x-initiator", initiator),
        ("copilot-harness-id", "copilot-sdk"),
        ("accept-encoding", "zstd,gzip,deflate,br"),
    )


def _copilot_usage(model: str, nano_aiu: int, input_tokens: int, output_tokens: int) -> str:
    """The CLI's `copilot_usage` object (session-event schema AssistantUsageCopilotUsage)."""
    return _json(
        {
            "model": model,
            "total_nano_aiu": nano_aiu,
            "token_details": [
                {
                    "batch_size": 1000,
                    "cost_per_batch": 1,
                    "model": model,
                    "token_count": input_tokens,
                    "token_type": "input",
                },
                {
                    "batch_size": 1000,
                    "cost_per_batch": 8,
                    "model": model,
                    "token_count": output_tokens,
                    "token_type": "output",
                },
            ],
        }
    )


_CLI_TOOLS_RESPONSES = (
    r'[{"type":"function","name":"bash","description":"Run a Bash command.","strict":false,"parameters":{"type":'
    r'"object","properties":{"command":{"type":"string"}},"required":["command"]}},{"type":"function","name":'
    r'"view","description":"View a file.","strict":false,"parameters":{"type":"object","properties":{"path":'
    r'{"type":"string"}},"required":["path"]}}]'
)
_CLI_INSTRUCTIONS = "You are the GitHub Copilot CLI, a terminal assistant built by GitHub."


def _cli_responses_body(prompt_text: str, extra_input: str = "") -> bytes:
    user = r'{"role":"user","content":[{"type":"input_text","text":"' + prompt_text + r'"}]}'
    return (
        r'{"include":["reasoning.encrypted_content"],"input":['
        + user
        + extra_input
        + r'],"instructions":"'
        + _CLI_INSTRUCTIONS
        + r'","model":"gpt-5.1-codex","parallel_tool_calls":true,"reasoning":{"effort":"medium","summary":"auto"},'
        r'"store":false,"stream":true,"tools":' + _CLI_TOOLS_RESPONSES + "}"
    ).encode()


def _responses_stream(
    resp_id: str, model: str, output: str, deltas: tuple[tuple[str, str], ...], usage: tuple[int, int, int], nano: int
) -> bytes:
    """A Responses API stream: created, the given (event, data) deltas, completed with usage + copilot_usage."""
    inp, cached, out = usage
    return _sse_typed(
        (
            "response.created",
            r'{"type":"response.created","sequence_number":0,"response":{"id":"' + resp_id + r'","object":"response",'
            r'"created_at":1767221000,"status":"in_progress","model":"' + model + r'","output":[]}}',
        ),
        *deltas,
        (
            "response.completed",
            r'{"type":"response.completed","sequence_number":9,"response":{"id":"' + resp_id + r'","object":"response",'
            r'"created_at":1767221000,"status":"completed","model":"' + model + r'","output":[' + output + r'],"usage":'
            r'{"input_tokens":' + str(inp) + r',"input_tokens_details":{"cached_tokens":' + str(cached) + r"},"
            r'"output_tokens":'
            + str(out)
            + r',"output_tokens_details":{"reasoning_tokens":0},"total_tokens":'
            + str(inp + out)
            + r'}},"copilot_usage":'
            + _copilot_usage(model, nano, inp, out)
            + "}",
        ),
    )


def _responses_tool_stream(
    resp_id: str, call_id: str, tool: str, arguments: str, usage: tuple[int, int, int], nano: int
) -> bytes:
    item = (
        r'{"id":"fc_'
        + resp_id[5:]
        + r'","type":"function_call","status":"completed","call_id":"'
        + call_id
        + r'","name":"'
        + tool
        + r'","arguments":'
        + _json(arguments)
        + "}"
    )
    added = (
        r'{"id":"fc_'
        + resp_id[5:]
        + r'","type":"function_call","status":"in_progress","call_id":"'
        + call_id
        + r'","name":"'
        + tool
        + r'","arguments":""}'
    )
    return _responses_stream(
        resp_id,
        "gpt-5.1-codex",
        item,
        (
            (
                "response.output_item.added",
                r'{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":' + added + "}",
            ),
            (
                "response.function_call_arguments.delta",
                r'{"type":"response.function_call_arguments.delta","sequence_number":2,"item_id":"fc_'
                + resp_id[5:]
                + r'","output_index":0,"delta":'
                + _json(arguments)
                + "}",
            ),
            (
                "response.output_item.done",
                r'{"type":"response.output_item.done","sequence_number":3,"output_index":0,"item":' + item + "}",
            ),
        ),
        usage,
        nano,
    )


def _responses_text_stream(resp_id: str, text: str, usage: tuple[int, int, int], nano: int) -> bytes:
    msg_id = "msg_" + resp_id[5:]
    done = (
        r'{"id":"' + msg_id + r'","type":"message","status":"completed","role":"assistant","content":[{"type":'
        r'"output_text","text":' + _json(text) + r',"annotations":[]}]}'
    )
    return _responses_stream(
        resp_id,
        "gpt-5.1-codex",
        done,
        (
            (
                "response.output_item.added",
                r'{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"'
                + msg_id
                + r'","type":"message","status":"in_progress","role":"assistant","content":[]}}',
            ),
            (
                "response.output_text.delta",
                r'{"type":"response.output_text.delta","sequence_number":2,"item_id":"'
                + msg_id
                + r'","output_index":0,"content_index":0,"delta":'
                + _json(text)
                + "}",
            ),
            (
                "response.output_item.done",
                r'{"type":"response.output_item.done","sequence_number":3,"output_index":0,"item":' + done + "}",
            ),
        ),
        usage,
        nano,
    )


def _cli_exchange(
    name: str, path: str, prompt: int, initiator: str, body: bytes, status: int, response: bytes, **expected: Any
) -> Exchange:
    interaction_id, _ = _cli_prompt_ids(prompt)
    transport = {"/responses": "responses", "/chat/completions": "chat", "/v1/messages": "messages"}[path]
    ok = status == 200
    return Exchange(
        name=name,
        method="POST",
        scheme="https",
        host=_CLI_HOST,
        path=path,
        http_version="HTTP/1.1",
        request_headers=_cli_headers(prompt, initiator, transport),
        request_body=body,
        status=status,
        response_headers=(
            (("content-type", "text/event-stream"), ("x-github-request-id", f"CL1:0000:{prompt:04d}:{len(name):04d}"))
            if ok
            else (("content-type", "application/json"), ("retry-after", "1"))
        ),
        response_body=response,
        expected=_expected(
            kind="chat_agent",
            editor="cli",
            editor_version=f"copilot/{CLI_VERSION}",
            initiator=initiator,
            interaction_id=interaction_id,
            streamed=ok,
            **expected,
        ),
    )


_RATE_LIMITED_BODY = (
    b'{"error":{"message":"Sorry, you have been rate-limited. Please wait a moment before trying again.",'
    b'"code":"rate_limited"}}'
)

# Prompt 1, /responses: the model asks for `bash`, the CLI runs it and sends one tool round.
_P1_BODY = _cli_responses_body("List the Python files here.")
CLI_RESPONSES_PROMPT = _cli_exchange(
    "cli_responses_prompt",
    "/responses",
    1,
    "user",
    _P1_BODY,
    200,
    _responses_tool_stream("resp_CLI00001", "call_CLI00001", "bash", '{"command":"ls *.py"}', (4210, 0, 35), 180000000),
    model="gpt-5.1-codex",
    resolved_model="gpt-5.1-codex",
    text="",
    finish_reason="completed",
    input_tokens=4210,
    output_tokens=35,
    cached_tokens=0,
    nano_aiu=180000000,
    tool_calls=(("bash", '{"command":"ls *.py"}'),),
    counted=True,
)
_P1_ROUND_INPUT = (
    r',{"type":"function_call","call_id":"call_CLI00001","name":"bash","arguments":"{\"command\":\"ls *.py\"}"},'
    r'{"type":"function_call_output","call_id":"call_CLI00001","output":"setup.py\nutil.py\n"}'
)
CLI_RESPONSES_TOOL_ROUND = _cli_exchange(
    "cli_responses_tool_round",
    "/responses",
    1,
    "agent",
    _cli_responses_body("List the Python files here.", _P1_ROUND_INPUT),
    200,
    _responses_text_stream("resp_CLI00002", "Two: setup.py and util.py.", (4290, 4096, 11), 60000000),
    model="gpt-5.1-codex",
    resolved_model="gpt-5.1-codex",
    text="Two: setup.py and util.py.",
    finish_reason="completed",
    input_tokens=4290,
    output_tokens=11,
    cached_tokens=4096,
    nano_aiu=60000000,
    counted=False,
    skip_reason="agent_step",
)

# Prompt 2, /responses: the first call meets a 429; the CLI waits Retry-After and resends it as `agent`.
_P2_BODY = _cli_responses_body("What does util.py do?")
CLI_RESPONSES_RATE_LIMITED = _cli_exchange(
    "cli_responses_rate_limited",
    "/responses",
    2,
    "user",
    _P2_BODY,
    429,
    _RATE_LIMITED_BODY,
    model="gpt-5.1-codex",
    counted=False,
    skip_reason="http_error",
)
CLI_RESPONSES_RETRY = _cli_exchange(
    "cli_responses_retry",
    "/responses",
    2,
    "agent",
    _P2_BODY,
    200,
    _responses_text_stream("resp_CLI00003", "It adds two numbers.", (3980, 0, 7), 55000000),
    model="gpt-5.1-codex",
    resolved_model="gpt-5.1-codex",
    text="It adds two numbers.",
    finish_reason="completed",
    input_tokens=3980,
    output_tokens=7,
    cached_tokens=0,
    nano_aiu=55000000,
    initiator_source="retry",
    counted=True,
)

# Prompt 3, /chat/completions: a `view` tool call, then the round that answers.
_CLI_CHAT_TOOLS = (
    r'[{"type":"function","function":{"name":"view","description":"View a file.","parameters":{"type":"object",'
    r'"properties":{"path":{"type":"string"}},"required":["path"]}}}]'
)
_CLI_CHAT_SYSTEM = r'{"role":"system","content":"' + _CLI_INSTRUCTIONS + r'"}'
_CLI_CHAT_USER = r'{"role":"user","content":"Show me the README title."}'


def _cli_chat_body(*messages: str) -> bytes:
    return (
        r'{"messages":[' + ",".join((_CLI_CHAT_SYSTEM, _CLI_CHAT_USER, *messages)) + r'],"model":"gpt-4.1",'
        r'"reasoning_effort":"medium","snippy":{"enabled":false},"stream":true,"stream_options":{"include_usage":true},'
        r'"temperature":0,"tool_choice":"auto","tools":' + _CLI_CHAT_TOOLS + "}"
    ).encode()


def _chat_chunk(chunk_id: str, choices: str, extra: str = "") -> str:
    return (
        r'{"choices":'
        + choices
        + r',"created":1767221100,"id":"'
        + chunk_id
        + r'","model":"gpt-4.1-2025-04-14"'
        + extra
        + "}"
    )


def _chat_usage(chunk_id: str, inp: int, out: int, nano: int) -> str:
    usage = (
        r',"usage":{"completion_tokens":'
        + str(out)
        + r',"prompt_tokens":'
        + str(inp)
        + r',"total_tokens":'
        + str(inp + out)
        + "}"
    )
    return _chat_chunk(chunk_id, "[]", usage + r',"copilot_usage":' + _copilot_usage("gpt-4.1", nano, inp, out))


CLI_CHAT_PROMPT = _cli_exchange(
    "cli_chat_prompt",
    "/chat/completions",
    3,
    "user",
    _cli_chat_body(),
    200,
    _sse(
        _chat_chunk(
            "chatcmpl-CLI0003",
            r'[{"index":0,"delta":{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"","name":"view"},"id":"call_CLI00003","index":0,"type":"function"}]}}]',
        ),
        _chat_chunk(
            "chatcmpl-CLI0003",
            r'[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{\"path\":\"README.md\"}"},"index":0}]}}]',
        ),
        _chat_chunk("chatcmpl-CLI0003", r'[{"finish_reason":"tool_calls","index":0,"delta":{}}]'),
        _chat_usage("chatcmpl-CLI0003", 2950, 18, 150000000),
        "[DONE]",
    ),
    model="gpt-4.1",
    resolved_model="gpt-4.1-2025-04-14",
    text="",
    finish_reason="tool_calls",
    input_tokens=2950,
    output_tokens=18,
    nano_aiu=150000000,
    tool_calls=(("view", '{"path":"README.md"}'),),
    counted=True,
)
CLI_CHAT_TOOL_ROUND = _cli_exchange(
    "cli_chat_tool_round",
    "/chat/completions",
    3,
    "agent",
    _cli_chat_body(
        r'{"role":"assistant","content":null,"tool_calls":[{"id":"call_CLI00003","type":"function","function":{"name":"view","arguments":"{\"path\":\"README.md\"}"}}]}',
        r'{"role":"tool","tool_call_id":"call_CLI00003","content":"# Copilot Proxy Insight\n"}',
    ),
    200,
    _sse(
        _chat_chunk(
            "chatcmpl-CLI0004",
            r'[{"index":0,"delta":{"content":"The title is \"Copilot Proxy Insight\".","role":"assistant"}}]',
        ),
        _chat_chunk("chatcmpl-CLI0004", r'[{"finish_reason":"stop","index":0,"delta":{}}]'),
        _chat_usage("chatcmpl-CLI0004", 3010, 9, 90000000),
        "[DONE]",
    ),
    model="gpt-4.1",
    resolved_model="gpt-4.1-2025-04-14",
    text='The title is "Copilot Proxy Insight".',
    finish_reason="stop",
    input_tokens=3010,
    output_tokens=9,
    nano_aiu=90000000,
    counted=False,
    skip_reason="agent_step",
)

# Prompts 4 and 5, /v1/messages: no OpenAI-Intent; X-Interaction-Type conversation-user, then -agent.
_CLI_MESSAGES_TOOLS = (
    r'[{"name":"bash","description":"Run a Bash command.","input_schema":{"type":"object","properties":{"command":'
    r'{"type":"string"}},"required":["command"]}}]'
)


def _cli_messages_body(prompt_text: str, *messages: str) -> bytes:
    user = r'{"role":"user","content":[{"type":"text","text":"' + prompt_text + r'"}]}'
    return (
        r'{"max_tokens":32000,"messages":[' + ",".join((user, *messages)) + r'],"model":"claude-sonnet-4.5",'
        r'"output_config":{"effort":"medium"},"stream":true,"system":[{"type":"text","text":"'
        + _CLI_INSTRUCTIONS
        + r'","cache_control":{"type":"ephemeral"}}],"temperature":1,"thinking":{"type":"enabled","budget_tokens":4000},'
        r'"tools":' + _CLI_MESSAGES_TOOLS + "}"
    ).encode()


def _messages_stream(
    msg_id: str, blocks: tuple[tuple[str, str], ...], stop: str, usage: tuple[int, int, int], nano: int
) -> bytes:
    """An Anthropic stream: message_start (fresh + cache-read input), the blocks, message_delta with copilot_usage."""
    fresh, cache_read, out = usage
    return _sse_typed(
        (
            "message_start",
            r'{"type":"message_start","message":{"id":"' + msg_id + r'","type":"message","role":"assistant","model":'
            r'"claude-sonnet-4.5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":'
            + str(fresh)
            + r',"cache_creation_input_tokens":0,"cache_read_input_tokens":'
            + str(cache_read)
            + r',"output_tokens":1}}}',
        ),
        *blocks,
        (
            "message_delta",
            r'{"type":"message_delta","delta":{"stop_reason":"'
            + stop
            + r'","stop_sequence":null},"usage":{"output_tokens":'
            + str(out)
            + r'},"copilot_usage":'
            + _copilot_usage("claude-sonnet-4.5", nano, fresh + cache_read, out)
            + "}",
        ),
        ("message_stop", r'{"type":"message_stop"}'),
    )


def _text_block(index: int, text: str) -> tuple[tuple[str, str], ...]:
    return (
        (
            "content_block_start",
            r'{"type":"content_block_start","index":' + str(index) + r',"content_block":{"type":"text","text":""}}',
        ),
        (
            "content_block_delta",
            r'{"type":"content_block_delta","index":'
            + str(index)
            + r',"delta":{"type":"text_delta","text":'
            + _json(text)
            + "}}",
        ),
        ("content_block_stop", r'{"type":"content_block_stop","index":' + str(index) + "}"),
    )


_P4_TOOL_USE = r'{"type":"tool_use","id":"toolu_CLI00004","name":"bash","input":{"command":"pytest -q"}}'
CLI_MESSAGES_PROMPT = _cli_exchange(
    "cli_messages_prompt",
    "/v1/messages",
    4,
    "user",
    _cli_messages_body("Run the tests."),
    200,
    _messages_stream(
        "msg_CLI00004",
        (
            *_text_block(0, "Running the tests."),
            (
                "content_block_start",
                r'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_CLI00004","name":"bash","input":{}}}',
            ),
            (
                "content_block_delta",
                r'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"command\":\"pytest -q\"}"}}',
            ),
            ("content_block_stop", r'{"type":"content_block_stop","index":1}'),
        ),
        "tool_use",
        (1200, 9800, 40),
        240000000,
    ),
    model="claude-sonnet-4.5",
    resolved_model="claude-sonnet-4.5",
    text="Running the tests.",
    finish_reason="tool_use",
    input_tokens=1200 + 9800,
    output_tokens=40,
    cached_tokens=9800,
    nano_aiu=240000000,
    tool_calls=(("bash", '{"command":"pytest -q"}'),),
    counted=True,
)
CLI_MESSAGES_TOOL_ROUND = _cli_exchange(
    "cli_messages_tool_round",
    "/v1/messages",
    4,
    "agent",
    _cli_messages_body(
        "Run the tests.",
        r'{"role":"assistant","content":[{"type":"text","text":"Running the tests."},' + _P4_TOOL_USE + "]}",
        r'{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_CLI00004","content":"3 passed in 0.12s"}]}',
    ),
    200,
    _messages_stream("msg_CLI00005", _text_block(0, "All 3 tests pass."), "end_turn", (150, 11000, 8), 70000000),
    model="claude-sonnet-4.5",
    resolved_model="claude-sonnet-4.5",
    text="All 3 tests pass.",
    finish_reason="end_turn",
    input_tokens=150 + 11000,
    output_tokens=8,
    cached_tokens=11000,
    nano_aiu=70000000,
    counted=False,
    skip_reason="agent_step",
)
_P5_BODY = _cli_messages_body("Summarise the last commit.")
CLI_MESSAGES_RATE_LIMITED = _cli_exchange(
    "cli_messages_rate_limited",
    "/v1/messages",
    5,
    "user",
    _P5_BODY,
    429,
    _RATE_LIMITED_BODY,
    model="claude-sonnet-4.5",
    counted=False,
    skip_reason="http_error",
)
CLI_MESSAGES_RETRY = _cli_exchange(
    "cli_messages_retry",
    "/v1/messages",
    5,
    "agent",
    _P5_BODY,
    200,
    _messages_stream(
        "msg_CLI00006", _text_block(0, "It adds the CLI samples."), "end_turn", (900, 8000, 12), 110000000
    ),
    model="claude-sonnet-4.5",
    resolved_model="claude-sonnet-4.5",
    text="It adds the CLI samples.",
    finish_reason="end_turn",
    input_tokens=900 + 8000,
    output_tokens=12,
    cached_tokens=8000,
    nano_aiu=110000000,
    initiator_source="retry",
    counted=True,
)

# Prompts 6 and 7: one Responses WebSocket (`GET /responses` + Upgrade, the first call's headers) carrying both.
# Each call is a `response.create` frame whose own `headers` name its prompt; the server answers with one
# Responses event per text frame (`response_body` holds them as an event stream, one event per frame).


def _cli_ws_frame(prompt: int, initiator: str, input_items: str, previous: str | None = None) -> bytes:
    interaction_id, task_id = _cli_prompt_ids(prompt)
    headers = {
        "X-Interaction-Id": interaction_id,
        "X-Agent-Task-Id": task_id,
        "X-Client-Session-Id": CLI_SESSION_ID,
        "Copilot-Harness-Id": "copilot-sdk",
    }
    if initiator == "user":
        headers["X-Interaction-Type"] = "conversation-user"
    frame = (
        r'{"type":"response.create","agent_task_id":"'
        + task_id
        + r'","headers":'
        + _json(headers)
        + r',"include":["reasoning.encrypted_content"],"initiator":"'
        + initiator
        + r'","input":['
        + input_items
        + r'],"instructions":"'
        + _CLI_INSTRUCTIONS
        + r'","model":"gpt-5.1-codex","parallel_tool_calls":true,'
        + (r'"previous_response_id":"' + previous + r'",' if previous else "")
        + r'"reasoning":{"effort":"medium","summary":"auto"},"store":false,"tools":'
        + _CLI_TOOLS_RESPONSES
        + "}"
    )
    return frame.encode()


def _cli_ws_call(name: str, prompt: int, initiator: str, frame: bytes, response: bytes, **expected: Any) -> Exchange:
    interaction_id, _ = _cli_prompt_ids(prompt)
    return Exchange(
        name=name,
        method="GET",
        scheme="https",
        host=_CLI_HOST,
        path="/responses",
        http_version="HTTP/1.1",
        request_headers=(("upgrade", "websocket"), ("connection", "Upgrade"), *_cli_headers(6, "user", "responses")),
        request_body=frame,
        status=101,
        response_headers=(("upgrade", "websocket"), ("connection", "Upgrade")),
        response_body=response,
        expected=_expected(
            kind="chat_ws",
            editor="cli",
            editor_version=f"copilot/{CLI_VERSION}",
            model="gpt-5.1-codex",
            resolved_model="gpt-5.1-codex",
            initiator=initiator,
            interaction_id=interaction_id,
            streamed=True,
            finish_reason="completed",
            **expected,
        ),
    )


_P6_USER = r'{"role":"user","content":[{"type":"input_text","text":"Which branch am I on?"}]}'
CLI_WS_PROMPT = _cli_ws_call(
    "cli_ws_prompt",
    6,
    "user",
    _cli_ws_frame(6, "user", _P6_USER),
    _responses_tool_stream(
        "resp_CLI00007", "call_CLI00007", "bash", '{"command":"git branch --show-current"}', (4100, 0, 30), 170000000
    ),
    text="",
    input_tokens=4100,
    output_tokens=30,
    cached_tokens=0,
    nano_aiu=170000000,
    tool_calls=(("bash", '{"command":"git branch --show-current"}'),),
    counted=True,
)
CLI_WS_TOOL_ROUND = _cli_ws_call(
    "cli_ws_tool_round",
    6,
    "agent",
    _cli_ws_frame(
        6, "agent", r'{"type":"function_call_output","call_id":"call_CLI00007","output":"cli\n"}', "resp_CLI00007"
    ),
    _responses_text_stream("resp_CLI00008", "You are on branch cli.", (4160, 4096, 8), 50000000),
    text="You are on branch cli.",
    input_tokens=4160,
    output_tokens=8,
    cached_tokens=4096,
    nano_aiu=50000000,
    counted=False,
    skip_reason="agent_step",
)
CLI_WS_SECOND_PROMPT = _cli_ws_call(
    "cli_ws_second_prompt",
    7,
    "user",
    _cli_ws_frame(7, "user", r'{"role":"user","content":[{"type":"input_text","text":"And the last tag?"}]}'),
    _responses_text_stream("resp_CLI00009", "The last tag is v0.9.0.", (4230, 4096, 10), 52000000),
    text="The last tag is v0.9.0.",
    input_tokens=4230,
    output_tokens=10,
    cached_tokens=4096,
    nano_aiu=52000000,
    counted=True,
)

CLI: tuple[Exchange, ...] = (
    CLI_RESPONSES_PROMPT,
    CLI_RESPONSES_TOOL_ROUND,
    CLI_RESPONSES_RATE_LIMITED,
    CLI_RESPONSES_RETRY,
    CLI_CHAT_PROMPT,
    CLI_CHAT_TOOL_ROUND,
    CLI_MESSAGES_PROMPT,
    CLI_MESSAGES_TOOL_ROUND,
    CLI_MESSAGES_RATE_LIMITED,
    CLI_MESSAGES_RETRY,
)
CLI_WEBSOCKET: tuple[Exchange, ...] = (CLI_WS_PROMPT, CLI_WS_TOOL_ROUND, CLI_WS_SECOND_PROMPT)
CLI_BY_NAME: dict[str, Exchange] = {e.name: e for e in (*CLI, *CLI_WEBSOCKET)}

# ---------------------------------------------------------------------------------------------------
# §6.10 CONNECT with proxy credentials (LS sends them preemptively), and the 407 challenge case

_BASIC = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()  # YWxpY2U6czNjcjN0

CONNECT_WITH_AUTH = ConnectSample(
    name="connect_with_auth",
    authority="api.business.githubcopilot.com:443",
    request_headers=(
        ("host", "api.business.githubcopilot.com:443"),
        ("Proxy-Connection", "keep-alive"),
        ("User-Agent", "GithubCopilot/1.539.0"),
        ("Proxy-Authorization", f"Basic {_BASIC}"),
    ),
    status=200,
    reason="Connection established",
    response_headers=(),
    expected={"user": PROXY_USER, "password": PROXY_PASSWORD},
)

CONNECT_WITHOUT_AUTH = ConnectSample(
    name="connect_without_auth",
    authority="api.business.githubcopilot.com:443",
    request_headers=(
        ("host", "api.business.githubcopilot.com:443"),
        ("Proxy-Connection", "keep-alive"),
        ("User-Agent", "GitHubCopilotChat/0.42.0"),
    ),
    status=407,
    reason="Proxy Authentication Required",
    response_headers=(("Proxy-Authenticate", 'Basic realm="copilot-proxy"'),),
    expected={"user": None, "password": None},
)

CONNECTS: tuple[ConnectSample, ...] = (CONNECT_WITH_AUTH, CONNECT_WITHOUT_AUTH)


def _check() -> None:
    names = [e.name for e in ALL]
    ids = [e.request_id for e in ALL]
    if len(set(names)) != len(names) or None in ids or len(set(ids)) != len(ids):
        raise AssertionError("sample names and x-request-ids must be unique and present")
    for e in ALL:
        if e.expected["request_id"] != e.request_id:
            raise AssertionError(f"{e.name}: expected request_id differs from the header")


_check()
