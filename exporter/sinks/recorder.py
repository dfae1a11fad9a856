"""Opt-in recording of Copilot requests and responses (the original tool's prompt recording), redacted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from exporter.classify import Kind
from exporter.dispatch import Emitted, Health
from exporter.events import UsageEvent, iso_utc
from exporter.secrets import mask_secrets
from exporter.sinks.jsonlog import redact_value
from exporter.values import quick_init
from exporter.writer import BackgroundWriter

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-github-token",
        "copilot-session-token",
        "copilot-edits-session",
        "x-api-key",
        "api-key",
    }
)
_SECRET_BODY_KEYS = frozenset({"token", "access_token", "refresh_token", "password", "session_token"})
_UNSAFE_PATH = re.compile(r"[^A-Za-z0-9._@-]")
# Query parameter names that carry secrets (matched on the decoded name, as a part of it: `x_access_token`).
_SECRET_QUERY_NAME = re.compile(r"(?i)token|secret|passw(?:or)?d|auth|api[_-]?key|sig(?:nature)?|session|credential")
MAX_RECORDED_EVENTS = 1_000  # parsed answer events written per recording; the rest are counted, not kept
REDACTED = "[REDACTED]"


def redact_url(url: str) -> str:
    """The URL with secret-named query values masked, and token-shaped values masked after URL-decoding
    (`auth=Bearer%20…`, `q=gho%5F…`); the path too. Parameters without a secret keep their exact bytes."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_value(unquote(url))
    path = parts.path
    if redact_value(unquote(path)) != unquote(path):
        path = redact_value(unquote(path))
    kept = []
    for param in parts.query.split("&") if parts.query else []:
        name, eq, value = param.partition("=")
        decoded = unquote_plus(value)
        if _SECRET_QUERY_NAME.search(unquote_plus(name)) and value:
            param = f"{name}={REDACTED}"
        elif redact_value(decoded) != decoded:
            param = f"{name}{eq}{redact_value(decoded)}"
        kept.append(param)
    netloc = parts.netloc
    if "@" in netloc:  # user:password@host
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    return urlunsplit((parts.scheme, netloc, path, "&".join(kept), redact_value(unquote(parts.fragment))))


def redact_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = "[REDACTED]" if key in SECRET_HEADERS else redact_value(value)
    return out


def redact_body(value: Any, depth: int = 0) -> Any:
    """Masks token-named keys and token-shaped strings anywhere in a parsed body."""
    if depth > 64:
        return "[TOO DEEP]"
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if str(k).lower() in _SECRET_BODY_KEYS else redact_body(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_body(v, depth + 1) for v in value]
    if isinstance(value, str) and len(value) > 8:
        return mask_secrets(redact_value(value))  # credentials the secret scanner knows, too
    return value


def safe_path_part(value: str) -> str:
    part = _UNSAFE_PATH.sub("_", value)[:64].strip(".")
    return part or "_"


@quick_init
@dataclass(frozen=True, slots=True)
class Recording:
    """What the recorder needs beyond the UsageEvent; built only when recording is on."""

    url: str
    method: str
    request_headers: list[tuple[str, str]]
    request_content: Any  # parsed JSON, or the (capped) text when it is not JSON
    response_headers: list[tuple[str, str]]
    response_content: Any  # list of parsed stream events, or the parsed JSON body


# Calls that carry credentials or account data rather than prompts: never recorded.
_NEVER_RECORDED = frozenset({Kind.TOKEN_EXCHANGE.value, Kind.USER_INFO.value, Kind.ENDPOINT_DISCOVERY.value})


def wants_recording(kind: str, record_telemetry: bool) -> bool:
    """Whether a call of `kind` is recorded (telemetry posts only when asked for)."""
    if kind == Kind.TELEMETRY.value:
        return record_telemetry
    return kind not in _NEVER_RECORDED


class RecorderSink:
    """Writes each recording it is handed (the tracker builds them only when recording is on)."""

    name = "recorder"

    def __init__(self, data_dir: Path, writer: BackgroundWriter, record_telemetry: bool) -> None:
        self._dir = data_dir
        self._writer = writer
        self._record_telemetry = record_telemetry

    def wants(self, kind: str) -> bool:
        return wants_recording(kind, self._record_telemetry)

    def handle(self, item: Emitted) -> None:
        rec, event = item.recording, item.event
        if not isinstance(rec, Recording) or not self.wants(event.kind):
            return
        self._writer.submit("recorder", lambda: self._write(event, rec))

    def health(self, signal: Health) -> None:
        return None

    def close(self) -> None:
        return None  # writes are jobs of the shared writer, which drains them when it stops

    def _write(self, event: UsageEvent, rec: Recording) -> None:
        doc = {
            "user": event.user,
            "timestamp": iso_utc(event.timestamp),
            "proxy-time-consumed": f"{event.duration_s * 1000:.2f}ms" if event.duration_s is not None else None,
            "kind": event.kind,
            "counted": event.counted,
            "skip_reason": event.skip_reason,
            "request": {
                "url": redact_url(rec.url),
                "method": rec.method,
                "headers": redact_headers(rec.request_headers),
                "content": redact_body(rec.request_content),
            },
            "response": {
                "status_code": event.status,
                "headers": redact_headers(rec.response_headers),
                "content": redact_body(_capped_events(rec.response_content)),
            },
        }
        stamp = event.timestamp.strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}_{safe_path_part(event.request_id or 'no-request-id')}.json"
        path = self._dir / "usage" / safe_path_part(event.user) / safe_path_part(event.kind) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(doc, indent=4, ensure_ascii=False, default=str))


def _capped_events(content: Any) -> Any:
    if isinstance(content, list) and len(content) > MAX_RECORDED_EVENTS:
        return [
            *content[:MAX_RECORDED_EVENTS],
            {"truncated": True, "events_left_out": len(content) - MAX_RECORDED_EVENTS},
        ]
    return content


def _write_atomically(path: Path, text: str) -> None:
    """A reader (or a crash) sees the whole recording or none of it: write a temp file, then rename it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
