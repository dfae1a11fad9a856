"""The secret scanner: a bounded queue and one worker thread, so scanning never delays or changes a request."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter import jsoncodec
from exporter.events import iso_utc
from exporter.secrets import find_secrets, fingerprint, might_hold_secrets, nearest_path, path_hints
from exporter.values import quick_init

log = logging.getLogger("copilot_proxy_insight")

SECRET_EVENT = "copilot.secret_detected"
# Why a body (or part of one) went unscanned: the `reason` label of copilot_secret_scans_skipped_total.
QUEUE_FULL = "queue_full"
TRUNCATED = "truncated"
UNDECODABLE = "undecodable"
SCAN_ERROR = "error"
SKIP_REASONS = (QUEUE_FULL, TRUNCATED, UNDECODABLE, SCAN_ERROR)

BATCH_SECONDS = 0.1  # the worker wakes this often (or when the queue is half full) and scans what is queued
IDLE_SECONDS = 1.0  # after rounds with nothing queued the worker's waits double up to this (an idle proxy)
REPEAT_WINDOW_S = 24 * 3600.0  # a secret already reported for a user is reported again after this long
MAX_REMEMBERED = 50_000
MAX_DEPTH = 64
# Where in a body a secret was: a fixed vocabulary (role and item types from the network are not kept).
LOCATIONS = frozenset({"prompt", "suffix", "system", "user", "assistant", "tool_result", "tool_call", "body"})
_ROLE_LOCATIONS = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TOOL_RESULT_TYPES = frozenset({"tool_result", "function_call_output", "mcp_tool_result", "custom_tool_call_output"})
_TOOL_CALL_TYPES = frozenset({"tool_use", "function_call", "mcp_call", "mcp_tool_use", "custom_tool_call"})
_TOP_LOCATIONS = {"prompt": "prompt", "suffix": "suffix", "system": "system", "instructions": "system"}


@quick_init
@dataclass(frozen=True, slots=True)
class ScanJob:
    """One decoded request body (or WebSocket frame) and who sent it; `body` is already cut to the byte cap."""

    started: float  # the call's start (the tracker's clock)
    user: str
    editor: str
    kind: str
    model: str | None
    request_id: str | None
    interaction_id: str | None
    body: bytes
    parsed: Any = None  # the body already parsed as JSON (bodies.read_request), None: parsed by the scan


@quick_init
@dataclass(frozen=True, slots=True)
class SecretFinding:
    """One credential in one request: who, where and a keyed fingerprint; never the secret or its context."""

    started: float
    user: str
    editor: str
    kind: str
    model: str | None
    secret_type: str
    location: str
    path_hint: str | None
    fingerprint: str
    request_id: str | None
    interaction_id: str | None

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.started, UTC)

    def log_fields(self) -> dict[str, Any]:
        """The `copilot.secret_detected` line's fields (without event/level, which the logger adds)."""
        return {
            "timestamp": iso_utc(self.timestamp),
            "user": self.user,
            "editor": self.editor,
            "kind": self.kind,
            "model": self.model,
            "secret_type": self.secret_type,
            "location": self.location,
            "path_hint": self.path_hint,
            "fingerprint": self.fingerprint,
            "request_id": self.request_id,
            "interaction_id": self.interaction_id,
        }


def _location(obj: dict[str, Any], parent: str) -> str:
    kind = obj.get("type")
    if not isinstance(kind, str):  # {"type": []} must not end the scan (a list is unhashable)
        kind = None
    if kind in _TOOL_RESULT_TYPES or obj.get("role") == "tool":
        return "tool_result"
    if kind in _TOOL_CALL_TYPES:
        return "tool_call"
    role = obj.get("role")
    if isinstance(role, str) and role in _ROLE_LOCATIONS:
        return _ROLE_LOCATIONS[role]
    return parent


def texts(doc: Any) -> Iterator[tuple[str, str]]:
    """(location, text) of every string in a parsed body, in document order, without recursion (a hostile
    body nested 10,000 deep is walked to MAX_DEPTH and no further)."""
    stack: list[tuple[Any, str, int]] = [(doc, "body", 0)]
    while stack:
        obj, where, depth = stack.pop()
        if isinstance(obj, str):
            yield where, obj
        elif depth >= MAX_DEPTH:
            continue
        elif isinstance(obj, dict):
            here = _location(obj, where)
            children = []
            for key, value in obj.items():
                if isinstance(value, str | dict | list):
                    at = _TOP_LOCATIONS.get(key, here) if depth == 0 else here
                    if key == "tool_calls" or (key == "arguments" and here != "tool_result"):
                        at = "tool_call"
                    children.append((value, at, depth + 1))
            stack.extend(reversed(children))
        elif isinstance(obj, list):
            stack.extend((item, where, depth + 1) for item in reversed(obj) if isinstance(item, str | dict | list))


def strings(doc: Any) -> list[str]:
    """Every string of a parsed body that `texts` yields (and, past MAX_DEPTH, a few more), without their
    locations: a cheaper walk for the needle pre-check, which most bodies fail."""
    out: list[str] = []
    stack: list[tuple[Any, int]] = [(doc, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        obj, depth = pop()
        if isinstance(obj, str):
            out.append(obj)
        elif depth < MAX_DEPTH:
            if isinstance(obj, dict):
                obj = obj.values()
            elif not isinstance(obj, list):
                continue
            for item in obj:
                if isinstance(item, str):
                    out.append(item)
                elif isinstance(item, dict | list):
                    push((item, depth + 1))
    return out


def parse_body(body: bytes, parsed: Any = None) -> Iterator[tuple[str, str]]:
    """The texts of a JSON body; a body that is not JSON (or too deep for the parser) is scanned as text.
    `parsed`: the body already parsed (the same bytes), else it is parsed here."""
    if parsed is not None:
        yield from texts(parsed)
        return
    try:
        doc = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        yield "body", body.decode("utf-8", "replace")
        return
    yield from texts(doc)


def scan_job(job: ScanJob, key: bytes) -> list[SecretFinding]:
    """Every distinct secret of one body, with the file path named last before it (in the same text, else
    in an earlier part: a tool result after the read_file call that named the file)."""
    doc = job.parsed
    if doc is None:
        try:
            doc = jsoncodec.loads(job.body)
        except (ValueError, RecursionError):
            doc = None
    if doc is not None and not might_hold_secrets(strings(doc)):
        return []  # most bodies: not one needle of any pattern in any of their texts
    parts = list(parse_body(job.body, doc))
    hits = [find_secrets(text) for _, text in parts]
    if not any(hits):
        return []  # the common case: no path hint is needed
    found: dict[str, SecretFinding] = {}
    carried: str | None = None
    for (where, text), text_hits in zip(parts, hits, strict=True):
        hints = list(path_hints(text))
        for hit in text_hits:
            mark = fingerprint(key, hit.type, hit.value)
            if mark in found:
                continue
            hint = nearest_path(hints, hit.start, carried)
            if hint is not None and (hit.value in hint or hint in hit.value):
                hint = None
            found[mark] = SecretFinding(
                job.started,
                job.user,
                job.editor,
                job.kind,
                job.model,
                hit.type,
                where,
                hint[:256] if hint else None,
                mark,
                job.request_id,
                job.interaction_id,
            )
        if hints:
            carried = hints[-1][1]
    return list(found.values())


Deliver = Callable[[list[SecretFinding], list[str]], None]
Post = Callable[[Callable[[], None]], None]
ScanFn = Callable[[ScanJob, bytes], list[SecretFinding]]


def _direct(fn: Callable[[], None]) -> None:
    fn()


class Scanner:
    """Takes jobs from the event loop (never blocking: a full queue skips the body and counts it), scans them
    on one worker thread and hands findings and skips back through `post` (the event loop's
    call_soon_threadsafe when running under mitmproxy). Repeats of a secret for a user are reported once
    per REPEAT_WINDOW_S: agent loops and chat turns resend the whole conversation every round.

    Submitting does not wake the worker (as with exporter.writer): a thread woken for every body takes the
    GIL from the event loop at once, and that hand-off costs more than many scans. The worker wakes every
    `batch_seconds`, or as soon as the queue is half full, and scans everything queued; after rounds that
    found nothing its waits double, up to `idle_seconds`, and the first body after such a quiet spell wakes it
    (one hand-off per quiet spell, not per body)."""

    def __init__(
        self,
        deliver: Deliver,
        scan: ScanFn = scan_job,
        clock: Callable[[], float] = time.time,
        batch_seconds: float = BATCH_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._deliver = deliver
        self._scan = scan
        self._clock = clock
        self.enabled = False
        self.max_bytes = 1_000_000
        self.key = b""
        self.post: Post = _direct
        self._queue: queue.Queue[ScanJob | None] = queue.Queue(maxsize=64)
        self._wake = threading.Event()
        self._batch_seconds = batch_seconds
        self._idle_seconds = idle_seconds
        self._idle = False  # the worker is in a wait longer than a batch: the next submit wakes it
        self._thread: threading.Thread | None = None
        self._reported: OrderedDict[tuple[str, str], float] = OrderedDict()

    def configure(self, enabled: bool, max_bytes: int, queue_size: int, key: bytes) -> None:
        """Applies the options; a new queue size takes effect with a new queue (the old one drains first)."""
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.key = key
        if queue_size != self._queue.maxsize:
            self.stop()
            self._queue = queue.Queue(maxsize=queue_size)
        if enabled:
            self.start()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="copilot-proxy-insight-scanner", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Lets the worker finish the queued jobs, then ends it."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._wake.set()  # a full queue makes room as soon as the worker drains it
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return  # a stuck worker: it is a daemon thread and dies with the process
        self._wake.set()
        thread.join(timeout)

    def submit(self, job: ScanJob) -> None:
        """Event loop: queue a body for scanning. O(1): at most a slice to the byte cap; never waits."""
        if not self.enabled:
            return
        skipped = []
        if len(job.body) > self.max_bytes:
            skipped.append(TRUNCATED)
            cut = job.body[: self.max_bytes]
            job = ScanJob(  # without the parsed body: the cut bytes are what is scanned
                job.started, job.user, job.editor, job.kind, job.model, job.request_id, job.interaction_id, cut
            )
        jobs = self._queue
        try:
            jobs.put_nowait(job)
        except queue.Full:
            skipped = [QUEUE_FULL]
        else:
            if self._idle or 2 * jobs.qsize() >= jobs.maxsize:
                self._idle = False
                self._wake.set()
        if skipped:
            self._deliver([], skipped)

    def skipped(self, reason: str) -> None:
        """Event loop: a body that could not be scanned at all (e.g. its Content-Encoding failed)."""
        if self.enabled:
            self._deliver([], [reason])

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Tests and benchmarks (never the event loop): True once every queued job has been scanned and
        delivered. Waits on the queue's own condition, which task_done() notifies when the count reaches 0."""
        jobs = self._queue
        self._wake.set()
        with jobs.all_tasks_done:
            return jobs.all_tasks_done.wait_for(lambda: not jobs.unfinished_tasks, timeout)

    def _run(self, jobs: queue.Queue[ScanJob | None]) -> None:
        wait = self._batch_seconds
        while True:
            self._idle = wait > self._batch_seconds
            self._wake.wait(wait)
            self._wake.clear()
            self._idle = False
            wait = min(2 * wait, max(self._batch_seconds, self._idle_seconds))
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                wait = self._batch_seconds
                try:
                    if job is None:
                        return
                    self._one(job)
                finally:
                    jobs.task_done()

    def _one(self, job: ScanJob) -> None:
        try:
            findings = self._scan(job, self.key)
        except Exception as e:  # a detector bug must not end the worker: count it and go on
            log.warning("copilot-proxy-insight: secret scan failed: %s", type(e).__name__)
            findings, skipped = [], [SCAN_ERROR]
        else:
            skipped = []
        fresh = [f for f in findings if self._fresh(f)]
        if fresh or skipped:
            self.post(lambda: self._deliver(fresh, skipped))

    def _fresh(self, finding: SecretFinding) -> bool:
        """Worker thread only (it owns `_reported`): whether this user's secret was not reported recently."""
        key = (finding.user, finding.fingerprint)
        now = self._clock()
        last = self._reported.get(key)
        if last is not None and now - last < REPEAT_WINDOW_S:
            return False
        self._reported[key] = now
        self._reported.move_to_end(key)
        while len(self._reported) > MAX_REMEMBERED:
            self._reported.popitem(last=False)
        return True
