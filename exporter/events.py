"""The UsageEvent: one finished Copilot call, counted or skipped, as every sink receives it."""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from exporter.acceptance import TelemetryReport
from exporter.values import quick_init

COUNTED_EVENT = "copilot.request"
SKIPPED_EVENT = "copilot.skipped"
TELEMETRY_EVENT = "copilot.telemetry"  # a telemetry post the exporter read (its acceptance increments)


@quick_init
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
    telemetry: TelemetryReport | None = None  # a telemetry post's events and acceptance increments
    # AI credits (docs/cost.md): what copilot_nano_aiu_total counted (the server's figure, else the estimate),
    # its source, the estimate itself (also next to a server figure, to calibrate the estimator) and why not.
    credits_nano_aiu: int | None = None
    credits_source: str | None = None  # server | estimated
    nano_aiu_estimated: int | None = None
    price_source: str | None = None  # learned (a /models answer) | table
    billed: bool = False
    unknown_price: bool = False
    background: bool = False  # X-Interaction-Type: conversation-background
    auto_model: bool = False  # routed by Auto model selection (10 % discount)
    cache_write_tokens: int | None = None
    token_details: str | None = None  # copilot_usage.token_details as JSON text (well-formed entries only)
    error_code: str | None = None  # bounded error.code of a failed answer (credits.ERROR_CODES, other, none)
    quota: str | None = None  # quota / rate-limit snapshots of the answer as JSON text (exporter.quota)
    copilot_plan: str | None = None  # copilot_internal/user copilot_plan
    teams: tuple[str, ...] = ()  # the user's teams at call time, small teams already shown as "other"
    # Governance (issue 17), aligned with tool_calls: builtin / mcp / unknown, and the MCP server ("" if none).
    tool_sources: tuple[str, ...] = ()
    tool_servers: tuple[str, ...] = ()
    mcp_server: str | None = None  # the MCP server of an MCP request (kind mcp)

    @property
    def day(self) -> str:
        """The UTC day, YYYY-MM-DD (isoformat is several times faster than strftime). Every sink asks for it:
        the last event's day is kept (with its timestamp object, so the memo's key cannot be reused)."""
        ts = self.timestamp
        memo = _DAY_MEMO[0]
        if memo[0] is ts:
            return memo[1]
        day = ts.astimezone(UTC).isoformat()[:10]
        _DAY_MEMO[0] = (ts, day)  # one tuple swapped in whole: another thread reads the old pair or the new one
        return day

    @property
    def name(self) -> str:
        if self.telemetry is not None:
            return TELEMETRY_EVENT
        return COUNTED_EVENT if self.counted else SKIPPED_EVENT

    def log_fields(self) -> dict[str, Any]:
        """The JSON log line's fields (without timestamp/event/level, which the logger adds)."""
        out = dict(zip(_LOG_FIELDS, _log_values(self), strict=True))  # one C call for the 50-odd fields
        out["tool_calls"] = list(self.tool_calls)
        out["teams"] = list(self.teams)
        out["tool_sources"] = list(self.tool_sources)
        out["tool_servers"] = list(self.tool_servers)
        if self.prompt is None:
            del out["prompt"]
        if self.completion is None:
            del out["completion"]
        if self.telemetry is None:
            del out["telemetry"]
        else:
            out["telemetry"] = self.telemetry.log()
        return out


def iso_utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


_DAY_MEMO: list[tuple[datetime | None, str]] = [(None, "")]
_LOG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageEvent) if f.name != "timestamp")
_log_values = operator.attrgetter(*_LOG_FIELDS)
