"""Daily usage summaries in the original tool's schema, per UTC day, written atomically off the event loop."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from exporter.classify import CHAT_KINDS, Kind
from exporter.dispatch import Emitted, Health
from exporter.events import UsageEvent
from exporter.insight import InsightDay, insight_path
from exporter.writer import BackgroundWriter

_CHAT = frozenset(k.value for k in CHAT_KINDS)
DAY_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
_COMPLETION = Kind.COMPLETION.value


def summary_path(data_dir: Path, day: str, instance: str = "") -> Path:
    """The day's summary; with an instance id (one replica of several sharing the data dir) its own file."""
    suffix = f".{instance}" if instance else ""
    return data_dir / "metrics" / f"copilot-usage_{day}{suffix}.json"


class DaySummary:
    """One UTC day's counts in the original schema: totals and usage.<user>.{chat, completions}."""

    def __init__(self, day: str) -> None:
        self.day = day
        self.total_chat_turns = 0
        self.total_completions_count = 0
        self.usage: dict[str, dict[str, Any]] = {}

    def _user(self, user: str) -> dict[str, Any]:
        entry = self.usage.get(user)
        if entry is None:
            entry = {"chat_turns": 0, "completions_count": 0, "chat": {}, "completions": {}}
            self.usage[user] = entry
        return entry

    def add(self, user: str, kind: str, editor_key: str, language: str, n: int = 1) -> bool:
        """Counts one counted interaction; returns False for kinds the schema does not hold."""
        if kind in _CHAT:
            entry = self._user(user)
            entry["chat_turns"] += n
            entry["chat"][editor_key] = entry["chat"].get(editor_key, 0) + n
            self.total_chat_turns += n
            return True
        if kind == _COMPLETION:
            entry = self._user(user)
            entry["completions_count"] += n
            langs = entry["completions"].setdefault(editor_key, {})
            langs[language] = langs.get(language, 0) + n
            self.total_completions_count += n
            return True
        return False

    def add_event(self, event: UsageEvent) -> bool:
        if not event.counted:
            return False
        return self.add(event.user, event.kind, event.summary_key, event.language)

    def merge(self, doc: Any) -> None:
        """Adds the counts of a summary document (a file written earlier the same day)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("usage"), dict):
            raise ValueError("not a daily summary document")
        for user, entry in doc["usage"].items():
            if not isinstance(entry, dict):
                continue
            chat = entry.get("chat")
            for key, count in chat.items() if isinstance(chat, dict) else ():
                if isinstance(count, int) and count > 0:
                    self.add(str(user), Kind.CHAT.value, str(key), "unknown", count)
            completions = entry.get("completions")
            for key, langs in completions.items() if isinstance(completions, dict) else ():
                if not isinstance(langs, dict):
                    continue
                for lang, count in langs.items():
                    if isinstance(count, int) and count > 0:
                        self.add(str(user), _COMPLETION, str(key), str(lang), count)

    def to_doc(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "total_chat_turns": self.total_chat_turns,
            "total_completions_count": self.total_completions_count,
            "usage": self.usage,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), indent=4, ensure_ascii=False)


def write_atomically(path: Path, text: str) -> None:
    """tmp file in the same directory + fsync + os.replace: readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temp_files(directory: Path, instance: str = "") -> None:
    """Temp files of summary writes that a killed process left behind: never this process's own, and only
    those of this instance's files (other replicas sharing the directory may be writing theirs)."""
    mine = f".{os.getpid()}.tmp"
    # `.copilot-usage_<day>.json.<pid>.tmp`, or `.copilot-usage_<day>.<instance>.json.<pid>.tmp`
    files = f"{DAY_GLOB}.{instance}.json.*.tmp" if instance else f"{DAY_GLOB}.json.*.tmp"
    for tmp in [*directory.glob(f".copilot-usage_{files}"), *directory.glob(f".copilot-insight_{files}")]:
        if not tmp.name.endswith(mine):
            tmp.unlink(missing_ok=True)


def parse_log_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of an event log, and the number of unreadable lines (cut by a crash: never counted)."""
    records: list[dict[str, Any]] = []
    bad = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def summary_from_records(day: str, records: Iterable[Mapping[str, Any]]) -> DaySummary:
    """Rebuilds a day's original-schema summary from parsed JSON log records."""
    summary = DaySummary(day)
    for rec in records:
        if rec.get("counted") is not True or str(rec.get("timestamp", ""))[:10] != day:
            continue
        summary.add(
            str(rec.get("user") or "anonymous"),
            str(rec.get("kind") or ""),
            str(rec.get("summary_key") or "unknown"),
            str(rec.get("language") or "unknown"),
        )
    return summary


def summary_from_log_lines(day: str, lines: Iterable[str]) -> tuple[DaySummary, int]:
    """Rebuilds a day from JSON log lines; returns the summary and the number of unreadable lines."""
    records, bad = parse_log_lines(lines)
    return summary_from_records(day, records), bad


class _Book:
    """One kind of daily file (original or extended): the days counted in memory, merged once with the file
    already on disk (restart continuity), written atomically when dirty."""

    def __init__(self, data_dir: Path, path: Callable[[Path, str], Path], new: Callable[[str], Any]) -> None:
        self._dir = data_dir
        self._path = path
        self._new = new
        self.days: dict[str, Any] = {}
        self.loaded: set[str] = set()
        self.dirty: set[str] = set()

    def add(self, event: UsageEvent) -> None:
        day = event.day
        summary = self.days.get(day)
        if summary is None:
            summary = self.days[day] = self._new(day)
        if summary.add_event(event):
            self.dirty.add(day)

    def flush(self, lock: threading.Lock) -> None:
        with lock:
            dirty = sorted(self.dirty)
        for day in dirty:
            path = self._path(self._dir, day)
            if day not in self.loaded:
                base = self._load(path, day)
                with lock:
                    base.merge(self.days[day].to_doc())
                    self.days[day] = base
                    self.loaded.add(day)
            with lock:
                # The C encoder (no indent) is fast enough to hold the lock the event loop also takes;
                # the indented rendering happens after it is released.
                compact = json.dumps(self.days[day].to_doc(), ensure_ascii=False)
                self.dirty.discard(day)
            text = json.dumps(json.loads(compact), indent=4, ensure_ascii=False)
            try:
                write_atomically(path, text)
            except OSError:
                with lock:
                    self.dirty.add(day)
                raise
        # Keep only today and yesterday in memory (a late event for yesterday still lands right).
        with lock:
            for day in sorted(self.days)[:-2]:
                if day not in self.dirty:
                    del self.days[day]
                    self.loaded.discard(day)

    def _load(self, path: Path, day: str) -> Any:
        summary = self._new(day)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return summary
        try:
            summary.merge(json.loads(text))
        except ValueError:
            # Never overwrite what we cannot read: keep it aside and start from the JSON log's counts.
            os.replace(path, path.with_name(f"{path.name}.corrupt"))
            raise
        return summary


class DailySink:
    """Counts events into the current UTC day in memory (the original summary and the extended one); the
    writer thread flushes both every interval."""

    name = "daily"

    def __init__(self, data_dir: Path, writer: BackgroundWriter, instance: str = "") -> None:
        self._dir = data_dir
        self._instance = instance
        self._lock = threading.Lock()
        self._books = (
            _Book(data_dir, lambda d, day: summary_path(d, day, instance), DaySummary),
            _Book(data_dir, lambda d, day: insight_path(d, day, instance), InsightDay),
        )
        self._swept = False
        writer.every_interval("daily", self.flush)

    def handle(self, item: Emitted) -> None:
        event = item.event
        if not (event.counted or event.model_call or event.telemetry is not None):
            return
        with self._lock:
            for book in self._books:
                book.add(event)

    def health(self, signal: Health) -> None:
        return None

    def close(self) -> None:
        return None  # the writer runs a last flush when it stops

    def flush(self) -> None:
        """Writer thread: write every day with new counts, original file first."""
        if not self._swept:
            self._swept = True
            remove_stale_temp_files(self._dir / "metrics", self._instance)
        failure: OSError | None = None
        for book in self._books:
            try:
                book.flush(self._lock)
            except OSError as e:  # the other file is still written; the failure is reported once
                failure = failure or e
        if failure is not None:
            raise failure
