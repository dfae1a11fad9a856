"""Which Copilot host role a host plays, and which kind a request is (host role + method + exact path)."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from exporter.values import quick_init


class HostRole(StrEnum):
    API = "api"  # CAPI: chat, responses, messages, models, embeddings
    PROXY = "proxy"  # completions proxy: ghost text, next edit, instant apply
    DOTCOM = "dotcom"  # api.github.com: token exchange, user info, code search
    TELEMETRY = "telemetry"
    ORIGIN = "origin"  # origin-tracker: public code matching


class Kind(StrEnum):
    COMPLETION = "completion"
    NEXT_EDIT = "next_edit"
    INSTANT_APPLY = "instant_apply"
    PROXY_CHAT_OTHER = "proxy_chat_other"
    CHAT = "chat"
    CHAT_PANEL = "chat_panel"
    CHAT_AGENT = "chat_agent"
    CHAT_EDITS = "chat_edits"
    CHAT_INLINE = "chat_inline"
    CHAT_NOTEBOOK = "chat_notebook"
    CHAT_TERMINAL = "chat_terminal"
    CHAT_WS = "chat_ws"
    EMBEDDINGS = "embeddings"
    MODEL_LIST = "model_list"
    MODEL_INFO = "model_info"
    MODEL_POLICY = "model_policy"
    AUTO_MODEL = "auto_model"
    EXTENSION_AGENT = "extension_agent"
    CODE_REVIEW = "code_review"
    CODING_AGENT_MGMT = "coding_agent_mgmt"
    MCP = "mcp"
    SKILLS = "skills"
    PING = "ping"
    TOKEN_EXCHANGE = "token_exchange"
    USER_INFO = "user_info"
    CONTENT_EXCLUSION = "content_exclusion"
    ENDPOINT_DISCOVERY = "endpoint_discovery"
    CODE_SEARCH = "code_search"
    TELEMETRY = "telemetry"
    CODE_REFERENCING = "code_referencing"
    OTHER = "other"


CHAT_KINDS: frozenset[Kind] = frozenset(
    {
        Kind.CHAT,
        Kind.CHAT_PANEL,
        Kind.CHAT_AGENT,
        Kind.CHAT_EDITS,
        Kind.CHAT_INLINE,
        Kind.CHAT_NOTEBOOK,
        Kind.CHAT_TERMINAL,
        Kind.CHAT_WS,
    }
)
# Kinds whose requests are upstream model calls (counted in copilot_model_calls_total).
MODEL_CALL_KINDS: frozenset[Kind] = CHAT_KINDS | {
    Kind.COMPLETION,
    Kind.NEXT_EDIT,
    Kind.INSTANT_APPLY,
    Kind.PROXY_CHAT_OTHER,
    Kind.EMBEDDINGS,
}
# Kinds that can be counted as interactions (copilot_requests_total).
INTERACTION_KINDS: frozenset[Kind] = CHAT_KINDS | {Kind.COMPLETION, Kind.NEXT_EDIT}

# OpenAI-Intent / X-Interaction-Type value -> chat mode kind (copilot-traffic.md §4.2). The Copilot CLI sends
# X-Interaction-Type conversation-user on a prompt's first call and conversation-agent on its tool rounds and
# retries (copilot-cli.md): both are its agent loop, so one turn keeps one kind on every transport, including
# /v1/messages, which carries no OpenAI-Intent.
_INTENT_MODE: dict[str, Kind] = {
    "conversation-panel": Kind.CHAT_PANEL,
    "conversation-agent": Kind.CHAT_AGENT,
    "conversation-user": Kind.CHAT_AGENT,
    "conversation-edits": Kind.CHAT_EDITS,
    "conversation-inline": Kind.CHAT_INLINE,
    "conversation-notebook": Kind.CHAT_NOTEBOOK,
    "conversation-terminal": Kind.CHAT_TERMINAL,
}

_PLAN = r"(?:\.[a-z0-9-]+)?"
_STATIC_HOSTS: tuple[tuple[re.Pattern[str], HostRole], ...] = tuple(
    (re.compile(pattern), role)
    for pattern, role in (
        (rf"^api{_PLAN}\.githubcopilot\.com$", HostRole.API),
        (rf"^proxy{_PLAN}\.githubcopilot\.com$", HostRole.PROXY),
        (rf"^telemetry{_PLAN}\.githubcopilot\.com$", HostRole.TELEMETRY),
        (rf"^origin-tracker{_PLAN}\.githubcopilot\.com$", HostRole.ORIGIN),
        (r"^api-model-lab\.githubcopilot\.com$", HostRole.API),
        (r"^copilot-proxy\.githubusercontent\.com$", HostRole.PROXY),
        (r"^copilot-telemetry\.githubusercontent\.com$", HostRole.TELEMETRY),
        (r"^origin-tracker\.githubusercontent\.com$", HostRole.ORIGIN),
        (r"^api\.github\.com$", HostRole.DOTCOM),
        # GHE.com data residency: <service>.<subdomain>.ghe.com
        (r"^copilot-api\.[a-z0-9-]+\.ghe\.com$", HostRole.API),
        (r"^copilot-proxy\.[a-z0-9-]+\.ghe\.com$", HostRole.PROXY),
        (r"^copilot-telemetry(?:-service)?\.[a-z0-9-]+\.ghe\.com$", HostRole.TELEMETRY),
        (r"^origin-tracker\.[a-z0-9-]+\.ghe\.com$", HostRole.ORIGIN),
        (r"^api\.[a-z0-9-]+\.ghe\.com$", HostRole.DOTCOM),
    )
)
_ENDPOINT_ROLES: dict[str, HostRole] = {
    "api": HostRole.API,
    "proxy": HostRole.PROXY,
    "telemetry": HostRole.TELEMETRY,
    "origin-tracker": HostRole.ORIGIN,
}
_ROLE_CACHE = 4096
_HOSTNAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}\.)+[a-z0-9-]{1,63}$")


class HostTable:
    """Copilot hosts: a static default set, hosts learned from token-exchange `endpoints`, and extras."""

    def __init__(self, extra_patterns: tuple[str, ...] = (), max_learned: int = 256) -> None:
        self._extra = tuple(re.compile(p, re.IGNORECASE) for p in extra_patterns)
        self._learned: OrderedDict[str, HostRole] = OrderedDict()
        self._max_learned = max_learned
        self._cache: dict[str, HostRole | None] = {}

    def role(self, host: str) -> HostRole | None:
        """The role of a host (None: not Copilot). Answers are cached: every request asks."""
        try:
            return self._cache[host]
        except KeyError:
            pass
        role = self._lookup(host.lower().rstrip("."))
        if len(self._cache) >= _ROLE_CACHE:
            self._cache.clear()
        self._cache[host] = role
        return role

    def _lookup(self, host: str) -> HostRole | None:
        learned = self._learned.get(host)
        if learned is not None:
            return learned
        for pattern, role in _STATIC_HOSTS:
            if pattern.match(host):
                return role
        for extra in self._extra:
            if extra.search(host):
                return HostRole.API
        return None

    def is_copilot(self, host: str) -> bool:
        return self.role(host) is not None

    @property
    def learned(self) -> dict[str, HostRole]:
        return dict(self._learned)

    def learn(self, endpoints: Any) -> list[str]:
        """Learn hosts from a token-exchange / user-info `endpoints` object; returns the new hosts."""
        new: list[str] = []
        if not isinstance(endpoints, dict):
            return new
        for key, role in _ENDPOINT_ROLES.items():
            url = endpoints.get(key)
            if not isinstance(url, str):
                continue
            try:
                host = (urlsplit(url).hostname or "").lower()
            except ValueError:
                continue
            if not _HOSTNAME.match(host) or self._learned.get(host) == role:
                continue
            if self.role(host) != role:
                new.append(host)
            self._learned[host] = role
            self._cache.clear()
            self._learned.move_to_end(host)
            while len(self._learned) > self._max_learned:
                self._learned.popitem(last=False)
        return new


@quick_init
@dataclass(frozen=True, slots=True)
class Route:
    """The kind of a request, plus the model named by its path (completions engines)."""

    kind: Kind
    path_model: str | None = None


_RouteTable = tuple[tuple[str | None, re.Pattern[str], Kind], ...]


def _routes(*rows: tuple[str | None, str, Kind]) -> _RouteTable:
    """(method or None for any, path regex, kind) rows, compiled."""
    return tuple((method, re.compile(pattern), kind) for method, pattern, kind in rows)


_ENGINE_COMPLETIONS = re.compile(r"^/v1/engines/([^/]+)/completions$")
_API_ROUTES = _routes(
    ("POST", r"^/chat/completions$", Kind.CHAT),
    ("POST", r"^/responses$", Kind.CHAT),
    ("GET", r"^/responses$", Kind.CHAT_WS),
    ("POST", r"^/v1/messages$", Kind.CHAT),
    ("POST", r"^/embeddings$", Kind.EMBEDDINGS),
    ("GET", r"^/models$", Kind.MODEL_LIST),
    ("POST", r"^/models/session(?:/intent)?$", Kind.AUTO_MODEL),
    (None, r"^/auto$", Kind.AUTO_MODEL),
    ("POST", r"^/models/[^/]+/policy$", Kind.MODEL_POLICY),
    ("GET", r"^/models/[^/]+$", Kind.MODEL_INFO),
    (None, r"^/agents/github-code-review(?:/.*)?$", Kind.CODE_REVIEW),
    (None, r"^/agents/(?:swe|sessions)(?:/.*)?$", Kind.CODING_AGENT_MGMT),
    (None, r"^/agents(?:/[^/]+)?$", Kind.EXTENSION_AGENT),  # includes /agents/chat
    (None, r"^/mcp(?:/.*)?$", Kind.MCP),
    (None, r"^/skills$", Kind.SKILLS),
    (None, r"^/search/[^/]+$", Kind.SKILLS),
    ("GET", r"^/_ping$", Kind.PING),
)
_DOTCOM_ROUTES = _routes(
    ("GET", r"^/copilot_internal/v2/(?:nl)?token$", Kind.TOKEN_EXCHANGE),
    ("GET", r"^/copilot_internal/user$", Kind.USER_INFO),
    ("GET", r"^/copilot_internal/content_exclusion(?:/.*)?$", Kind.CONTENT_EXCLUSION),
    (None, r"^/embeddings(?:/models|/code/search)?$", Kind.CODE_SEARCH),
    (None, r"^/chunks$", Kind.CODE_SEARCH),
    (None, r"^/repos/.+/copilot_internal/embeddings_index$", Kind.CODE_SEARCH),
)
_ORIGIN_ROUTE = re.compile(r"^/twirp/github\.snippy\.v1\.SnippyAPI/(?:Match|FilesForMatch)$")

# Next-edit-suggestion models on the proxy host (copilot-traffic.md §1.2).
_NES_MODEL = re.compile(r"^(?:copilot-nes-.*|nes-.*|xtab-.*|.*-nes-.*)$")
_INSTANT_APPLY_MODEL = re.compile(r"^.*-instant-apply-.*$")


def _match(routes: tuple[tuple[str | None, re.Pattern[str], Kind], ...], method: str, path: str) -> Kind | None:
    for want, pattern, kind in routes:
        if (want is None or want == method) and pattern.match(path):
            return kind
    return None


def route(role: HostRole | None, method: str, path: str) -> Route:
    """Classify by host role, method and exact path (query string removed); model-dependent kinds later."""
    path = path.split("?", 1)[0]
    method = method.upper()
    if role is HostRole.PROXY:
        m = _ENGINE_COMPLETIONS.match(path)
        if m and method == "POST":
            return Route(Kind.COMPLETION, m.group(1))
        if method == "POST" and path == "/chat/completions":
            return Route(Kind.PROXY_CHAT_OTHER)
        return Route(Kind.OTHER)
    if role is HostRole.API:
        return Route(_match(_API_ROUTES, method, path) or Kind.OTHER)
    if role is HostRole.DOTCOM:
        if method == "POST" and path == "/graphql":
            return Route(Kind.ENDPOINT_DISCOVERY)
        return Route(_match(_DOTCOM_ROUTES, method, path) or Kind.OTHER)
    if role is HostRole.TELEMETRY:
        return Route(Kind.TELEMETRY if method == "POST" and path == "/telemetry" else Kind.OTHER)
    if role is HostRole.ORIGIN:
        return Route(Kind.CODE_REFERENCING if _ORIGIN_ROUTE.match(path) else Kind.OTHER)
    return Route(Kind.OTHER)


def refine_proxy_chat(model: str | None) -> Kind:
    """PROXY `/chat/completions` is next edit or instant apply by model, never a chat turn."""
    name = (model or "").lower()
    if _INSTANT_APPLY_MODEL.match(name):
        return Kind.INSTANT_APPLY
    if _NES_MODEL.match(name):
        return Kind.NEXT_EDIT
    return Kind.PROXY_CHAT_OTHER


def chat_mode(intent: str | None, interaction_type: str | None) -> Kind:
    """The chat kind for a chat request by its OpenAI-Intent, else X-Interaction-Type."""
    for value in (intent, interaction_type):
        if value:
            mode = _INTENT_MODE.get(value.strip().lower())
            if mode is not None:
                return mode
    return Kind.CHAT


def intent_family(intent: str | None) -> str:
    """The family of an OpenAI-Intent / X-Interaction-Type value: its chat mode when known, else the value.

    Calls of one agent loop may name their intent differently (the CLI's conversation-user first call and its
    conversation-agent rounds); comparing families, not raw strings, keeps them one turn. "" when absent."""
    value = (intent or "").strip().lower()
    mode = _INTENT_MODE.get(value)
    return mode.value if mode is not None else value
