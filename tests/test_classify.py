"""Host roles and request kinds: (host role, method, exact path) tables, and the substring traps of §1.3."""

from __future__ import annotations

import pytest

from exporter.classify import HostRole, HostTable, Kind, chat_mode, intent_family, refine_proxy_chat, route
from tests import samples

HOSTS = [
    ("api.githubcopilot.com", HostRole.API),
    ("api.business.githubcopilot.com", HostRole.API),
    ("API.Enterprise.GithubCopilot.com", HostRole.API),
    ("api.individual.githubcopilot.com.", HostRole.API),
    ("proxy.individual.githubcopilot.com", HostRole.PROXY),
    ("copilot-proxy.githubusercontent.com", HostRole.PROXY),
    ("telemetry.business.githubcopilot.com", HostRole.TELEMETRY),
    ("copilot-telemetry.githubusercontent.com", HostRole.TELEMETRY),
    ("origin-tracker.githubusercontent.com", HostRole.ORIGIN),
    ("api.github.com", HostRole.DOTCOM),
    ("copilot-api.octocorp.ghe.com", HostRole.API),
    ("copilot-proxy.octocorp.ghe.com", HostRole.PROXY),
    ("copilot-telemetry-service.octocorp.ghe.com", HostRole.TELEMETRY),
    ("api.octocorp.ghe.com", HostRole.DOTCOM),
    ("github.com", None),
    ("models.github.ai", None),
    ("api.openai.com", None),
    ("githubcopilot.com.evil.example", None),
    ("api.githubcopilot.com.evil.example", None),
    ("localhost", None),
]


@pytest.mark.parametrize(("host", "role"), HOSTS)
def test_host_roles(host: str, role: HostRole | None) -> None:
    assert HostTable().role(host) is role


ROUTES = [
    (HostRole.PROXY, "POST", "/v1/engines/gpt-41-copilot/completions", Kind.COMPLETION, "gpt-41-copilot"),
    (HostRole.PROXY, "POST", "/v1/engines/copilot-codex/completions", Kind.COMPLETION, "copilot-codex"),
    (HostRole.PROXY, "GET", "/v1/engines/copilot-codex/completions", Kind.OTHER, None),
    (HostRole.PROXY, "POST", "/v1/engines/a/b/completions", Kind.OTHER, None),
    (HostRole.PROXY, "POST", "/chat/completions", Kind.PROXY_CHAT_OTHER, None),
    (HostRole.API, "POST", "/chat/completions", Kind.CHAT, None),
    (HostRole.API, "POST", "/chat/completions?x=1", Kind.CHAT, None),
    (HostRole.API, "POST", "/v1/chat/completions", Kind.OTHER, None),  # BYOK / re-exporter shape, not CAPI
    (HostRole.API, "POST", "/responses", Kind.CHAT, None),
    (HostRole.API, "GET", "/responses", Kind.CHAT_WS, None),
    (HostRole.API, "POST", "/v1/messages", Kind.CHAT, None),
    (HostRole.API, "POST", "/embeddings", Kind.EMBEDDINGS, None),
    (HostRole.API, "GET", "/models", Kind.MODEL_LIST, None),
    (HostRole.API, "GET", "/models/gpt-4.1", Kind.MODEL_INFO, None),
    (HostRole.API, "POST", "/models/gpt-4.1/policy", Kind.MODEL_POLICY, None),
    (HostRole.API, "POST", "/models/session", Kind.AUTO_MODEL, None),
    (HostRole.API, "POST", "/agents/github-code-review", Kind.CODE_REVIEW, None),
    (HostRole.API, "GET", "/agents/swe/jobs/1", Kind.CODING_AGENT_MGMT, None),
    (HostRole.API, "GET", "/agents", Kind.EXTENSION_AGENT, None),
    (HostRole.API, "POST", "/agents/chat", Kind.EXTENSION_AGENT, None),
    (HostRole.API, "POST", "/mcp/readonly", Kind.MCP, None),
    (HostRole.API, "GET", "/_ping", Kind.PING, None),
    (HostRole.DOTCOM, "GET", "/copilot_internal/v2/token", Kind.TOKEN_EXCHANGE, None),
    (HostRole.DOTCOM, "GET", "/copilot_internal/user", Kind.USER_INFO, None),
    (HostRole.DOTCOM, "POST", "/embeddings", Kind.CODE_SEARCH, None),  # not CAPI embeddings (§1.3)
    (HostRole.DOTCOM, "POST", "/graphql", Kind.ENDPOINT_DISCOVERY, None),
    (HostRole.DOTCOM, "GET", "/repos/o/r", Kind.OTHER, None),
    (HostRole.DOTCOM, "POST", "/chat/completions", Kind.OTHER, None),
    (HostRole.TELEMETRY, "POST", "/telemetry", Kind.TELEMETRY, None),
    (HostRole.ORIGIN, "POST", "/twirp/github.snippy.v1.SnippyAPI/Match", Kind.CODE_REFERENCING, None),
    (None, "POST", "/chat/completions", Kind.OTHER, None),
]


@pytest.mark.parametrize(("role", "method", "path", "kind", "model"), ROUTES)
def test_routes(role: HostRole | None, method: str, path: str, kind: Kind, model: str | None) -> None:
    r = route(role, method, path)
    assert (r.kind, r.path_model) == (kind, model)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("copilot-nes-xtab", Kind.NEXT_EDIT),
        ("copilot-nes-oct", Kind.NEXT_EDIT),
        ("nes-callisto", Kind.NEXT_EDIT),
        ("xtab-4o-mini", Kind.NEXT_EDIT),
        ("gpt-4o-instant-apply-full-ft-v66", Kind.INSTANT_APPLY),
        ("gpt-4o-instant-apply-full-ft-v66-short", Kind.INSTANT_APPLY),
        ("gpt-4o", Kind.PROXY_CHAT_OTHER),
        (None, Kind.PROXY_CHAT_OTHER),
    ],
)
def test_proxy_chat_is_decided_by_model(model: str | None, kind: Kind) -> None:
    assert refine_proxy_chat(model) is kind


@pytest.mark.parametrize(
    ("intent", "interaction_type", "kind"),
    [
        ("conversation-agent", None, Kind.CHAT_AGENT),
        ("conversation-panel", "conversation-panel", Kind.CHAT_PANEL),
        ("conversation-edits", None, Kind.CHAT_EDITS),
        ("Conversation-Inline", None, Kind.CHAT_INLINE),
        (None, "conversation-agent", Kind.CHAT_AGENT),
        ("conversation-other", "conversation-subagent", Kind.CHAT),
        (None, None, Kind.CHAT),
        # The Copilot CLI: its first call says conversation-user, its rounds conversation-agent; /v1/messages
        # carries no OpenAI-Intent, only X-Interaction-Type. All of it is agent mode.
        ("conversation-agent", "conversation-user", Kind.CHAT_AGENT),
        (None, "conversation-user", Kind.CHAT_AGENT),
        (None, "Conversation-User", Kind.CHAT_AGENT),
        ("messages-proxy", "conversation-agent", Kind.CHAT_AGENT),
    ],
)
def test_chat_mode(intent: str | None, interaction_type: str | None, kind: Kind) -> None:
    assert chat_mode(intent, interaction_type) is kind


@pytest.mark.parametrize(
    ("intent", "family"),
    [
        ("conversation-agent", "chat_agent"),
        ("conversation-user", "chat_agent"),
        (" Conversation-Agent ", "chat_agent"),
        ("conversation-panel", "chat_panel"),
        ("conversation-other", "conversation-other"),
        ("conversation-subagent", "conversation-subagent"),
        ("", ""),
        (None, ""),
    ],
)
def test_intent_family(intent: str | None, family: str) -> None:
    assert intent_family(intent) == family


@pytest.mark.parametrize("ex", samples.CLI, ids=lambda e: e.name)
def test_cli_calls_are_agent_mode_on_every_http_transport(ex: samples.Exchange) -> None:
    """One kind per turn: the user call, its retries and its tool rounds, on /responses, /chat/completions and
    /v1/messages (a WebSocket call is chat_ws, the kind of every call inside a Responses socket)."""
    h = {k.lower(): v for k, v in ex.request_headers}
    assert route(HostRole.API, ex.method, ex.path).kind is Kind.CHAT
    assert chat_mode(h.get("openai-intent"), h.get("x-interaction-type")).value == ex.expected["kind"] == "chat_agent"


def test_hosts_learned_from_token_endpoints() -> None:
    table = HostTable()
    new = table.learn(
        {
            "api": "https://copilot-api.example-corp.com",
            "proxy": "https://copilot-proxy.example-corp.com:443/",
            "telemetry": "not a url",
            "origin-tracker": 42,
        }
    )
    assert new == ["copilot-api.example-corp.com", "copilot-proxy.example-corp.com"]
    assert table.role("copilot-api.example-corp.com") is HostRole.API
    assert table.role("copilot-proxy.example-corp.com") is HostRole.PROXY
    assert table.learn(None) == [] and table.learn({"api": "https://api.githubcopilot.com"}) == []


def test_learned_hosts_are_bounded() -> None:
    table = HostTable(max_learned=3)
    for i in range(10):
        table.learn({"api": f"https://h{i}.example.com"})
    assert list(table.learned) == ["h7.example.com", "h8.example.com", "h9.example.com"]


def test_extra_host_patterns() -> None:
    table = HostTable(extra_patterns=(r"^copilot\.internal\.example$",))
    assert table.role("copilot.internal.example") is HostRole.API
    assert table.role("other.internal.example") is None
