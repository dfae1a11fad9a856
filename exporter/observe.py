"""Which metrics one finished call touches, with what value and labels: the one rule both metric sinks translate."""

from __future__ import annotations

from dataclasses import dataclass

from exporter import metricdefs as md
from exporter.acceptance import TelemetryReport
from exporter.classify import CHAT_KINDS, Kind
from exporter.events import UsageEvent
from exporter.tools import classify_tool
from exporter.values import quick_init

# gen_ai.operation.name per kind of model call (semantic-conventions well-known values). Calls of other
# kinds (telemetry posts, token exchanges, model lists) are not GenAI operations.
OPERATIONS: dict[str, str] = {
    **{k.value: "chat" for k in CHAT_KINDS},
    Kind.NEXT_EDIT.value: "chat",
    Kind.INSTANT_APPLY.value: "chat",
    Kind.PROXY_CHAT_OTHER.value: "chat",
    Kind.COMPLETION.value: "text_completion",
    Kind.EMBEDDINGS.value: "embeddings",
}


def operation_name(kind: str) -> str | None:
    """gen_ai.operation.name of a kind of model call; None for kinds that are not GenAI operations."""
    return OPERATIONS.get(kind)


@quick_init
@dataclass(frozen=True, slots=True)
class Observation:
    """One value recorded into one metric. `genai` marks what OpenTelemetry's gen_ai.client.* metrics
    describe (GenAI operations only); Prometheus records every observation."""

    metric: md.MetricDef
    value: float
    labels: tuple[str, ...]
    genai: bool = True


def status_code(event: UsageEvent) -> str:
    return str(event.status) if event.status is not None else "error"


def failed(event: UsageEvent) -> bool:
    return event.status is None or event.status >= 400


def observations(event: UsageEvent) -> list[Observation]:
    """Every metric an event touches, with its raw (not yet bounded) label values."""
    kind = event.kind
    code = status_code(event)
    genai = event.model_call and operation_name(kind) is not None
    out = [Observation(md.RESPONSES, 1, (kind, code))]
    if event.duration_s is not None:
        out.append(Observation(md.REQUEST_DURATION, event.duration_s, (kind,), genai))
    if event.ttft_s is not None:
        out.append(Observation(md.TIME_TO_FIRST_TOKEN, event.ttft_s, (kind,), genai))
    user = event.user
    # Per-user failures are model calls only: MCP, agent-task and registry lookups of the CLI fail as part
    # of normal operation and must not read as Copilot failures on dashboards and alerts.
    if event.model_call and failed(event):
        out.append(Observation(md.USER_ERRORS, 1, (user, kind, code, event.error_code or "none")))
    if event.counted:
        out.append(Observation(md.REQUESTS, 1, (user, event.editor, event.language, kind)))
    else:
        out.append(Observation(md.SKIPPED, 1, (kind, event.skip_reason or "unknown")))
    if event.model_call:
        model = event.model or ""
        out.append(Observation(md.MODEL_CALLS, 1, (user, kind, model, event.initiator)))
        # Zero-token calls add nothing to a counter (and a 0 in OTel's token histogram is not usage).
        if event.input_tokens:
            out.append(Observation(md.TOKENS, event.input_tokens, (user, kind, model, "input"), genai))
        if event.output_tokens:
            out.append(Observation(md.TOKENS, event.output_tokens, (user, kind, model, "output"), genai))
        out.extend(_credits(event, model))
    if event.telemetry is not None:
        out.extend(telemetry_observations(user, event.telemetry))
    out.extend(governance(event))
    return out


_COUNTED_SIGNALS = {
    "shown": md.SUGGESTIONS_SHOWN,
    "accepted": md.SUGGESTIONS_ACCEPTED,
    "rejected": md.SUGGESTIONS_REJECTED,
}


def telemetry_observations(user: str, report: TelemetryReport) -> list[Observation]:
    """What one telemetry post adds: its events, what was skipped, and the acceptance increments."""
    out = [Observation(md.TELEMETRY_EVENTS, n, (user, store, name)) for store, name, n in report.events]
    out.extend(Observation(md.TELEMETRY_SKIPPED, n, (reason,)) for reason, n in report.skipped)
    for s in report.suggestions:
        place = (user, s.editor, s.language)
        metric = _COUNTED_SIGNALS.get(s.signal)
        if metric is not None:
            if s.n:
                out.append(Observation(metric, s.n, (*place, s.kind)))
            if s.signal == "accepted" and s.kind == "completion":
                if s.chars:
                    out.append(Observation(md.ACCEPTED_CHARS, s.chars, place))
                if s.lines:
                    out.append(Observation(md.ACCEPTED_LINES, s.lines, place))
        elif s.signal == "survival" and s.outcome is not None and s.still is not None:
            out.append(Observation(md.CODE_SURVIVAL, s.n, (*place, s.outcome, "true" if s.still else "false")))
        elif s.signal == "chat_edit" and s.outcome is not None:
            out.append(Observation(md.CHAT_EDIT_DECISIONS, s.n, (*place, s.outcome)))
    return out


def _credits(event: UsageEvent, model: str) -> list[Observation]:
    """AI credits counted for the call (a zero adds nothing), or a call whose price nobody knows."""
    if event.credits_nano_aiu and event.credits_source:
        background = "true" if event.background else "false"
        labels = (event.user, event.kind, model, event.credits_source, event.editor, background)
        return [Observation(md.NANO_AIU, event.credits_nano_aiu, labels)]
    if event.unknown_price:
        return [Observation(md.COST_UNKNOWN, 1, (model,))]
    return []


NO_SERVER = "none"  # the server label of a tool call that is not an MCP call


def governance(event: UsageEvent) -> list[Observation]:
    """Tool calls the answer asked for, and the request itself when it went to an MCP server."""
    out = []
    for i, name in enumerate(event.tool_calls):
        server = event.tool_servers[i] if i < len(event.tool_servers) else ""
        use = classify_tool(name, server)
        source = event.tool_sources[i] if i < len(event.tool_sources) else use.source
        labels = (event.user, event.editor, use.tool, source, use.server or NO_SERVER)
        out.append(Observation(md.TOOL_CALLS, 1, labels, False))
    if event.mcp_server:
        out.append(Observation(md.MCP_REQUESTS, 1, (event.user, event.mcp_server), False))
    return out


def secret_found(user: str, kind: str, secret_type: str) -> list[Observation]:
    """A credential the scanner found in a request body (reported through the dispatcher's health path)."""
    return [Observation(md.SECRETS_DETECTED, 1, (user, kind, secret_type), False)]


def scan_skipped(reason: str) -> list[Observation]:
    return [Observation(md.SECRET_SCANS_SKIPPED, 1, (reason,), False)]


def mcp_request(user: str, server: str) -> list[Observation]:
    """A request to an MCP server on a host that is not Copilot's (Copilot's own /mcp/ calls are events)."""
    return [Observation(md.MCP_REQUESTS, 1, (user, server), False)]
