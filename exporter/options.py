"""The copilot_* options as data: name, type, default, help (the user documentation) and accepted values.

The addons declare them in `load()`; `check_deferred` turns a `--set` value mitmproxy cannot parse into one
clear line instead of mitmproxy silently dropping the addon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporter.settings import INTERCEPT_MODES, LOG_MODES, OTEL_PROTOCOLS
from exporter.values import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: Any
    default: Any
    help: str
    choices: Sequence[str] | None = None


OPTIONS: tuple[Option, ...] = (
    Option(
        "copilot_data_dir",
        str,
        "logs",
        "Directory for the daily summaries (metrics/), the JSON event log (events/) and "
        "recordings (usage/). Created when missing.",
    ),
    Option(
        "copilot_metrics_host",
        str,
        "127.0.0.1",
        "Address the Prometheus /metrics endpoint binds to (0.0.0.0 for all interfaces).",
    ),
    Option(
        "copilot_metrics_port",
        int,
        9180,
        "Port of the Prometheus /metrics endpoint; 0 turns the endpoint off.",
    ),
    Option(
        "copilot_log_json",
        str,
        "file",
        "Where the JSON event log goes: file (events/copilot-events_<day>.jsonl under the "
        "data dir), stdout, both, or off.",
        choices=LOG_MODES,
    ),
    Option(
        "copilot_log_skipped",
        bool,
        True,
        "Also log model calls that are not counted (speculative completions, agent steps, "
        "errors), with their skip reason.",
    ),
    Option(
        "copilot_capture_content",
        bool,
        False,
        "Put prompts and answers in the JSON log lines. Off by default: they contain source code.",
    ),
    Option(
        "copilot_record",
        bool,
        False,
        "Record each Copilot request and response (headers redacted, bodies parsed) under "
        "usage/<user>/<kind>/ in the data dir, like the original tool's prompt recording.",
    ),
    Option(
        "copilot_record_telemetry",
        bool,
        False,
        "With copilot_record on, also record telemetry posts.",
    ),
    Option(
        "copilot_record_max_bytes",
        int,
        1_000_000,
        "Largest request body kept in a recording; a larger one is cut and marked.",
    ),
    Option(
        "copilot_intercept",
        str,
        "copilot",
        "Which TLS connections to intercept: 'copilot' (Copilot hosts only; everything else "
        "is tunnelled untouched) or 'all'.",
        choices=INTERCEPT_MODES,
    ),
    Option(
        "copilot_hosts",
        Sequence[str],
        [],
        "Extra host regexes to treat as Copilot API hosts (hosts learned from token "
        "exchanges are added automatically).",
    ),
    Option(
        "copilot_max_users",
        int,
        500,
        "Most distinct user label values in /metrics; later users are counted as 'other'.",
    ),
    Option(
        "copilot_max_models",
        int,
        100,
        "Most distinct model label values in /metrics; later models are counted as 'other'.",
    ),
    Option(
        "copilot_max_series",
        int,
        10_000,
        "Most label sets in /metrics; past it, the user, editor, language and model values of new series are "
        "folded into 'other' (counted in copilot_label_overflows_total{label=series}).",
    ),
    Option(
        "copilot_metrics_auth",
        str,
        "",
        "Require HTTP basic auth on /metrics: 'user:password', or '@/path/to/file' holding user:password "
        "(keeps the password off the command line). /healthz stays open.",
    ),
    Option(
        "copilot_metrics_certfile",
        str,
        "",
        "Serve /metrics over TLS with this PEM certificate (chain); its key is copilot_metrics_keyfile, or in "
        "the same file.",
    ),
    Option(
        "copilot_metrics_keyfile",
        str,
        "",
        "PEM private key for copilot_metrics_certfile.",
    ),
    Option(
        "copilot_pseudonym_key",
        str,
        "",
        "When set, users appear everywhere (metrics, logs, summaries, recordings) as u-<keyed hash> instead "
        "of their names; '@/path/to/file' reads the key from a file. Keep the key to map ids back.",
    ),
    Option(
        "copilot_otel",
        bool,
        False,
        "Export OpenTelemetry metrics and one span per Copilot model call over OTLP (needs the 'otel' "
        "extra). Also on when copilot_otel_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT is set; "
        "OTEL_SDK_DISABLED=true turns it off. See docs/opentelemetry.md.",
    ),
    Option(
        "copilot_otel_endpoint",
        str,
        "",
        "OTLP collector base URL, e.g. http://collector:4318 (/v1/traces and /v1/metrics are appended for "
        "http/protobuf). Empty: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.",
    ),
    Option(
        "copilot_otel_protocol",
        str,
        "",
        "OTLP protocol: http/protobuf or grpc (grpc needs the 'otel-grpc' extra). "
        "Empty: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.",
        choices=OTEL_PROTOCOLS,
    ),
    Option(
        "copilot_otel_headers",
        str,
        "",
        "OTLP request headers as key=value,key2=value2 (values URL-encoded), e.g. an API key; "
        "'@/path/to/file' reads them from a file. Empty: OTEL_EXPORTER_OTLP_HEADERS.",
    ),
    Option(
        "copilot_otel_service_name",
        str,
        "",
        "service.name of the exported telemetry. Empty: OTEL_SERVICE_NAME or service.name in "
        "OTEL_RESOURCE_ATTRIBUTES, else copilot-proxy-insight.",
    ),
    Option(
        "copilot_otel_export_interval",
        str,
        "",
        "Seconds between OTLP metric exports. Empty: OTEL_METRIC_EXPORT_INTERVAL (milliseconds), else 60.",
    ),
    Option(
        "copilot_otel_pseudonym_key",
        str,
        "",
        "Pseudonymous users towards the OTLP collector only: when set, metrics and spans carry "
        "enduser.pseudo.id (the keyed hash copilot_pseudonym_key would give) instead of enduser.id, while "
        "local outputs keep names; '@/path/to/file' reads the key from a file.",
    ),
    # A string: mitmproxy's --set cannot parse float options; settings_from() parses and checks it.
    Option(
        "copilot_flush_interval",
        str,
        "5",
        "Seconds between writes of the daily summary file (fractions allowed, e.g. 0.5).",
    ),
    Option(
        "copilot_gc_freeze",
        bool,
        True,
        "Once the proxy is running, move the objects loaded at start-up (mitmproxy's and the addon's) into "
        "Python's permanent garbage-collector generation (gc.freeze), so that full collections stop scanning "
        "them again: less CPU per request. Process-wide; false leaves the collector as mitmproxy has it. "
        "See docs/performance.md.",
    ),
    Option(
        "copilot_price_table",
        str,
        "",
        "JSON price table (AI credits per 1M tokens per model, the format of the shipped exporter/prices.json) "
        "used for credit estimates instead of the shipped one; prices learned from /models answers still win.",
    ),
    Option(
        "copilot_budget",
        str,
        "business",
        "Monthly AI-credit allowance per user: business (1900), enterprise (3900) or a number of credits. With a "
        "plan name, a user's own plan seen in copilot_internal/user answers wins.",
    ),
    Option(
        "copilot_budget_file",
        str,
        "",
        'JSON file of monthly allowances, {"default": 1900, "teams": {"backend": 3000}, "users": {"alice": 5000}}: '
        "a user's entry, else the largest of their teams' (docs/teams.md), else copilot_budget.",
    ),
    Option(
        "copilot_quota_ttl",
        str,
        "21600",
        "Seconds a user's last quota or rate-limit snapshot stays in /metrics without a newer one.",
    ),
    Option(
        "copilot_team_map",
        str,
        "",
        "Team membership file: CSV rows user,team or YAML team: [users]; re-read within seconds when it "
        "changes. See docs/teams.md.",
    ),
    Option(
        "copilot_team_min_size",
        int,
        5,
        "Teams with fewer members than this are shown as 'other' in every output, so no team view singles "
        "out a person.",
    ),
    Option(
        "copilot_team_ldap_url",
        str,
        "",
        "LDAP server for team membership from groups, ldap://host[:port] or ldaps://host[:port]; empty: off.",
    ),
    Option(
        "copilot_team_ldap_bind_dn",
        str,
        "",
        "DN of a read-only service account for the group lookup; empty: anonymous bind.",
    ),
    Option(
        "copilot_team_ldap_password",
        str,
        "",
        "Password of copilot_team_ldap_bind_dn; '@/path/to/file' reads it from a file.",
    ),
    Option(
        "copilot_team_ldap_base",
        str,
        "",
        "DN under which groups are searched (e.g. ou=groups,dc=example,dc=org); each group's cn is a team.",
    ),
    Option(
        "copilot_team_ldap_filter",
        str,
        "(objectClass=groupOfNames)",
        "LDAP filter selecting the groups that are teams.",
    ),
    Option(
        "copilot_team_ldap_refresh",
        str,
        "3600",
        "Seconds between LDAP group lookups (off the request path; the last good groups are kept on failure).",
    ),
    Option(
        "copilot_instance_id",
        str,
        "",
        "This replica's name when several proxies share one data dir: it is added to the event log and "
        "summary file names (copilot-events_<day>.<id>.jsonl). Empty: one proxy, plain file names.",
    ),
    Option(
        "copilot_secret_scan",
        bool,
        True,
        "Scan outgoing Copilot prompts for credentials (tokens, cloud keys, private keys, passwords) on a "
        "background thread and report each finding by type and keyed fingerprint, never the secret. "
        "Read-only: requests pass unchanged and undelayed. See docs/governance.md.",
    ),
    Option(
        "copilot_secret_scan_max_bytes",
        int,
        1_000_000,
        "Bytes of each decoded request body the secret scanner reads (1024..67108864); the rest of a longer "
        'body is skipped and counted (copilot_secret_scans_skipped_total{reason="truncated"}).',
    ),
    Option(
        "copilot_secret_scan_queue",
        int,
        64,
        "Request bodies waiting for the secret scanner at most (1..100000); a body arriving at a full queue is "
        "not scanned and is counted (reason queue_full).",
    ),
)
BY_NAME = {o.name: o for o in OPTIONS}
INTERCEPTION_OPTIONS = ("copilot_intercept", "copilot_hosts")


def parse_error(option: Option, values: Sequence[str]) -> str | None:
    """Why `--set name=value` cannot be used for this option (None: mitmproxy can parse it)."""
    if option.type is Sequence[str]:
        return None
    shown = values[0] if values else ""
    if len(values) > 1:
        return f"{option.name}: given {len(values)} times, expected one value"
    if option.type is int:
        try:
            int(shown)
        except ValueError:
            return f"{option.name}={shown!r}: expected a whole number"
        return None
    if option.type is bool:
        if shown not in ("", "true", "false", "toggle"):
            return f"{option.name}={shown!r}: expected true or false"
        return None
    if option.choices is not None and shown not in option.choices:
        accepted = ", ".join(repr(c) for c in option.choices if c)
        return f"{option.name}={shown!r}: expected one of {accepted}"
    return None
