"""A background thread that does every file write, so mitmproxy's event loop never waits on a disk."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("copilot_proxy_insight")

Job = Callable[[], None]
BatchJob = Callable[[], bool]


class ErrorReporter:
    """Counts a component's failures and logs the first one of each run of failures (not every one)."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self._count = count
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def failed(self, component: str, error: BaseException | str, level: int = logging.ERROR) -> None:
        """Count the failure; log it when it starts a run of failures. `level` WARNING for failures that must
        not stop mitmdump's start-up (its errorcheck addon exits on any ERROR logged while starting)."""
        self._count(component)
        with self._lock:
            first = component not in self._failing
            self._failing.add(component)
        if first:
            log.log(
                level,
                "copilot-proxy-insight: %s failed: %s (traffic still passes; counted in copilot_exporter_errors_total)",
                component,
                error,
            )

    def recovered(self, component: str) -> None:
        if component in self._failing:
            with self._lock:
                self._failing.discard(component)
            log.warning("copilot-proxy-insight: %s works again", component)


STUCK_SECONDS = 10.0  # a write busy this long is reported as stuck (a hung mount, a FIFO nobody reads)
_TICK = 0.5  # how often the periodic thread looks at the clock and at the watchdog


class BackgroundWriter:
    """Runs submitted jobs in order on one thread, in batches; runs periodic jobs every `interval` and at stop.

    Submitting does not wake the thread: waking a thread for every log line makes the submitting thread
    (mitmproxy's event loop) wait for the GIL to come back, which costs far more than the write. The
    thread wakes every `batch_seconds`, or at once when `wake_at` jobs are pending or on flush/stop.

    Periodic jobs (the daily summary) run on a second thread, so a write that blocks for ever (a hung network
    mount, a FIFO as the day's log) cannot starve them; that thread also watches both threads and reports a
    job busy for over `stuck_seconds`. `stop()` gives up on a stuck thread after its timeout.
    """

    def __init__(
        self,
        errors: ErrorReporter,
        interval: float = 5.0,
        max_pending: int = 200_000,
        batch_seconds: float = 0.1,
        wake_at: int = 2_000,
        stuck_seconds: float = STUCK_SECONDS,
    ) -> None:
        self._pending: deque[Job] = deque()
        self._wake = threading.Event()
        self._errors = errors
        self._interval = interval
        self._batch_seconds = batch_seconds
        self._wake_at = wake_at
        self._max_pending = max_pending
        self._stuck_seconds = stuck_seconds
        self._periodic: dict[str, Job] = {}
        self._every_batch: dict[str, BatchJob] = {}
        self._thread: threading.Thread | None = None
        self._periodic_thread: threading.Thread | None = None
        self._periodic_lock = threading.Lock()  # one periodic round at a time (the timer, flush, stop)
        self._tick = threading.Event()
        self._stop_threads = threading.Event()  # one per start(): a thread given up on never runs with new ones
        self._watch_lock = threading.Lock()
        # thread name -> (component, since): the job each thread is running now, for the watchdog.
        self._busy: dict[str, tuple[str, float]] = {}
        self._reported: set[tuple[str, float]] = set()  # stuck jobs already reported

    @property
    def errors(self) -> ErrorReporter:
        return self._errors

    def every_interval(self, component: str, job: Job) -> None:
        """Run `job` every interval and at stop; registering a component again replaces its job."""
        self._periodic[component] = job

    def every_batch(self, component: str, job: BatchJob) -> None:
        """Run `job` at every wake-up (and on flush and stop). It returns whether it did any work; only a job
        that did work and succeeded marks its component as working again."""
        self._every_batch[component] = job

    def wake(self) -> None:
        """Wake the thread now (a producer with a large backlog)."""
        self._wake.set()

    def set_interval(self, seconds: float) -> None:
        self._interval = seconds
        self._tick.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop_threads = stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(stop,), name="copilot-proxy-insight-writer", daemon=True
            )
            self._thread.start()
            self._periodic_thread = threading.Thread(
                target=self._run_periodic, args=(stop,), name="copilot-proxy-insight-periodic", daemon=True
            )
            self._periodic_thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, component: str, job: Job) -> None:
        """Queue a job (cheap: a deque append). Over `max_pending` queued jobs it is dropped and counted."""
        pending = len(self._pending)
        if pending >= self._max_pending:
            self._errors.failed(f"{component}_queue", "write queue full, dropping a write")
            return
        self._pending.append(lambda: self._guard(component, job))
        if pending + 1 == self._wake_at:
            self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far, and one round of periodic jobs, is done."""
        if not self.running:
            self._drain()
            self._batch_round()
            self._periodic_round()
            return True
        done = threading.Event()
        self._pending.append(self._batch_round)
        self._pending.append(self._periodic_round)
        self._pending.append(done.set)
        self._wake.set()
        return done.wait(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Drain everything, run a last periodic round, and end the threads; False when it gave up.

        A thread still busy after `timeout` (a write that never returns) is given up on, so that the proxy
        can exit: what it had not written is lost, and that is logged. The caller must then not touch the
        sinks' files either (closing a file a stuck write holds would block the caller too)."""
        deadline = time.monotonic() + timeout
        writer, periodic = self._thread, self._periodic_thread
        self._stop_threads.set()
        self._wake.set()
        self._tick.set()
        stuck = False
        for thread in (writer, periodic):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                stuck = stuck or thread.is_alive()
        self._thread = self._periodic_thread = None
        if stuck:
            busy = ", ".join(sorted({c for c, _ in self._busy.values()})) or "a job"
            log.warning(
                "copilot-proxy-insight: gave up on a stuck write (%s) after %.0f s at stop; %d queued writes lost",
                busy,
                timeout,
                len(self._pending),
            )
            return False
        self._drain()
        self._batch_round()
        self._periodic_round()
        return True

    def _guard(self, component: str, job: Callable[[], object]) -> None:
        me = threading.current_thread().name
        since = time.monotonic()
        self._busy[me] = (component, since)
        try:
            did_work = job()
        except Exception as e:  # a failing write is counted and logged, never raised
            self._errors.failed(component, e)
        else:
            if did_work is not False:
                self._errors.recovered(component)
        finally:
            self._busy.pop(me, None)
            with self._watch_lock:
                was_reported = (me, since) in self._reported
                self._reported.discard((me, since))
            if was_reported:
                self._errors.recovered(f"{component}_stuck")

    def _watch(self) -> None:
        """Report (count, log once) each job that has been busy for over `stuck_seconds`."""
        now = time.monotonic()
        for thread, (component, since) in list(self._busy.items()):
            if now - since < self._stuck_seconds:
                continue
            with self._watch_lock:  # both threads watch (either may be the stuck one)
                if (thread, since) in self._reported:
                    continue
                self._reported.add((thread, since))
            self._errors.failed(
                f"{component}_stuck",
                f"a {component} write has not returned for {now - since:.0f} s (hung disk or mount? a FIFO?); "
                f"{len(self._pending)} writes queued behind it",
            )

    def _batch_round(self) -> None:
        for component, job in list(self._every_batch.items()):
            self._guard(component, job)

    def _periodic_round(self) -> None:
        with self._periodic_lock:
            for component, job in list(self._periodic.items()):
                self._guard(component, job)

    def _drain(self) -> None:
        while True:
            try:
                job = self._pending.popleft()
            except IndexError:
                break
            job()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(self._batch_seconds)
            self._wake.clear()
            self._watch()
            self._drain()
            self._batch_round()

    def _run_periodic(self, stop: threading.Event) -> None:
        last_round = time.monotonic()
        while not stop.is_set():
            self._tick.wait(min(_TICK, max(self._interval, 0.001)))
            self._tick.clear()
            self._watch()
            if not stop.is_set() and time.monotonic() - last_round >= self._interval:
                self._periodic_round()
                last_round = time.monotonic()
