"""OpenTelemetry configuration: OTLP settings from the copilot_otel* options and the OTEL_* environment (pure)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.util.re import parse_env_headers
from opentelemetry.util.types import AttributeValue

from exporter import __version__
from exporter.values import quick_init

DEFAULT_SERVICE_NAME = "copilot-proxy-insight"
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_EXPORT_TIMEOUT_S = 5.0  # per OTLP request, retries included (OTEL_EXPORTER_OTLP_TIMEOUT overrides)


class OtelConfigError(ValueError):
    """The OpenTelemetry options or environment cannot be used (the addon turns this into an option error)."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


class _NoHeaderValues(logging.Filter):
    """The SDK's header parser logs a malformed entry verbatim ("Header format invalid! …: <entry>"), and an
    OTLP header is usually an API key: keep the warning, drop the entry from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "header" in str(record.msg).lower():
            record.msg, record.args = "OTLP headers: an entry is not key=value (its value is not shown)", ()
        return True


logging.getLogger("opentelemetry.util.re").addFilter(_NoHeaderValues())
HEADER_VARS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")


def parse_headers(headers: str, where: str = "OTLP headers") -> dict[str, str]:
    """`key=value,key2=value2` (the OTEL_EXPORTER_OTLP_HEADERS format, values URL-encoded), as the SDK's
    exporters read it; every entry must be one. The error names the entry's place, never its text: it is
    usually an API key (and may come from an @file meant to hide it)."""
    parsed: dict[str, str] = {}
    for n, entry in enumerate(headers.split(","), start=1):
        if not entry.strip():
            continue
        one = parse_env_headers(entry, liberal=True)
        if not one:
            raise OtelConfigError(
                f"{where}: entry {n} is not key=value (expected key=value,key2=value2, values URL-encoded)"
            )
        parsed.update(one)
    return parsed


def _check_env_headers() -> None:
    """A malformed OTEL_EXPORTER_OTLP_*HEADERS stops the start, like a bad option (the exporters would drop it
    and send without it)."""
    for name in HEADER_VARS:
        parse_headers(_env(name), name)


def build_resource(service_name: str) -> Resource:
    """Resource.create with OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; the option wins over both."""
    attributes: dict[str, AttributeValue] = {"service.version": __version__}
    if service_name.strip():
        attributes["service.name"] = service_name.strip()
    elif not OTELResourceDetector().detect().attributes.get("service.name"):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    return Resource.create(attributes)


_ENDPOINT_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
_TIMEOUT_VARS = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
_DEFAULT_ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
DEFAULT_EXPORT_INTERVAL_MS = 60_000.0


@quick_init
@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how the OTLP exporters send, resolved from the options first, then OTEL_* variables."""

    protocol: str
    traces_endpoint: str
    metrics_endpoint: str
    headers: Mapping[str, str] | None  # from the option; None: the exporters read OTEL_EXPORTER_OTLP_*HEADERS
    timeout_s: float | None  # None: the exporters read OTEL_EXPORTER_OTLP_*TIMEOUT
    export_interval_ms: float
    traces: bool
    metrics: bool

    def describe(self) -> str:
        """One line for the log (header names only: their values are often credentials)."""
        signals = [name for name, on in (("traces", self.traces), ("metrics", self.metrics)) if on]
        names = sorted(self.headers or parse_headers(_env("OTEL_EXPORTER_OTLP_HEADERS")))
        return (
            f"OTLP {self.protocol} {'+'.join(signals) or 'nothing'}: traces to {self.traces_endpoint}, "
            f"metrics to {self.metrics_endpoint} every {self.export_interval_ms / 1000:g} s"
            + (f", headers {', '.join(names)}" if names else "")
        )


def _signal_endpoint(protocol: str, option: str, signal: str) -> str:
    if option:
        if protocol == "grpc":
            return option
        parts = urlsplit(option)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OtelConfigError(f"OTLP endpoint must be an http:// or https:// URL, not {option!r}")
        return f"{option.rstrip('/')}/v1/{signal}"
    specific = _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific  # the signal-specific variable is the full URL
    base = _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINTS[protocol]
    return base if protocol == "grpc" else f"{base.rstrip('/')}/v1/{signal}"


def resolve_settings(
    enabled: bool,
    endpoint: str,
    protocol: str,
    headers: str,
    export_interval_s: float,
    timeout_s: float | None = None,
) -> OtlpSettings | None:
    """The OTLP settings, or None when OpenTelemetry is not configured (pure: reads only os.environ).

    On when `enabled` or an OTLP endpoint is given (option or OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT);
    off with OTEL_SDK_DISABLED=true. Empty options fall back to the OTEL_* environment, then to the
    defaults (http/protobuf to http://localhost:4318, metrics every 60 s). OTEL_TRACES_EXPORTER=none or
    OTEL_METRICS_EXPORTER=none turns one signal off. Raises OtelConfigError for unusable settings.
    """
    if _truthy(_env("OTEL_SDK_DISABLED")):
        return None
    endpoint = endpoint.strip()
    if not (enabled or endpoint or any(_env(v) for v in _ENDPOINT_VARS)):
        return None
    proto = (protocol.strip() or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or DEFAULT_PROTOCOL).lower()
    if proto not in PROTOCOLS:
        raise OtelConfigError(
            f"OTLP protocol must be one of {', '.join(PROTOCOLS)}, not {proto!r} (http/json is not supported)"
        )
    if export_interval_s < 0:
        raise OtelConfigError("the metric export interval must be 0 (environment or 60 s) or a positive number")
    interval_ms = export_interval_s * 1000
    if not interval_ms:
        try:
            interval_ms = float(_env("OTEL_METRIC_EXPORT_INTERVAL") or DEFAULT_EXPORT_INTERVAL_MS)
        except ValueError as e:
            raise OtelConfigError(f"OTEL_METRIC_EXPORT_INTERVAL must be milliseconds: {e}") from e
        if interval_ms <= 0:
            raise OtelConfigError("OTEL_METRIC_EXPORT_INTERVAL must be positive")
    _check_env_headers()
    timeout = timeout_s
    if timeout is None and not any(_env(v) for v in _TIMEOUT_VARS):
        timeout = DEFAULT_EXPORT_TIMEOUT_S
    return OtlpSettings(
        protocol=proto,
        traces_endpoint=_signal_endpoint(proto, endpoint, "traces"),
        metrics_endpoint=_signal_endpoint(proto, endpoint, "metrics"),
        headers=parse_headers(headers) if headers.strip() else None,
        timeout_s=timeout,
        export_interval_ms=interval_ms,
        traces=_env("OTEL_TRACES_EXPORTER").lower() != "none",
        metrics=_env("OTEL_METRICS_EXPORTER").lower() != "none",
    )
