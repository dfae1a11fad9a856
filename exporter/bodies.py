"""What a Copilot request body or WebSocket call frame says: model, stream, language, last speaker, call ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter import jsoncodec
from exporter.identity import clean
from exporter.streams import Shape
from exporter.values import quick_init

MAX_PARSE_BYTES = 16 * 1024 * 1024
MAX_PROMPT_CHARS = 64 * 1024


@quick_init
@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str | None = None
    stream: bool | None = None
    language: str | None = None
    n: int | None = None
    user_last: bool | None = None  # last message is a user message (not a tool result): §4.3 fallback
    initiator: str | None = None  # WebSocket response.create frames carry it in the body
    frame_type: str | None = None  # a WebSocket frame's "type" ("response.create")
    # A response.create frame's own `headers` object (the Copilot CLI): the call's turn, agent loop and mode.
    # A long-lived socket carries several prompts, so these, not the upgrade request's headers, name the turn.
    interaction_id: str | None = None  # headers.X-Interaction-Id
    task_id: str | None = None  # headers.X-Agent-Task-Id, else the frame's agent_task_id
    interaction_type: str | None = None  # headers.X-Interaction-Type (the CLI sends it on the user frame only)
    prompt: str | None = None  # the user's text, for content capture only
    parsed: Any = None  # the parsed body (for recording)
    error: str | None = None  # why the body could not be read


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts) if parts else None
    return None


def _last_user_openai(messages: Any) -> tuple[bool | None, str | None]:
    if not isinstance(messages, list) or not messages:
        return None, None
    last = messages[-1]
    if not isinstance(last, dict):
        return None, None
    role = last.get("role")
    if role == "user":
        content = last.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content):
            return False, None
        return True, _text_of(content)
    return False, None


def _last_user_responses(items: Any) -> tuple[bool | None, str | None]:
    if isinstance(items, str):
        return True, items
    if not isinstance(items, list) or not items:
        return None, None
    last = items[-1]
    if not isinstance(last, dict):
        return None, None
    if last.get("type") in ("function_call_output", "function_call", "reasoning"):
        return False, None
    if last.get("role") == "user":
        return True, _text_of(last.get("content"))
    return False, None


@quick_init
@dataclass(frozen=True, slots=True)
class _FrameFacts:
    interaction_id: str | None = None
    task_id: str | None = None
    interaction_type: str | None = None
    initiator: str | None = None


def _frame_facts(obj: dict[str, Any]) -> _FrameFacts:
    """The call facts of a `response.create` frame: its `headers` object (names in any case), `agent_task_id`."""
    raw = obj.get("headers")
    headers: dict[str, str] = {}
    if isinstance(raw, dict):
        for name, value in raw.items():
            if isinstance(name, str) and isinstance(value, str):
                headers.setdefault(name.lower(), value)
    task = obj.get("agent_task_id")
    initiator = (headers.get("x-initiator") or "").strip().lower()
    return _FrameFacts(
        interaction_id=clean(headers.get("x-interaction-id")),
        task_id=clean(headers.get("x-agent-task-id")) or (clean(task) if isinstance(task, str) else None),
        interaction_type=clean(headers.get("x-interaction-type"), 64),
        initiator=initiator if initiator in ("user", "agent") else None,
    )


NO_FACTS = RequestFacts()
_NO_FRAME = _FrameFacts()


def parse_request(body: bytes | None, shape: Shape | None, keep_parsed: bool = False) -> RequestFacts:
    """Read the facts a Copilot request body carries; never raises."""
    return read_request(body, shape, keep_parsed)[0]


def read_request(body: bytes | None, shape: Shape | None, keep_parsed: bool = False) -> tuple[RequestFacts, Any]:
    """`parse_request`, and the parsed body for the other readers of the same bytes (tool list, secret scan), so
    that they need not parse it again: None when the body was not parsed (absent, too large, not JSON)."""
    if not body:
        return NO_FACTS, None
    if len(body) > MAX_PARSE_BYTES:
        return RequestFacts(error="body_too_large"), None
    try:
        obj = jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return RequestFacts(error="malformed_json"), None
    return _facts(obj, shape, keep_parsed), obj


def _facts(obj: Any, shape: Shape | None, keep_parsed: bool) -> RequestFacts:
    if not isinstance(obj, dict):
        return RequestFacts(parsed=obj if keep_parsed else None, error="not_an_object")
    model = obj.get("model")
    stream = obj.get("stream")
    n = obj.get("n")
    language = None
    extra = obj.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("language"), str):
        language = clean(extra["language"], 64)
    user_last: bool | None = None
    prompt: str | None = None
    if shape is Shape.COMPLETIONS:
        prompt = obj.get("prompt") if isinstance(obj.get("prompt"), str) else None
    elif shape is Shape.RESPONSES:
        user_last, prompt = _last_user_responses(obj.get("input"))
    elif shape in (Shape.CHAT, Shape.MESSAGES):
        user_last, prompt = _last_user_openai(obj.get("messages"))
    frame_type = obj.get("type")
    # Only a WebSocket call frame has these; an HTTP body's stray `headers` key says nothing about the call.
    frame = _frame_facts(obj) if frame_type == "response.create" else _NO_FRAME
    initiator = obj.get("initiator")
    if initiator not in ("user", "agent"):
        initiator = frame.initiator
    return RequestFacts(
        model=clean(model) if isinstance(model, str) else None,
        stream=stream if isinstance(stream, bool) else None,
        language=language.lower() if language else None,
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        user_last=user_last,
        initiator=initiator if initiator in ("user", "agent") else None,
        frame_type=frame_type if isinstance(frame_type, str) else None,
        interaction_id=frame.interaction_id,
        task_id=frame.task_id,
        interaction_type=frame.interaction_type,
        prompt=prompt[:MAX_PROMPT_CHARS] if prompt else None,
        parsed=obj if keep_parsed else None,
    )
