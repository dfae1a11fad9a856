"""What a Copilot answer said: text, tool calls, finish reason and usage, from any of the four stream shapes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter import jsoncodec
from exporter.sse import SSEEvent
from exporter.values import quick_init

MAX_TEXT_CHARS = 64 * 1024
MAX_TOOL_CALLS = 64


class Shape(StrEnum):
    COMPLETIONS = "completions"  # /v1/engines/*/completions: choices[].text
    CHAT = "chat"  # /chat/completions: choices[].delta.content / tool_calls, or message (non-streamed)
    RESPONSES = "responses"  # /responses: response.* events
    MESSAGES = "messages"  # /v1/messages: Anthropic message_* / content_block_* events


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _items(value: Any) -> list[Any]:
    """A JSON array, or nothing: a wrong type where an array belongs is ignored, never iterated."""
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


MAX_TOKEN_DETAILS = 16


@quick_init
@dataclass(frozen=True, slots=True)
class TokenDetail:
    """One `copilot_usage.token_details` entry: the server's charge for one class of tokens."""

    token_type: str
    token_count: int
    batch_size: int
    cost_per_batch: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "token_type": self.token_type,
            "token_count": self.token_count,
            "batch_size": self.batch_size,
            "cost_per_batch": self.cost_per_batch,
        }


def token_details(value: Any) -> tuple[tuple[TokenDetail, ...], int]:
    """The well-formed entries of a `token_details` array and the count of malformed ones. A bad entry
    (the Copilot CLI dropped a call's whole usage on one null) costs only itself."""
    good: list[TokenDetail] = []
    bad = 0
    for item in _items(value)[:MAX_TOKEN_DETAILS]:
        if not isinstance(item, dict):
            bad += 1
            continue
        kind = _str(item.get("token_type"))
        count = _int(item.get("token_count"))
        batch = _int(item.get("batch_size"))
        cost = _int(item.get("cost_per_batch"))
        if kind is None or count is None or cost is None or not batch:
            bad += 1
            continue
        good.append(TokenDetail(kind[:32], count, batch, cost))
    return tuple(good), bad


def copilot_usage(answer: Answer, cu: Any) -> None:
    """`copilot_usage: {total_nano_aiu, token_details}` (chat usage chunk, response.completed, message_delta)."""
    if not isinstance(cu, dict):
        return
    nano = _int(cu.get("total_nano_aiu"))
    if nano is not None:
        answer.nano_aiu = nano
    if "token_details" in cu:
        details, bad = token_details(cu.get("token_details"))
        answer.token_details = details
        answer.token_details_malformed = bad + (0 if isinstance(cu["token_details"], list) else 1)


@dataclass(slots=True)
class Answer:
    """The accumulated facts of one response. Mutable while the stream runs; read at the end."""

    text_parts: dict[int, list[str]] = field(default_factory=dict)
    text_chars: int = 0
    has_text: bool = False
    tool_calls: list[str] = field(default_factory=list)
    tool_servers: list[str] = field(default_factory=list)  # per tool call: the MCP server the answer named, or ""
    finish_reasons: dict[int, str] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    nano_aiu: int | None = None
    resolved_model: str | None = None
    cache_write_tokens: int | None = None  # Anthropic cache_creation_input_tokens (priced apart)
    token_details: tuple[TokenDetail, ...] = ()
    token_details_malformed: int = 0
    complete: bool = False  # the stream reached its terminator ([DONE], response.completed, message_stop)
    events: int = 0
    malformed_events: int = 0
    error: str | None = None  # an error object inside the stream

    def add_text(self, index: int, text: str) -> None:
        if not text:
            return
        if not self.has_text and text.strip():
            self.has_text = True
        if self.text_chars < MAX_TEXT_CHARS:
            self.text_parts.setdefault(index, []).append(text[: MAX_TEXT_CHARS - self.text_chars])
        self.text_chars += len(text)

    @property
    def text(self) -> str:
        return "".join("".join(parts) for _, parts in sorted(self.text_parts.items()))

    @property
    def choices_with_text(self) -> int:
        return sum(1 for parts in self.text_parts.values() if "".join(parts).strip())

    @property
    def finish_reason(self) -> str | None:
        if not self.finish_reasons:
            return None
        return self.finish_reasons[min(self.finish_reasons)]

    def add_tool(self, name: Any, server: Any = None) -> None:
        if isinstance(name, str) and name and len(self.tool_calls) < MAX_TOOL_CALLS:
            self.tool_calls.append(name[:128])
            self.tool_servers.append(server[:128] if isinstance(server, str) else "")


def _tool(a: Answer, obj: dict[str, Any], plain: str, mcp: str, server_key: str) -> bool:
    """Counts `obj` as a tool call when its type is `plain` (a tool) or `mcp` (an MCP tool, with its server)."""
    kind = obj.get("type")
    if kind in (plain, mcp):
        a.add_tool(obj.get("name"), obj.get(server_key) if kind == mcp else None)
        return True
    return False


def _tool_item(a: Answer, item: dict[str, Any]) -> bool:
    """A Responses output item that is a tool call: a function call, or a remote MCP call (with its server)."""
    return _tool(a, item, "function_call", "mcp_call", "server_label")


def _tool_block(a: Answer, block: dict[str, Any]) -> bool:
    """An Anthropic content block that is a tool call: tool_use, or mcp_tool_use (MCP connector, with its server)."""
    return _tool(a, block, "tool_use", "mcp_tool_use", "server_name")


def openai_usage(a: Answer, usage: Any, inputs: str, outputs: str) -> None:
    """OpenAI-style usage: `<inputs>_tokens` (+ details.cached_tokens), `<outputs>_tokens` (+ reasoning)."""
    if not isinstance(usage, dict):
        return
    a.input_tokens = _int(usage.get(f"{inputs}_tokens"))
    a.output_tokens = _int(usage.get(f"{outputs}_tokens"))
    details = usage.get(f"{inputs}_tokens_details")
    if isinstance(details, dict):
        a.cached_tokens = _int(details.get("cached_tokens"))
    details = usage.get(f"{outputs}_tokens_details")
    if isinstance(details, dict):
        a.reasoning_tokens = _int(details.get("reasoning_tokens"))


class AnswerParser:
    """Feeds decoded SSE events (or one JSON body) of one shape into an Answer."""

    def __init__(self, shape: Shape, keep_events: int = 0) -> None:
        self.shape = shape
        self.answer = Answer()
        self._keep = keep_events
        self.kept: list[Any] = []  # parsed event objects, for recording (bounded)
        self._anthropic: dict[str, int] = {}

    def feed_event(self, ev: SSEEvent) -> bool:
        """Returns True when the event carried answer content (text or a tool call): first token."""
        a = self.answer
        data = ev.data.strip()
        if not data:
            return False
        if data == "[DONE]":
            a.complete = True
            return False
        try:
            obj = jsoncodec.loads(data)
        except ValueError:
            a.malformed_events += 1
            return False
        a.events += 1
        if len(self.kept) < self._keep:
            self.kept.append(obj)
        if not isinstance(obj, dict):
            a.malformed_events += 1
            return False
        return self._dispatch(obj, ev.event)

    def feed_json(self, obj: Any) -> None:
        """A non-streamed body (stream:false)."""
        a = self.answer
        if len(self.kept) < self._keep:
            self.kept.append(obj)
        if not isinstance(obj, dict):
            a.malformed_events += 1
            return
        a.events += 1
        if "error" in obj:  # an error answer (a 429's JSON body): its code goes to the event log
            self._error(obj)
        if self.shape is Shape.CHAT:
            for choice in _items(obj.get("choices")):
                if not isinstance(choice, dict):
                    continue
                index = _int(choice.get("index")) or 0
                message = choice.get("message")
                if isinstance(message, dict):
                    content = message.get("content")
                    if isinstance(content, str):
                        a.add_text(index, content)
                    for call in _items(message.get("tool_calls")):
                        if isinstance(call, dict) and isinstance(call.get("function"), dict):
                            a.add_tool(call["function"].get("name"))
                text = choice.get("text")
                if isinstance(text, str):
                    a.add_text(index, text)
                reason = _str(choice.get("finish_reason"))
                if reason:
                    a.finish_reasons[index] = reason
            self._usage_openai(obj)
            self._model(obj.get("model"))
            a.complete = True
        elif self.shape is Shape.RESPONSES:
            self._responses_final(obj)
        elif self.shape is Shape.MESSAGES:
            for block in _items(obj.get("content")):
                if isinstance(block, dict):
                    if block.get("type") == "text" and isinstance(block.get("text"), str):
                        a.add_text(0, block["text"])
                    else:
                        _tool_block(a, block)
            reason = _str(obj.get("stop_reason"))
            if reason:
                a.finish_reasons[0] = reason
            self._usage_anthropic(obj.get("usage"))
            self._model(obj.get("model"))
            a.complete = True
        else:
            self._completions(obj)
            a.complete = True

    # -- shapes ---------------------------------------------------------------------------------

    def _dispatch(self, obj: dict[str, Any], event: str | None) -> bool:
        if self.shape is Shape.COMPLETIONS:
            return self._completions(obj)
        if self.shape is Shape.CHAT:
            return self._chat(obj)
        if self.shape is Shape.RESPONSES:
            return self._responses(obj, event)
        return self._messages(obj, event)

    def _model(self, value: Any) -> None:
        if self.answer.resolved_model is None and isinstance(value, str) and value:
            self.answer.resolved_model = value[:128]

    def _error(self, obj: dict[str, Any]) -> None:
        err = obj.get("error")
        if isinstance(err, dict):
            self.answer.error = str(err.get("code") or err.get("type") or err.get("message") or "error")[:128]
        elif isinstance(err, str):
            self.answer.error = err[:128]

    def _usage_openai(self, obj: dict[str, Any]) -> None:
        self._usage(obj.get("usage"), "prompt", "completion")
        self._copilot_usage(obj)

    def _usage(self, usage: Any, inputs: str, outputs: str) -> None:
        openai_usage(self.answer, usage, inputs, outputs)

    def _copilot_usage(self, obj: dict[str, Any]) -> None:
        copilot_usage(self.answer, obj.get("copilot_usage"))

    def _choices(self, obj: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        """A completions/chat chunk's model and error, then its choices as (index, choice)."""
        self._model(obj.get("model"))
        if "error" in obj:
            self._error(obj)
        for choice in _items(obj.get("choices")):
            if isinstance(choice, dict):
                yield _int(choice.get("index")) or 0, choice

    def _completions(self, obj: dict[str, Any]) -> bool:
        a = self.answer
        content = False
        for index, choice in self._choices(obj):
            text = choice.get("text")
            if isinstance(text, str) and text:
                a.add_text(index, text)
                content = True
            reason = _str(choice.get("finish_reason"))
            if reason and index not in a.finish_reasons:
                a.finish_reasons[index] = reason
        self._usage_openai(obj)
        return content

    def _chat(self, obj: dict[str, Any]) -> bool:
        a = self.answer
        content = False
        for index, choice in self._choices(obj):
            delta: Any = choice.get("delta")
            if not isinstance(delta, dict):
                message = choice.get("message")
                delta = message if isinstance(message, dict) else {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                a.add_text(index, text)
                content = True
            for call in _items(delta.get("tool_calls")):
                if isinstance(call, dict):
                    fn = call.get("function")
                    if isinstance(fn, dict) and fn.get("name"):
                        a.add_tool(fn.get("name"))
                    content = True
            fcall = delta.get("function_call")
            if isinstance(fcall, dict):
                if fcall.get("name"):
                    a.add_tool(fcall.get("name"))
                content = True
            reason = _str(choice.get("finish_reason"))
            if reason and index not in a.finish_reasons:
                a.finish_reasons[index] = reason
        if isinstance(obj.get("usage"), dict) or isinstance(obj.get("copilot_usage"), dict):
            self._usage_openai(obj)
        return content

    def _responses(self, obj: dict[str, Any], event: str | None) -> bool:
        a = self.answer
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event
        if kind == "response.output_text.delta":
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                a.add_text(_int(obj.get("output_index")) or 0, delta)
                return True
            return False
        if kind == "response.output_item.added":
            item = obj.get("item")
            return isinstance(item, dict) and _tool_item(a, item)
        if kind == "response.function_call_arguments.delta":
            return True
        if kind in ("response.created", "response.in_progress"):
            resp = obj.get("response")
            if isinstance(resp, dict):
                self._model(resp.get("model"))
            return False
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self._responses_final(obj.get("response"), streamed_text=a.has_text or a.text_chars > 0)
            self._copilot_usage(obj)
            if kind == "response.incomplete":
                a.finish_reasons[0] = "incomplete"
            elif kind == "response.failed":
                a.finish_reasons[0] = "failed"
            return False
        if kind == "error":
            # Over WebSocket the event nests the error object: {"type":"error","status":429,"error":{"code":…}}.
            nested = obj.get("error")
            self._error({"error": nested if isinstance(nested, dict) else obj})
            return False
        return False

    def _responses_final(self, resp: Any, streamed_text: bool = False) -> None:
        a = self.answer
        if not isinstance(resp, dict):
            a.malformed_events += 1
            return
        self._model(resp.get("model"))
        status = _str(resp.get("status"))
        if status:
            a.finish_reasons.setdefault(0, status)
        tools_seen = bool(a.tool_calls)
        for item in _items(resp.get("output")):
            if not isinstance(item, dict):
                continue
            if not tools_seen and _tool_item(a, item):
                continue
            if item.get("type") == "message" and not streamed_text:
                for part in _items(item.get("content")):
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        text = part.get("text")
                        if isinstance(text, str):
                            a.add_text(0, text)
        self._usage(resp.get("usage"), "input", "output")
        self._copilot_usage(resp)
        a.complete = True

    def _messages(self, obj: dict[str, Any], event: str | None) -> bool:
        a = self.answer
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return False
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                a.add_text(0, delta["text"])
                return bool(delta["text"])
            return delta.get("type") in ("input_json_delta", "thinking_delta")
        if kind == "content_block_start":
            block = obj.get("content_block")
            return isinstance(block, dict) and _tool_block(a, block)
        if kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self._model(msg.get("model"))
                self._usage_anthropic(msg.get("usage"))
            return False
        if kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and _str(delta.get("stop_reason")):
                a.finish_reasons[0] = delta["stop_reason"]
            self._usage_anthropic(obj.get("usage"))
            self._copilot_usage(obj)
            return False
        if kind == "message_stop":
            a.complete = True
            return False
        if kind == "error":
            self._error(obj)
        return False

    def _usage_anthropic(self, usage: Any) -> None:
        """Latest value of each field wins; input counts fresh + cache-read + cache-creation tokens."""
        if not isinstance(usage, dict):
            return
        a = self.answer
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
            value = _int(usage.get(key))
            if value is not None:
                self._anthropic[key] = value
        inputs = [
            self._anthropic.get(k) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        ]
        if any(v is not None for v in inputs):
            a.input_tokens = sum(v or 0 for v in inputs)
        if "cache_read_input_tokens" in self._anthropic:
            a.cached_tokens = self._anthropic["cache_read_input_tokens"]
        if "cache_creation_input_tokens" in self._anthropic:
            a.cache_write_tokens = self._anthropic["cache_creation_input_tokens"]
        if "output_tokens" in self._anthropic:
            a.output_tokens = self._anthropic["output_tokens"]


def shape_for_path(path: str) -> Shape:
    path = path.split("?", 1)[0]
    if path.endswith("/responses"):
        return Shape.RESPONSES
    if path.endswith("/v1/messages"):
        return Shape.MESSAGES
    if path.endswith("/chat/completions"):
        return Shape.CHAT
    return Shape.COMPLETIONS
