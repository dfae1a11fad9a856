"""One JSON line per Copilot call (structlog), to a per-UTC-day file under the data dir and/or stdout."""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

from exporter.dispatch import Emitted, Health, Observed
from exporter.events import UsageEvent, iso_utc
from exporter.writer import BackgroundWriter

MODES = ("file", "stdout", "both", "off")
_WAKE_AT = 2_000  # pending lines that wake the writer before its next batch
_MAX_PENDING = 200_000  # pending lines kept while the writer falls behind

# Values that must never reach a log, whatever field they turn up in.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy_authorization",
        "cookie",
        "set-cookie",
        "password",
        "token",
        "access_token",
        "refresh_token",
    }
)
# Token-shaped strings. The character classes stop at quotes and backslashes, so masking a rendered JSON
# line never eats the backslash of an escape or a closing quote: the line stays valid JSON.
_SECRET_VALUE = re.compile(
    r"(?i)\b(?:bearer\s+[^\s\"'\\]+|basic\s+[A-Za-z0-9+/=]{8,}|gh[oupsr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|tid=[0-9a-f]{8,}[^\s\"'\\]*)"
)


def redact_value(value: str) -> str:
    return _SECRET_VALUE.sub("[REDACTED]", value)


def redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replaces secret-named fields. Token-shaped strings in any value are masked
    on the rendered line (one regex pass per line instead of one per field)."""
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[REDACTED]"
    return event_dict


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def log_path(data_dir: Path, day: str) -> Path:
    return data_dir / "events" / f"copilot-events_{day}.jsonl"


class _LineSink:
    """structlog's logger: hands each rendered line to the writer thread, which owns the files."""

    def __init__(self, owner: JsonLogSink) -> None:
        self._owner = owner

    def msg(self, line: str) -> None:
        self._owner.enqueue(redact_value(line))

    info = warning = error = debug = msg


def logged(event: UsageEvent, log_skipped: bool) -> bool:
    """Counted calls always; skipped ones that were model calls or failed, unless `log_skipped` is off."""
    return event.counted or (log_skipped and (event.model_call or (event.status or 0) >= 400))


class JsonLogSink:
    name = "jsonlog"

    def __init__(
        self,
        data_dir: Path,
        mode: str,
        writer: BackgroundWriter,
        stdout: IO[str] | None = None,
        log_skipped: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown JSON log mode {mode!r}")
        self._dir = data_dir
        self._to_file = mode in ("file", "both")
        self._to_stdout = mode in ("stdout", "both")
        self._stdout = stdout if stdout is not None else sys.stdout
        self._writer = writer
        self._log_skipped = log_skipped
        self._file: IO[str] | None = None
        self._file_day: str | None = None
        self._day = ""
        self._logger = structlog.wrap_logger(
            _LineSink(self),
            processors=[
                structlog.processors.add_log_level,
                redact,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            cache_logger_on_first_use=True,
        )
        self._lines: deque[tuple[str, str]] = deque()
        writer.every_batch("jsonlog", self._drain)

    @property
    def enabled(self) -> bool:
        return self._to_file or self._to_stdout

    def handle(self, item: Emitted) -> None:
        self.log(item.event)

    def log(self, event: UsageEvent) -> None:
        if not self.enabled or not logged(event, self._log_skipped):
            return
        self._day = event.day
        self._logger.info(event.name, timestamp=iso_utc(event.timestamp), **event.log_fields())

    def health(self, signal: Health) -> None:
        """Facts that are not calls but carry a log line (e.g. copilot.secret_detected)."""
        if isinstance(signal, Observed) and signal.log_event and self.enabled:
            fields = dict(signal.log_fields)
            self._day = str(fields.get("timestamp", ""))[:10] or self._day
            self._logger.info(signal.log_event, **fields)

    def enqueue(self, line: str) -> None:
        """Event loop: keep the line for the writer thread (a deque append; the thread drains every batch)."""
        self._lines.append((self._day, line))
        if len(self._lines) == _WAKE_AT:
            self._writer.wake()

    def _drain(self) -> bool:
        """Writer thread: write and flush every pending line; False when there was nothing to write.

        Lines taken for a write that fails are lost (and the failure counted): memory stays bounded
        while the disk is unwritable."""
        if not self._lines:
            return False
        batch = []
        while self._lines:
            batch.append(self._lines.popleft())
        dropped = len(batch) - _MAX_PENDING
        if dropped > 0:
            del batch[:dropped]
        for day, line in batch:
            self._write(day, line)
        self._flush()
        if dropped > 0:
            raise OSError(f"{dropped} JSON log lines dropped: the writer fell behind")
        return True

    def _write(self, day: str, line: str) -> None:
        if self._to_stdout:
            # A lone surrogate (from a JSON \\ud800 escape) must not make a line unwritable.
            self._stdout.write((line + "\n").encode("utf-8", "replace").decode("utf-8"))
        if self._to_file:
            if self._file is None or self._file_day != day:
                self._close()
                path = log_path(self._dir, day)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (kept open across batches)
                self._file_day = day
                if _ends_mid_line(path):
                    # A crash cut the last line: end it, so this run's first line stays whole.
                    self._file.write("\n")
            self._file.write(line + "\n")

    def _flush(self) -> None:
        if self._to_stdout:
            self._stdout.flush()
        if self._file is not None:
            self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
                self._file_day = None

    def close(self) -> None:
        """Writer thread (or after it stopped): flush and close the day file."""
        self._flush()
        self._close()
