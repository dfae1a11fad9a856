"""The one table of metric definitions that feeds the Prometheus sink, the OTel sink, dashboards and alerts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricType(StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric: its Prometheus name (counters without the `_total` suffix), type, labels and help."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    unit: str = ""
    buckets: tuple[float, ...] = ()
    otel_name: str = ""  # the OpenTelemetry instrument name; empty: Prometheus only
    # OpenTelemetry: one attribute name per Prometheus label (same order), attributes beyond the
    # labels (GenAI semantic conventions), the instrument when it differs (token usage is a counter in
    # Prometheus and a histogram in OTel), the UCUM unit, and buckets when they differ from `buckets`.
    otel_attributes: tuple[str, ...] = ()
    otel_extra_attributes: tuple[str, ...] = ()
    otel_type: MetricType | None = None
    otel_unit: str = ""
    otel_buckets: tuple[float, ...] = ()
    # Exposed by a live collector (values that expire or follow the clock: quota snapshots, budgets), not
    # recorded from observations; the Prometheus sink leaves these to the collector registered for them.
    collected: bool = False

    def __post_init__(self) -> None:
        if self.otel_name and len(self.otel_attributes) != len(self.labels):
            raise ValueError(f"{self.name}: otel_attributes must name one attribute per label")

    @property
    def exposed_name(self) -> str:
        """The sample name Prometheus shows (`_total` for counters)."""
        return f"{self.name}_total" if self.type is MetricType.COUNTER else self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """Every sample name this metric produces in the exposition format."""
        if self.type is MetricType.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type is MetricType.COUNTER:
            return (f"{self.name}_total",)
        return (self.name,)

    @property
    def otel_instrument(self) -> MetricType:
        """The OpenTelemetry instrument type (the Prometheus type unless `otel_type` says otherwise)."""
        return self.otel_type if self.otel_type is not None else self.type

    @property
    def otel_bucket_bounds(self) -> tuple[float, ...]:
        return self.otel_buckets or self.buckets

    @property
    def otel_attribute_map(self) -> dict[str, str]:
        """Prometheus label -> OpenTelemetry attribute name."""
        return dict(zip(self.labels, self.otel_attributes, strict=True))


# Request durations range from ~50 ms (a cached completion) to several minutes (a long agent step
# that streams a big edit), so the buckets run from 25 ms to 10 minutes.
DURATION_BUCKETS: tuple[float, ...] = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Time to first token: completions answer in 100-500 ms, chat models in 0.5-5 s, reasoning models
# can think for a minute before the first token; buckets run from 25 ms to 2 minutes.
TTFT_BUCKETS: tuple[float, ...] = (
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

# Token counts per call (OTel gen_ai.client.token.usage histogram): the GenAI semantic conventions'
# buckets, powers of 4 from 1 to 67,108,864 tokens.
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))

# OpenTelemetry attribute names shared by several metrics.
_GEN_AI = ("gen_ai.operation.name", "gen_ai.provider.name")

REQUESTS = MetricDef(
    "copilot_requests",
    MetricType.COUNTER,
    ("user", "editor", "language", "kind"),
    "Counted Copilot interactions: served non-speculative completions, user chat turns (once per "
    "interaction id) and next-edit suggestions.",
    otel_name="copilot.requests",
    otel_attributes=("enduser.id", "copilot.editor", "copilot.language", "copilot.kind"),
    otel_unit="{request}",
)
MODEL_CALLS = MetricDef(
    "copilot_model_calls",
    MetricType.COUNTER,
    ("user", "kind", "model", "initiator"),
    "Every upstream model call, tool-loop steps and speculative prefetches included.",
    otel_name="copilot.model_calls",
    otel_attributes=("enduser.id", "copilot.kind", "gen_ai.request.model", "copilot.initiator"),
    otel_extra_attributes=_GEN_AI,
    otel_unit="{call}",
)
TOKENS = MetricDef(
    "copilot_tokens",
    MetricType.COUNTER,
    ("user", "kind", "model", "type"),
    "Tokens reported by the response usage, by type (input or output).",
    unit="tokens",
    otel_name="gen_ai.client.token.usage",
    otel_attributes=("enduser.id", "copilot.kind", "gen_ai.request.model", "gen_ai.token.type"),
    otel_extra_attributes=(*_GEN_AI, "server.address"),
    otel_type=MetricType.HISTOGRAM,
    otel_unit="{token}",
    otel_buckets=TOKEN_BUCKETS,
)
REQUEST_DURATION = MetricDef(
    "copilot_request_duration_seconds",
    MetricType.HISTOGRAM,
    ("kind",),
    "Time from the start of a Copilot request to the last byte of its response.",
    unit="seconds",
    buckets=DURATION_BUCKETS,
    otel_name="gen_ai.client.operation.duration",
    otel_attributes=("copilot.kind",),
    otel_extra_attributes=(*_GEN_AI, "gen_ai.request.model", "server.address", "error.type"),
    otel_unit="s",
)
TIME_TO_FIRST_TOKEN = MetricDef(
    "copilot_time_to_first_token_seconds",
    MetricType.HISTOGRAM,
    ("kind",),
    "Time from the start of a streamed Copilot request to its first event with content.",
    unit="seconds",
    buckets=TTFT_BUCKETS,
    otel_name="gen_ai.client.operation.time_to_first_chunk",
    otel_attributes=("copilot.kind",),
    otel_extra_attributes=(*_GEN_AI, "gen_ai.request.model", "server.address"),
    otel_unit="s",
)
RESPONSES = MetricDef(
    "copilot_responses",
    MetricType.COUNTER,
    ("kind", "code"),
    "Upstream HTTP responses per kind and status code (429 rate limited, 402 quota exhausted, 5xx); "
    "code is 'error' when the request failed without a response.",
    otel_name="copilot.responses",
    otel_attributes=("copilot.kind", "http.response.status_code"),
    otel_extra_attributes=("error.type",),
    otel_unit="{response}",
)
USER_ERRORS = MetricDef(
    "copilot_user_errors",
    MetricType.COUNTER,
    ("user", "kind", "code", "error_code"),
    "Failed Copilot calls per user: upstream answers of 400 and above (429 rate limited, 402 quota "
    "exhausted, 5xx) and calls without an answer (code 'error'); error_code is the answer's error.code "
    "(quota_exceeded, user_weekly_rate_limited, ...; 'other' or 'none').",
    otel_name="copilot.user_errors",
    otel_attributes=("enduser.id", "copilot.kind", "http.response.status_code", "copilot.error_code"),
    otel_unit="{call}",
)
SKIPPED = MetricDef(
    "copilot_skipped_requests",
    MetricType.COUNTER,
    ("kind", "reason"),
    "Copilot requests not counted as interactions, by reason (speculative, empty completion, agent "
    "step, auxiliary call, retry duplicate, ...).",
    otel_name="copilot.skipped_requests",
    otel_attributes=("copilot.kind", "copilot.skip_reason"),
    otel_unit="{request}",
)
PROXY_AUTH_FAILURES = MetricDef(
    "copilot_proxy_auth_failures",
    MetricType.COUNTER,
    (),
    "Requests answered with 407 Proxy Authentication Required.",
    otel_name="copilot.proxy_auth_failures",
    otel_unit="{request}",
)
CLIENT_INFO = MetricDef(
    "copilot_client_info",
    MetricType.GAUGE,
    ("user", "editor", "editor_version", "plugin", "plugin_version"),
    "1 for every client (user, editor and plugin version) seen since start: the live inventory.",
)
EXPORTER_ERRORS = MetricDef(
    "copilot_exporter_errors",
    MetricType.COUNTER,
    ("component",),
    "Internal failures of the exporter by component (a sink, the parser, the metrics server). Traffic still passes.",
    otel_name="copilot.exporter_errors",
    otel_attributes=("copilot.component",),
    otel_unit="{error}",
)
LABEL_OVERFLOWS = MetricDef(
    "copilot_label_overflows",
    MetricType.COUNTER,
    ("label",),
    "Label values folded into 'other' because they were outside the bounded set or over the cap.",
    otel_name="copilot.label_overflows",
    otel_attributes=("copilot.label",),
    otel_unit="{value}",
)
BUILD_INFO = MetricDef(
    "copilot_exporter_build_info",
    MetricType.GAUGE,
    ("version", "mitmproxy_version"),
    "Always 1; labels carry the exporter and mitmproxy versions.",
)

# -- acceptance, from Copilot's own telemetry posts (docs/acceptance.md) ---------------------------------------
_SUGGESTION_LABELS = ("user", "editor", "language", "kind")
_SUGGESTION_ATTRIBUTES = ("enduser.id", "copilot.editor", "copilot.language", "copilot.kind")
SUGGESTIONS_SHOWN = MetricDef(
    "copilot_suggestions_shown",
    MetricType.COUNTER,
    _SUGGESTION_LABELS,
    "Suggestions the editor displayed, from Copilot's telemetry (ghost text once per request id and choice; "
    "next edits shown), kind completion or next_edit.",
    otel_name="copilot.suggestions.shown",
    otel_attributes=_SUGGESTION_ATTRIBUTES,
    otel_unit="{suggestion}",
)
SUGGESTIONS_ACCEPTED = MetricDef(
    "copilot_suggestions_accepted",
    MetricType.COUNTER,
    _SUGGESTION_LABELS,
    "Suggestions the user accepted, fully or in part, from Copilot's telemetry (once per request id and choice).",
    otel_name="copilot.suggestions.accepted",
    otel_attributes=_SUGGESTION_ATTRIBUTES,
    otel_unit="{suggestion}",
)
SUGGESTIONS_REJECTED = MetricDef(
    "copilot_suggestions_rejected",
    MetricType.COUNTER,
    _SUGGESTION_LABELS,
    "Suggestions the user dismissed without accepting any part, from Copilot's telemetry.",
    otel_name="copilot.suggestions.rejected",
    otel_attributes=_SUGGESTION_ATTRIBUTES,
    otel_unit="{suggestion}",
)
ACCEPTED_CHARS = MetricDef(
    "copilot_suggestion_accepted_chars",
    MetricType.COUNTER,
    ("user", "editor", "language"),
    "Characters of accepted completions: per request id and choice, the largest cumulative partial accept.",
    otel_name="copilot.suggestion.accepted_chars",
    otel_attributes=("enduser.id", "copilot.editor", "copilot.language"),
    otel_unit="{char}",
)
ACCEPTED_LINES = MetricDef(
    "copilot_suggestion_accepted_lines",
    MetricType.COUNTER,
    ("user", "editor", "language"),
    "Lines of accepted completions: per request id and choice, the largest cumulative partial accept.",
    otel_name="copilot.suggestion.accepted_lines",
    otel_attributes=("enduser.id", "copilot.editor", "copilot.language"),
    otel_unit="{line}",
)
CODE_SURVIVAL = MetricDef(
    "copilot_code_survival",
    MetricType.COUNTER,
    ("user", "editor", "language", "after", "still_in_code"),
    "Checks of accepted completions 30s, 5m and 10m after the accept: whether the code was still in the file.",
    otel_name="copilot.code_survival",
    otel_attributes=("enduser.id", "copilot.editor", "copilot.language", "copilot.after", "copilot.still_in_code"),
    otel_unit="{check}",
)
CHAT_EDIT_DECISIONS = MetricDef(
    "copilot_chat_edit_decisions",
    MetricType.COUNTER,
    ("user", "editor", "language", "outcome"),
    "Chat, agent and inline chat edit decisions the client reports (accepted, rejected, saved).",
    otel_name="copilot.chat_edit_decisions",
    otel_attributes=("enduser.id", "copilot.editor", "copilot.language", "copilot.outcome"),
    otel_unit="{decision}",
)
TELEMETRY_EVENTS = MetricDef(
    "copilot_telemetry_events",
    MetricType.COUNTER,
    ("user", "store", "event"),
    "Copilot telemetry events read from the clients' telemetry posts, by store (standard, enhanced, other) "
    "and event; a user without them has unknown acceptance.",
    otel_name="copilot.telemetry.events",
    otel_attributes=("enduser.id", "copilot.telemetry.store", "copilot.telemetry.event"),
    otel_unit="{event}",
)
TELEMETRY_SKIPPED = MetricDef(
    "copilot_telemetry_skipped",
    MetricType.COUNTER,
    ("reason",),
    "Telemetry posts or envelopes not read (too_large, malformed_body, bad_envelope, too_many_events); "
    "the posts still pass unchanged.",
    otel_name="copilot.telemetry.skipped",
    otel_attributes=("copilot.telemetry.skip_reason",),
    otel_unit="{envelope}",
)
NANO_AIU = MetricDef(
    "copilot_nano_aiu",
    MetricType.COUNTER,
    ("user", "kind", "model", "source", "editor", "background"),
    "AI credits x 10^9 (nano-AIU) of model calls through this proxy: the server's copilot_usage figure "
    "(source server) or an estimate from tokens and prices (source estimated); background marks "
    "conversation-background calls.",
    otel_name="copilot.nano_aiu",
    otel_attributes=(
        "enduser.id",
        "copilot.kind",
        "gen_ai.request.model",
        "copilot.credits.source",
        "copilot.editor",
        "copilot.background",
    ),
    otel_unit="{nano_aiu}",
)
COST_UNKNOWN = MetricDef(
    "copilot_cost_unknown",
    MetricType.COUNTER,
    ("model",),
    "Billed model calls without a server credit figure whose model has no known price (no estimate made).",
    otel_name="copilot.cost_unknown",
    otel_attributes=("gen_ai.request.model",),
    otel_unit="{call}",
)
QUOTA_REMAINING = MetricDef(
    "copilot_quota_remaining_ratio",
    MetricType.GAUGE,
    ("user", "quota"),
    "Share of a user's quota left (0..1), last snapshot seen (x-quota-snapshot-* headers, copilot_internal/user); "
    "dropped after copilot_quota_ttl.",
    collected=True,
)
QUOTA_ENTITLEMENT = MetricDef(
    "copilot_quota_entitlement",
    MetricType.GAUGE,
    ("user", "quota"),
    "A user's quota entitlement in the last snapshot seen (absent when unlimited).",
    collected=True,
)
QUOTA_OVERAGE = MetricDef(
    "copilot_quota_overage_used",
    MetricType.GAUGE,
    ("user", "quota"),
    "Overage a user has used beyond the quota, in the last snapshot seen.",
    collected=True,
)
RATE_LIMIT_REMAINING = MetricDef(
    "copilot_rate_limit_remaining_ratio",
    MetricType.GAUGE,
    ("user", "window"),
    "Share of a user's usage rate-limit window left (0..1), from x-usage-ratelimit-session/-weekly headers.",
    collected=True,
)
BUDGET_ALLOWANCE = MetricDef(
    "copilot_budget_allowance_credits",
    MetricType.GAUGE,
    ("user",),
    "A user's monthly AI-credit allowance (copilot_budget, copilot_budget_file, else the user's plan).",
    collected=True,
)
BUDGET_USED = MetricDef(
    "copilot_budget_used_credits",
    MetricType.GAUGE,
    ("user",),
    "AI credits a user spent through this proxy this UTC month (server figure, else estimate).",
    collected=True,
)
BUDGET_PROJECTED = MetricDef(
    "copilot_budget_projected_credits",
    MetricType.GAUGE,
    ("user",),
    "Month-to-date AI credits extrapolated linearly to the end of the UTC month.",
    collected=True,
)
USER_TEAM_INFO = MetricDef(
    "copilot_user_team_info",
    MetricType.GAUGE,
    ("user", "team"),
    "1 for each team of each user seen since start (teams under copilot_team_min_size show as 'other'); "
    "join it on user for team views.",
)
# Governance (issue 17): credentials in prompts, and the tools and MCP servers agents use.
SECRETS_DETECTED = MetricDef(
    "copilot_secrets_detected",
    MetricType.COUNTER,
    ("user", "kind", "type"),
    "Credentials found in outgoing Copilot request bodies, by secret type (each distinct secret once per user "
    "per 24 h); the copilot.secret_detected log line has the fingerprint and where it was.",
)
SECRET_SCANS_SKIPPED = MetricDef(
    "copilot_secret_scans_skipped",
    MetricType.COUNTER,
    ("reason",),
    "Request bodies not scanned for secrets, or scanned only in part: queue_full (the scanner fell behind), "
    "truncated (over copilot_secret_scan_max_bytes), undecodable, error.",
)
TOOL_CALLS = MetricDef(
    "copilot_tool_calls",
    MetricType.COUNTER,
    ("user", "editor", "tool", "source", "server"),
    "Tool calls models asked for in answers: tool (known names kept, the rest 'other'), source (builtin, mcp, "
    "unknown) and the MCP server when the tool name, the answer or the request's tool list shows it (else none).",
)
MCP_REQUESTS = MetricDef(
    "copilot_mcp_requests",
    MetricType.COUNTER,
    ("user", "server"),
    "Requests clients sent to MCP servers through the proxy (GitHub's /mcp/ on the Copilot API; other MCP "
    "hosts when their traffic is intercepted).",
)

METRICS: tuple[MetricDef, ...] = (
    REQUESTS,
    MODEL_CALLS,
    TOKENS,
    REQUEST_DURATION,
    TIME_TO_FIRST_TOKEN,
    RESPONSES,
    USER_ERRORS,
    SKIPPED,
    PROXY_AUTH_FAILURES,
    CLIENT_INFO,
    EXPORTER_ERRORS,
    LABEL_OVERFLOWS,
    BUILD_INFO,
    SUGGESTIONS_SHOWN,
    SUGGESTIONS_ACCEPTED,
    SUGGESTIONS_REJECTED,
    ACCEPTED_CHARS,
    ACCEPTED_LINES,
    CODE_SURVIVAL,
    CHAT_EDIT_DECISIONS,
    TELEMETRY_EVENTS,
    TELEMETRY_SKIPPED,
    NANO_AIU,
    COST_UNKNOWN,
    QUOTA_REMAINING,
    QUOTA_ENTITLEMENT,
    QUOTA_OVERAGE,
    RATE_LIMIT_REMAINING,
    BUDGET_ALLOWANCE,
    BUDGET_USED,
    BUDGET_PROJECTED,
    USER_TEAM_INFO,
    SECRETS_DETECTED,
    SECRET_SCANS_SKIPPED,
    TOOL_CALLS,
    MCP_REQUESTS,
)


def all_series_names() -> frozenset[str]:
    """Every sample name the exporter can expose: what dashboards and rules may reference."""
    return frozenset(name for m in METRICS for name in m.series_names)
