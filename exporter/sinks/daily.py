"""Daily usage summaries in the original tool's schema, per UTC day, written atomically off the event loop."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from exporter.classify import CHAT_KINDS, Kind
from exporter.events import UsageEvent
from exporter.writer import BackgroundWriter

_CHAT = frozenset(k.value for k in CHAT_KINDS)
_COMPLETION = Kind.COMPLETION.value


def summary_path(data_dir: Path, day: str) -> Path:
    return data_dir / "metrics" / f"copilot-usage_{day}.json"


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


def remove_stale_temp_files(directory: Path) -> None:
    """Temp files of summary writes that a killed process left behind (never this process's own)."""
    mine = f".{os.getpid()}.tmp"
    for tmp in directory.glob(".copilot-usage_*.tmp"):
        if not tmp.name.endswith(mine):
            tmp.unlink(missing_ok=True)


def summary_from_log_lines(day: str, lines: Iterable[str]) -> tuple[DaySummary, int]:
    """Rebuilds a day from JSON log lines; returns the summary and the number of unreadable lines."""
    summary = DaySummary(day)
    bad = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1  # a line cut by a crash: it was never complete, so never counted
            continue
        if not isinstance(rec, dict) or rec.get("counted") is not True:
            continue
        if str(rec.get("timestamp", ""))[:10] != day:
            continue
        summary.add(
            str(rec.get("user") or "anonymous"),
            str(rec.get("kind") or ""),
            str(rec.get("summary_key") or "unknown"),
            str(rec.get("language") or "unknown"),
        )
    return summary, bad


class DailySink:
    """Counts events into the current UTC day in memory; the writer thread flushes it every interval."""

    def __init__(self, data_dir: Path, writer: BackgroundWriter) -> None:
        self._dir = data_dir
        self._lock = threading.Lock()
        self._days: dict[str, DaySummary] = {}  # days with counts not yet merged with their file
        self._loaded: set[str] = set()
        self._dirty: set[str] = set()
        self._swept = False
        writer.every_interval("daily", self.flush)

    def handle(self, event: UsageEvent, detail: object = None) -> None:
        if not event.counted:
            return
        day = event.day
        with self._lock:
            summary = self._days.get(day)
            if summary is None:
                summary = self._days[day] = DaySummary(day)
            if summary.add_event(event):
                self._dirty.add(day)

    def flush(self) -> None:
        """Writer thread: merge each dirty day with its file once (restart continuity), then write it."""
        if not self._swept:
            self._swept = True
            remove_stale_temp_files(self._dir / "metrics")
        with self._lock:
            dirty = sorted(self._dirty)
        for day in dirty:
            path = summary_path(self._dir, day)
            if day not in self._loaded:
                base = self._load(path, day)
                with self._lock:
                    base.merge(self._days[day].to_doc())
                    self._days[day] = base
                    self._loaded.add(day)
            with self._lock:
                # The C encoder (no indent) is fast enough to hold the lock the event loop also takes;
                # the indented rendering happens after it is released.
                compact = json.dumps(self._days[day].to_doc(), ensure_ascii=False)
                self._dirty.discard(day)
            text = json.dumps(json.loads(compact), indent=4, ensure_ascii=False)
            try:
                write_atomically(path, text)
            except OSError:
                with self._lock:
                    self._dirty.add(day)
                raise
        # Keep only today and yesterday in memory (a late event for yesterday still lands right).
        with self._lock:
            for day in sorted(self._days)[:-2]:
                if day not in self._dirty:
                    del self._days[day]
                    self._loaded.discard(day)

    def _load(self, path: Path, day: str) -> DaySummary:
        summary = DaySummary(day)
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
