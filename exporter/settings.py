"""The addon's options as one frozen value, parsed and checked by one pure function; errors name the option."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.budgets import BudgetError, Budgets, load_budgets
from exporter.credits import PriceTable, PriceTableError, load_table
from exporter.quota import DEFAULT_TTL_S
from exporter.values import quick_init

LOG_MODES = ("file", "stdout", "both", "off")
INTERCEPT_MODES = ("copilot", "all")
OTEL_PROTOCOLS = ("", "http/protobuf", "grpc")


class SettingsError(ValueError):
    """An option value that cannot be used; the message names the option, the value and what is accepted."""


@quick_init
@dataclass(frozen=True, slots=True)
class Caps:
    """Bounds on label values: distinct users and models, and label sets per metric table."""

    max_users: int = 500
    max_models: int = 100
    max_series: int = 10_000


@quick_init
@dataclass(frozen=True, slots=True)
class Files:
    """What goes to disk under the data dir, and how."""

    data_dir: Path = Path("logs")
    log_json: str = "file"
    log_skipped: bool = True
    record: bool = False
    record_telemetry: bool = False
    record_max_bytes: int = 1_000_000
    instance_id: str = ""  # '': one proxy (plain file names); else this replica's name, added to file names


@quick_init
@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where /metrics listens (port 0: off), with optional basic auth and TLS."""

    host: str = "127.0.0.1"
    port: int = 9180
    auth: tuple[str, str] | None = None
    certfile: str = ""
    keyfile: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class OtelOptions:
    """The copilot_otel* options (the OTEL_* environment is resolved later, by the OTel configuration)."""

    enabled: bool = False
    endpoint: str = ""
    protocol: str = ""
    headers: str = ""
    service_name: str = ""
    export_interval_s: float = 0.0  # 0: OTEL_METRIC_EXPORT_INTERVAL, else 60 s
    pseudonym_key: str = ""  # pseudonymous users towards the collector only
    pseudonymous_users: bool = False  # users are already pseudonyms everywhere (copilot_pseudonym_key)


@quick_init
@dataclass(frozen=True, slots=True)
class CostOptions:
    """AI credits: the price table override (None: the shipped one), budgets and the quota gauges' TTL."""

    price_table: PriceTable | None = None
    budgets: Budgets = field(default_factory=Budgets)
    quota_ttl_s: float = DEFAULT_TTL_S


@quick_init
@dataclass(frozen=True, slots=True)
class TeamOptions:
    """Where membership comes from: a map file, LDAP groups (both optional), and the minimum team size."""

    map_path: str = ""
    min_size: int = 5
    ldap_url: str = ""
    ldap_bind_dn: str = ""
    ldap_password: str = field(default="", repr=False)
    ldap_base: str = ""
    ldap_filter: str = "(objectClass=groupOfNames)"
    ldap_refresh_s: float = 3600.0

    @property
    def enabled(self) -> bool:
        return bool(self.map_path or self.ldap_url)


@quick_init
@dataclass(frozen=True, slots=True)
class SecretScan:
    """The secret scanner of outgoing prompts: on or off, bytes scanned per body, bodies waiting at most."""

    enabled: bool = True
    max_bytes: int = 1_000_000
    queue_size: int = 64


@quick_init
@dataclass(frozen=True, slots=True)
class Settings:
    intercept_all: bool = False
    hosts: tuple[str, ...] = ()
    pseudonym_key: str = ""
    capture: bool = False
    flush_interval_s: float = 5.0
    gc_freeze: bool = True
    caps: Caps = Caps()
    files: Files = Files()
    metrics: MetricsEndpoint = MetricsEndpoint()
    otel: OtelOptions = OtelOptions()
    cost: CostOptions = CostOptions()
    teams: TeamOptions = TeamOptions()
    secret_scan: SecretScan = SecretScan()


Getter = Callable[[str], Any]


def _int(get: Getter, name: str, low: int, high: int | None = None) -> int:
    value = get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name}={value!r}: expected a whole number")
    if value < low or (high is not None and value > high):
        accepted = f"{low}..{high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name}={value}: expected {accepted}")
    return value


def _bool(get: Getter, name: str) -> bool:
    value = get(name)
    if not isinstance(value, bool):
        raise SettingsError(f"{name}={value!r}: expected true or false")
    return value


def _choice(get: Getter, name: str, choices: Sequence[str]) -> str:
    value = get(name)
    if value not in choices:
        shown = ", ".join(repr(c) if c else "'' (empty)" for c in choices)
        raise SettingsError(f"{name}={value!r}: expected one of {shown}")
    return str(value)


def seconds(value: Any, name: str, allow_empty: bool = False) -> float:
    """A positive number of seconds given as text (mitmproxy's --set cannot parse float options)."""
    text = str(value).strip()
    if allow_empty and not text:
        return 0.0
    try:
        parsed = float(text)
    except ValueError:
        parsed = float("nan")
    if not 0 < parsed < float("inf"):
        raise SettingsError(f"{name}={value!r}: expected a positive number of seconds (fractions allowed, e.g. 0.5)")
    return parsed


def secret_value(value: str, name: str) -> str:
    """An option value, or the first line of the file it names with '@path' (never echoes the value)."""
    if not value.startswith("@"):
        return value
    path = value[1:]
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError as e:
        raise SettingsError(f"{name}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name}: {path} is not UTF-8 text") from None


def _credentials(value: str) -> tuple[str, str] | None:
    secret = secret_value(value, "copilot_metrics_auth")
    if not secret:
        return None
    user, sep, password = secret.partition(":")
    if not sep or not user or not password:
        raise SettingsError("copilot_metrics_auth: expected user:password (or @file holding it)")
    return user, password


def _hosts(get: Getter) -> tuple[str, ...]:
    patterns = tuple(str(p) for p in get("copilot_hosts") or ())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise SettingsError(f"copilot_hosts: {pattern!r} is not a valid regex: {e}") from None
    return patterns


_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _instance_id(get: Getter) -> str:
    value = str(get("copilot_instance_id")).strip()
    if value and not _INSTANCE_ID.match(value):
        raise SettingsError(
            f"copilot_instance_id={value!r}: expected up to 63 letters, digits, '.', '_' or '-' (a host or pod name)"
        )
    return value


def _files(get: Getter) -> Files:
    data_dir = str(get("copilot_data_dir"))
    if not data_dir.strip():
        raise SettingsError("copilot_data_dir='': expected a directory path")
    return Files(
        data_dir=Path(data_dir),
        log_json=_choice(get, "copilot_log_json", LOG_MODES),
        log_skipped=_bool(get, "copilot_log_skipped"),
        record=_bool(get, "copilot_record"),
        record_telemetry=_bool(get, "copilot_record_telemetry"),
        record_max_bytes=_int(get, "copilot_record_max_bytes", 1),
        instance_id=_instance_id(get),
    )


def _metrics(get: Getter) -> MetricsEndpoint:
    certfile = str(get("copilot_metrics_certfile"))
    keyfile = str(get("copilot_metrics_keyfile"))
    if keyfile and not certfile:
        raise SettingsError("copilot_metrics_keyfile: needs copilot_metrics_certfile")
    host = str(get("copilot_metrics_host")).strip()
    if not host:
        raise SettingsError("copilot_metrics_host='': expected an address such as 127.0.0.1 or 0.0.0.0")
    return MetricsEndpoint(
        host=host,
        port=_int(get, "copilot_metrics_port", 0, 65535),
        auth=_credentials(str(get("copilot_metrics_auth"))),
        certfile=certfile,
        keyfile=keyfile,
    )


def _otel(get: Getter, pseudonymous_users: bool) -> OtelOptions:
    return OtelOptions(
        enabled=_bool(get, "copilot_otel"),
        endpoint=str(get("copilot_otel_endpoint")).strip(),
        protocol=_choice(get, "copilot_otel_protocol", OTEL_PROTOCOLS),
        headers=secret_value(str(get("copilot_otel_headers")), "copilot_otel_headers"),
        service_name=str(get("copilot_otel_service_name")).strip(),
        export_interval_s=seconds(get("copilot_otel_export_interval"), "copilot_otel_export_interval", True),
        pseudonym_key=secret_value(str(get("copilot_otel_pseudonym_key")), "copilot_otel_pseudonym_key"),
        pseudonymous_users=pseudonymous_users,
    )


def _cost(get: Getter) -> CostOptions:
    path = str(get("copilot_price_table")).strip()
    try:
        table = load_table(path) if path else None
    except PriceTableError as e:
        raise SettingsError(f"copilot_price_table: {e}") from None
    try:
        budgets = load_budgets(str(get("copilot_budget")), str(get("copilot_budget_file")).strip())
    except BudgetError as e:
        raise SettingsError(str(e)) from None
    return CostOptions(table, budgets, seconds(get("copilot_quota_ttl"), "copilot_quota_ttl"))


def _teams(get: Getter) -> TeamOptions:
    url = str(get("copilot_team_ldap_url")).strip()
    base = str(get("copilot_team_ldap_base")).strip()
    if url and not url.lower().startswith(("ldap://", "ldaps://")):
        raise SettingsError(f"copilot_team_ldap_url={url!r}: expected ldap://host[:port] or ldaps://host[:port]")
    if url and not base:
        raise SettingsError("copilot_team_ldap_base='': expected the DN the groups are searched under")
    ldap_filter = str(get("copilot_team_ldap_filter")).strip()
    if not (ldap_filter.startswith("(") and ldap_filter.endswith(")")):
        raise SettingsError(f"copilot_team_ldap_filter={ldap_filter!r}: expected an LDAP filter in parentheses")
    map_path = str(get("copilot_team_map")).strip()
    if map_path and not map_path.lower().endswith((".csv", ".yaml", ".yml")):
        raise SettingsError(f"copilot_team_map={map_path!r}: expected a .csv, .yaml or .yml file")
    return TeamOptions(
        map_path=map_path,
        min_size=_int(get, "copilot_team_min_size", 1),
        ldap_url=url,
        ldap_bind_dn=str(get("copilot_team_ldap_bind_dn")).strip(),
        ldap_password=secret_value(str(get("copilot_team_ldap_password")), "copilot_team_ldap_password"),
        ldap_base=base,
        ldap_filter=ldap_filter,
        ldap_refresh_s=seconds(get("copilot_team_ldap_refresh"), "copilot_team_ldap_refresh"),
    )


def settings_from(get: Getter) -> Settings:
    """Every copilot_* option, parsed and checked; raises SettingsError naming the first bad one."""
    pseudonym_key = secret_value(str(get("copilot_pseudonym_key")), "copilot_pseudonym_key")
    return Settings(
        intercept_all=_choice(get, "copilot_intercept", INTERCEPT_MODES) == "all",
        hosts=_hosts(get),
        pseudonym_key=pseudonym_key,
        capture=_bool(get, "copilot_capture_content"),
        flush_interval_s=seconds(get("copilot_flush_interval"), "copilot_flush_interval"),
        gc_freeze=_bool(get, "copilot_gc_freeze"),
        caps=Caps(
            max_users=_int(get, "copilot_max_users", 1),
            max_models=_int(get, "copilot_max_models", 1),
            max_series=_int(get, "copilot_max_series", 100),
        ),
        files=_files(get),
        metrics=_metrics(get),
        otel=_otel(get, bool(pseudonym_key)),
        cost=_cost(get),
        teams=_teams(get),
        secret_scan=SecretScan(
            enabled=_bool(get, "copilot_secret_scan"),
            max_bytes=_int(get, "copilot_secret_scan_max_bytes", 1024, 64 * 1024 * 1024),
            queue_size=_int(get, "copilot_secret_scan_queue", 1, 100_000),
        ),
    )
