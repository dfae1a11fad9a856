"""A background thread that does every file write, so mitmproxy's event loop never waits on a disk."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("copilot_proxy_insight")

Job = Callable[[], None]


class ErrorReporter:
    """Counts a component's failures and logs the first one of each run of failures (not every one)."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self._count = count
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def failed(self, component: str, error: BaseException | str) -> None:
        self._count(component)
        with self._lock:
            first = component not in self._failing
            self._failing.add(component)
        if first:
            log.error(
                "copilot-proxy-insight: %s failed: %s (traffic still passes; counted in copilot_exporter_errors_total)",
                component,
                error,
            )

    def recovered(self, component: str) -> None:
        if component in self._failing:
            with self._lock:
                self._failing.discard(component)
            log.warning("copilot-proxy-insight: %s works again", component)


class BackgroundWriter:
    """Runs submitted jobs in order on one thread; runs periodic jobs every `interval` and at stop."""

    def __init__(self, errors: ErrorReporter, interval: float = 5.0, max_pending: int = 200_000) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._errors = errors
        self._interval = interval
        self._max_pending = max_pending
        self._periodic: dict[str, Job] = {}
        self._after_batch: dict[str, Job] = {}
        self._thread: threading.Thread | None = None

    def every_interval(self, component: str, job: Job) -> None:
        """Run `job` every interval and at stop; registering a component again replaces its job."""
        self._periodic[component] = job

    def after_batch(self, component: str, job: Job) -> None:
        """Run `job` after each batch of submitted jobs (e.g. flush a file once per batch)."""
        self._after_batch[component] = job

    def set_interval(self, seconds: float) -> None:
        self._interval = seconds

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="copilot-proxy-insight-writer", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, component: str, job: Job) -> None:
        if self._queue.qsize() >= self._max_pending:
            self._errors.failed(f"{component}_queue", "write queue full, dropping a write")
            return
        self._queue.put(lambda: self._guard(component, job))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far, and one round of periodic jobs, is done."""
        if not self.running:
            self._drain_inline()
            return True
        done = threading.Event()
        self._queue.put(self._periodic_round)
        self._queue.put(done.set)
        return done.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            self._drain_inline()
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _guard(self, component: str, job: Job) -> None:
        try:
            job()
        except Exception as e:  # a failing write is counted and logged, never raised
            self._errors.failed(component, e)
        else:
            self._errors.recovered(component)

    def _periodic_round(self) -> None:
        for component, job in list(self._periodic.items()):
            self._guard(component, job)

    def _after(self) -> None:
        for component, job in list(self._after_batch.items()):
            self._guard(component, job)

    def _drain_inline(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job()
        self._after()
        self._periodic_round()

    def _run(self) -> None:
        stopping = False
        last_round = time.monotonic()
        while not stopping:
            try:
                job = self._queue.get(timeout=max(0.01, self._interval - (time.monotonic() - last_round)))
            except queue.Empty:
                self._periodic_round()
                last_round = time.monotonic()
                continue
            batch = 0
            while True:
                if job is None:
                    stopping = True
                else:
                    job()
                    batch += 1
                if stopping or batch >= 10_000:
                    break
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._after()
            if time.monotonic() - last_round >= self._interval:
                self._periodic_round()
                last_round = time.monotonic()
            if stopping:
                # Drain what arrived before the stop marker's turn, then the last periodic round.
                self._drain_inline()
