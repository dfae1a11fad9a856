"""One JSON line per Copilot call (structlog), to a per-UTC-day file under the data dir and/or stdout."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

from exporter import jsoncodec
from exporter.dispatch import Emitted, Health, Observed
from exporter.events import UsageEvent, iso_utc
from exporter.writer import BackgroundWriter

MODES = ("file", "stdout", "both", "off")
_WAKE_AT = 2_000  # pending lines that wake the writer before its next batch
_MAX_PENDING = 200_000  # pending lines kept while the writer falls behind
MAX_PENDING_BYTES = 64 * 1024 * 1024  # pending line bytes kept while the writer is stuck; past it lines are dropped
log = logging.getLogger("copilot_proxy_insight")

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


# URL query parameters whose names say they carry a secret (`?access_token=…`, `&auth=Bearer%20…`, `sig=…`):
# the value up to the next parameter, or a quote or backslash (a rendered JSON line stays valid JSON).
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][\w.%-]*(?:token|secret|passw(?:or)?d|auth|api[_-]?key|sig(?:nature)?|session|credential)"
    r"[\w.%-]*=)[^&\s\"'\\#]+"
)


# Every match of _SECRET_VALUE contains one of these (lower-cased): substring scans in C rule most lines out
# before the case-insensitive regex with its word-boundary tests, several times slower on a long line.
# Before lower-casing a non-ASCII line, the three characters the regex's IGNORECASE matches to an ASCII letter
# of a hint but str.lower() does not map to it (U+017F long s, U+0131 dotless i, U+0130 dotted capital I).
_SECRET_HINTS = ("bearer", "basic", "gho_", "ghu_", "ghp_", "ghs_", "ghr_", "github_pat_", "tid=")
_FOLD = str.maketrans({"\u017f": "s", "\u0131": "i", "\u0130": "i"})


def _hinted(lowered: str) -> bool:
    # Unrolled (a generator over _SECRET_HINTS costs more than the scans themselves); kept equal to the tuple
    # by tests/test_jsonlog.py.
    return (
        "bearer" in lowered
        or "basic" in lowered
        or "gho_" in lowered
        or "ghu_" in lowered
        or "ghp_" in lowered
        or "ghs_" in lowered
        or "ghr_" in lowered
        or "github_pat_" in lowered
        or "tid=" in lowered
    )


def redact_value(value: str) -> str:
    lowered = value.lower() if value.isascii() else value.translate(_FOLD).lower()
    if _hinted(lowered):
        value = _SECRET_VALUE.sub("[REDACTED]", value)
    if "=" in value:  # the query pass only where a query could be (a cheap scan first)
        value = _SECRET_QUERY.sub(r"\1[REDACTED]", value)
    return value


def escape_line_separators(line: str) -> str:
    """U+2028 and U+2029 are valid raw in JSON but end a line for JavaScript and many log viewers: escape them
    (they can only occur inside JSON strings, so the escaped line is the same JSON)."""
    if "\u2028" in line or "\u2029" in line:
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return line


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


def log_path(data_dir: Path, day: str, instance: str = "") -> Path:
    """The day's event log; with an instance id (one replica of several sharing the data dir) its own file."""
    suffix = f".{instance}" if instance else ""
    return data_dir / "events" / f"copilot-events_{day}{suffix}.jsonl"


class _RecordLogger(structlog.BoundLoggerBase):
    """structlog's custom-wrapper pattern (BoundLoggerBase, its processor chain): one call per record with the
    record's fields as one dict. `logger.info(event, **fields)` through structlog's lazy proxy and filtering
    logger repacks the 57 fields of a call's line into a new dict three times over before the chain starts."""

    def record(self, event: str, fields: dict[str, Any]) -> None:
        args, kw = self._process_event("info", event, fields)
        self._logger.msg(*args, **kw)


class _LineSink:
    """structlog's logger: hands each rendered line to the writer thread, which owns the files."""

    def __init__(self, owner: JsonLogSink) -> None:
        self._owner = owner

    def msg(self, line: str) -> None:
        self._owner.enqueue(escape_line_separators(redact_value(line)))

    info = warning = error = debug = msg


def logged(event: UsageEvent, log_skipped: bool) -> bool:
    """Counted calls always; skipped ones that were model calls or failed, unless `log_skipped` is off.
    Telemetry posts that were read always: the daily rebuild reproduces acceptance from their lines."""
    if event.counted or event.telemetry is not None:
        return True
    return log_skipped and (event.model_call or (event.status or 0) >= 400)


def _same_file(f: IO[str], path: Path) -> bool:
    """Whether the open file is still the one at `path` (not deleted, moved or replaced meanwhile)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _open_append(path: Path) -> IO[str]:
    return open(path, "a", encoding="utf-8", errors="replace")  # kept open across batches


class JsonLogSink:
    """Writes each event as one JSON line: the event loop renders and queues it, the writer thread writes.

    The day's file is checked at every batch: deleted or moved (the data dir removed while running), it is
    reopened, the directory recreated, and a batch that went to the lost file is written again. After a
    failed write, a line it cut is completed or ended before anything else is written, so the next line is
    whole."""

    name = "jsonlog"

    def __init__(
        self,
        data_dir: Path,
        mode: str,
        writer: BackgroundWriter,
        stdout: IO[str] | None = None,
        log_skipped: bool = True,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        opener: Callable[[Path], IO[str]] = _open_append,
        instance: str = "",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown JSON log mode {mode!r}")
        self._dir = data_dir
        self._instance = instance
        self._to_file = mode in ("file", "both")
        self._to_stdout = mode in ("stdout", "both")
        self._stdout = stdout if stdout is not None else sys.stdout
        self._writer = writer
        self._log_skipped = log_skipped
        self._open = opener
        self._file: IO[str] | None = None
        self._file_day: str | None = None
        self._day = ""
        self._logger = _RecordLogger(
            _LineSink(self),
            processors=[
                structlog.processors.add_log_level,
                redact,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(serializer=jsoncodec.dumps_line),  # compact, not ASCII-escaped
            ],
            context={},
        )
        self._lines: deque[tuple[str, str]] = deque()
        # Bytes queued and bytes taken, each written by one thread only (the event loop, the writer): their
        # difference is the backlog, without a lock on the event loop's path.
        self._queued_bytes = 0
        self._taken_bytes = 0
        self._max_pending_bytes = max_pending_bytes
        self._dropping = False
        self._failed = False  # the last file write failed (a cut line may need mending)
        writer.every_batch("jsonlog", self._drain)

    @property
    def enabled(self) -> bool:
        return self._to_file or self._to_stdout

    @property
    def pending_bytes(self) -> int:
        return self._queued_bytes - self._taken_bytes

    def handle(self, item: Emitted) -> None:
        self.log(item.event)

    def log(self, event: UsageEvent) -> None:
        if not self.enabled or not logged(event, self._log_skipped):
            return
        self._day = event.day
        self._logger.record(event.name, {"timestamp": iso_utc(event.timestamp), **event.log_fields()})

    def health(self, signal: Health) -> None:
        """Facts that are not calls but carry a log line (e.g. copilot.secret_detected)."""
        if isinstance(signal, Observed) and signal.log_event and self.enabled:
            fields = dict(signal.log_fields)
            self._day = str(fields.get("timestamp", ""))[:10] or self._day
            self._logger.record(signal.log_event, fields)

    def enqueue(self, line: str) -> None:
        """Event loop: keep the line for the writer thread (a deque append; the thread drains every batch).

        Past `max_pending_bytes` of backlog (a writer stuck on a hung disk) the line is dropped and counted."""
        if self._queued_bytes - self._taken_bytes > self._max_pending_bytes:
            self._dropping = True
            self._writer.errors.failed("jsonlog_queue", "JSON log backlog over its byte cap, dropping lines")
            return
        self._queued_bytes += len(line)
        self._lines.append((self._day, line))
        if len(self._lines) == _WAKE_AT:
            self._writer.wake()
        else:
            self._writer.nudge()  # the first line after a quiet spell

    def _drain(self) -> bool:
        """Writer thread: write and flush every pending line; False when there was nothing to write.

        Lines taken for a write that fails are lost (and the failure counted): memory stays bounded
        while the disk is unwritable."""
        if not self._lines:
            return False
        batch = []
        taken = 0
        while self._lines:
            item = self._lines.popleft()
            taken += len(item[1])
            batch.append(item)
        self._taken_bytes += taken
        if self._dropping:
            self._dropping = False
            self._writer.errors.recovered("jsonlog_queue")
        dropped = len(batch) - _MAX_PENDING
        if dropped > 0:
            del batch[:dropped]
        self._write_batch(batch)
        if dropped > 0:
            raise OSError(f"{dropped} JSON log lines dropped: the writer fell behind")
        return True

    def _write_batch(self, batch: list[tuple[str, str]]) -> None:
        if self._to_stdout:
            for _, line in batch:
                # A lone surrogate (from a JSON \\ud800 escape) must not make a line unwritable.
                self._stdout.write((line + "\n").encode("utf-8", "replace").decode("utf-8"))
            self._stdout.flush()
        if not self._to_file:
            return
        try:
            self._check_file()
            self._mend()
            self._write_file(batch)
            if self._file is not None and not _same_file(self._file, self._path(self._file_day or "")):
                # Deleted or moved while this batch was written: write it again to the new file.
                self._reopened("while a batch was written")
                self._write_file(batch)
        except BaseException:
            self._failed = True  # the next batch first mends what this failure may have cut
            raise

    def _mend(self) -> None:
        """After a failed write: write what the file object still holds (the rest of a line a full disk cut,
        kept in its buffer), then end the file's last line if it is still cut (that rest was lost), so the
        next line starts on a line of its own and a rebuild loses only the cut line."""
        if self._failed and self._file is not None:
            self._file.flush()
            if _ends_mid_line(self._path(self._file_day or "")):
                self._file.write("\n")
                self._file.flush()
        self._failed = False

    def _write_file(self, batch: list[tuple[str, str]]) -> None:
        for day, line in batch:
            if self._file is None or self._file_day != day:
                self._close()
                path = self._path(day)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self._open(path)
                self._file_day = day
                if _ends_mid_line(path):
                    # A crash or a failed write cut the last line: end it, so the next line stays whole.
                    self._file.write("\n")
            self._file.write(line + "\n")
        if self._file is not None:
            self._file.flush()

    def _path(self, day: str) -> Path:
        return log_path(self._dir, day, self._instance)

    def _check_file(self) -> None:
        if self._file is not None and not _same_file(self._file, self._path(self._file_day or "")):
            self._reopened("since the last batch")

    def _reopened(self, when: str) -> None:
        path = self._path(self._file_day or "")
        log.warning("copilot-proxy-insight: the event log %s was deleted or moved %s; writing a new one", path, when)
        self._abandon()

    def _abandon(self) -> None:
        """Drop the open file without trusting its buffer (a half-written line must not be written later)."""
        f, self._file, self._file_day = self._file, None, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

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
