"""The UsageEvent: one finished Copilot call, counted or skipped, as every sink receives it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

COUNTED_EVENT = "copilot.request"
SKIPPED_EVENT = "copilot.skipped"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    timestamp: datetime  # request start, UTC
    user: str
    editor: str  # label value: vscode, jetbrains-iu, neovim, cli, unknown…
    editor_version: str | None  # raw Editor-Version (vscode/1.111.0) or derived
    summary_key: str  # the daily summary's editor key (vscode-1.111.0)
    plugin: str | None
    plugin_version: str | None
    language: str  # extra.language of completions, else "unknown"
    kind: str
    model: str | None
    resolved_model: str | None
    initiator: str
    initiator_source: str
    interaction_id: str | None
    request_id: str | None
    intent: str | None
    host: str
    method: str
    path: str
    status: int | None
    duration_s: float | None
    ttft_s: float | None
    streamed: bool
    speculative: bool
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    nano_aiu: int | None
    tool_calls: tuple[str, ...]
    counted: bool
    skip_reason: str | None
    model_call: bool  # an upstream model call (copilot_model_calls_total)
    error: str | None = None
    prompt: str | None = None  # only with content capture on
    completion: str | None = None  # only with content capture on
    # Governance (issue 17), aligned with tool_calls: builtin / mcp / unknown, and the MCP server ("" if none).
    tool_sources: tuple[str, ...] = ()
    tool_servers: tuple[str, ...] = ()
    mcp_server: str | None = None  # the MCP server of an MCP request (kind mcp)

    @property
    def day(self) -> str:
        """The UTC day, YYYY-MM-DD (isoformat is several times faster than strftime)."""
        return self.timestamp.astimezone(UTC).isoformat()[:10]

    @property
    def name(self) -> str:
        return COUNTED_EVENT if self.counted else SKIPPED_EVENT

    def log_fields(self) -> dict[str, Any]:
        """The JSON log line's fields (without timestamp/event/level, which the logger adds)."""
        out = {name: getattr(self, name) for name in _LOG_FIELDS}
        out["tool_calls"] = list(self.tool_calls)
        out["tool_sources"] = list(self.tool_sources)
        out["tool_servers"] = list(self.tool_servers)
        if self.prompt is None:
            del out["prompt"]
        if self.completion is None:
            del out["completion"]
        return out


def iso_utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


_LOG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageEvent) if f.name != "timestamp")
