"""Builders for UsageEvents in tests that exercise sinks without running the addon."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from exporter.dispatch import Dispatcher, Emitted, Health, LabelEvicted, LabelOverflow
from exporter.events import UsageEvent
from exporter.labels import LabelPolicy
from exporter.writer import ErrorReporter

DEFAULTS: dict[str, Any] = {
    "timestamp": datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC),
    "user": "alice",
    "editor": "vscode",
    "editor_version": "vscode/1.111.0",
    "summary_key": "vscode-1.111.0",
    "plugin": "copilot-chat",
    "plugin_version": "0.42.0",
    "language": "python",
    "kind": "completion",
    "model": "gpt-41-copilot",
    "resolved_model": None,
    "initiator": "user",
    "initiator_source": "inferred",
    "interaction_id": None,
    "request_id": "req-1",
    "intent": "copilot-ghost",
    "host": "proxy.business.githubcopilot.com",
    "method": "POST",
    "path": "/v1/engines/gpt-41-copilot/completions",
    "status": 200,
    "duration_s": 0.2,
    "ttft_s": 0.1,
    "streamed": True,
    "speculative": False,
    "finish_reason": "stop",
    "input_tokens": 27,
    "output_tokens": 4,
    "cached_tokens": None,
    "reasoning_tokens": None,
    "nano_aiu": None,
    "tool_calls": (),
    "counted": True,
    "skip_reason": None,
    "model_call": True,
}


def event(**overrides: Any) -> UsageEvent:
    fields = dict(DEFAULTS)
    fields.update(overrides)
    return UsageEvent(**fields)


def chat(**overrides: Any) -> UsageEvent:
    base = {
        "kind": "chat_agent",
        "language": "unknown",
        "model": "gpt-4.1",
        "path": "/chat/completions",
        "host": "api.business.githubcopilot.com",
        "intent": "conversation-agent",
        "initiator_source": "header",
    }
    base.update(overrides)
    return event(**base)


class Driven:
    """One sink behind a real Dispatcher and LabelPolicy: tests hand it events as the addon would.

    Attribute access falls through to the sink (its registry, its files...)."""

    def __init__(self, sink: Any, max_users: int = 500, max_models: int = 100, max_series: int = 10_000) -> None:
        self.sink = sink
        self.failures: list[str] = []
        policy = LabelPolicy(
            max_users,
            max_models,
            max_series,
            on_overflow=lambda label: self.health(LabelOverflow(label)),
            on_evict=lambda user: self.health(LabelEvicted("user", user)),
        )
        self.dispatcher = Dispatcher(ErrorReporter(self.failures.append), policy, [sink])

    def handle(self, event: UsageEvent, recording: Any = None) -> None:
        self.dispatcher.emit(event, recording)

    def health(self, signal: Health) -> None:
        self.dispatcher.health(signal)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def emitted(event: UsageEvent, recording: Any = None, policy: LabelPolicy | None = None) -> Emitted:
    """What a sink receives for `event`, bounded by `policy` (default caps)."""
    dispatcher = Dispatcher(ErrorReporter(lambda _: None), policy or LabelPolicy())
    return Emitted(event, dispatcher.bounded(event), recording)
