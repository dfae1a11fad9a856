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
IDLE_SECONDS = 1.0  # an idle thread's longest wait: after rounds with nothing to do, its waits grow to this


class BackgroundWriter:
    """Runs submitted jobs in order on one thread, in batches; runs periodic jobs every `interval` and at stop.

    Submitting does not wake the thread: waking a thread for every log line makes the submitting thread
    (mitmproxy's event loop) wait for the GIL to come back, which costs far more than the write. The
    thread wakes every `batch_seconds`, or at once when `wake_at` jobs are pending or on flush/stop. While
    there is nothing to write its waits double, up to `idle_seconds`, and the first job or line after such a
    quiet spell wakes it (`nudge`): an idle proxy's writer wakes once a second instead of ten times, and a
    burst's first line is still written at once.

    Periodic jobs (the daily summary) run on a second thread, so a write that blocks for ever (a hung network
    mount, a FIFO as the day's log) cannot starve them; that thread also watches both threads and reports a
    job busy for over `stuck_seconds`. It wakes when the next round is due, and at least every quarter of
    `stuck_seconds`. `stop()` gives up on a stuck thread after its timeout.
    """

    def __init__(
        self,
        errors: ErrorReporter,
        interval: float = 5.0,
        max_pending: int = 200_000,
        batch_seconds: float = 0.1,
        wake_at: int = 2_000,
        stuck_seconds: float = STUCK_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._pending: deque[Callable[[], object]] = deque()  # what each returns is not used
        self._wake = threading.Event()
        self._errors = errors
        self._interval = interval
        self._batch_seconds = batch_seconds
        self._wake_at = wake_at
        self._max_pending = max_pending
        self._stuck_seconds = stuck_seconds
        self._idle_seconds = idle_seconds
        self._idle = False  # the thread is in a wait longer than a batch: the next producer wakes it (nudge)
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

    def nudge(self) -> None:
        """A producer has work: wake the thread if it is idling in a long wait (the first line after a quiet
        spell is written within a batch, not a second later); under traffic a flag test and nothing else."""
        if self._idle:
            self._idle = False
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
        else:
            self.nudge()

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

    def _guard(self, component: str, job: Callable[[], object]) -> bool:
        """Runs the job; whether it did (or tried to do) any work: a batch job that returned False did not."""
        me = threading.current_thread().name
        since = time.monotonic()
        self._busy[me] = (component, since)
        did_work: object = True
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
        return did_work is not False

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

    def _batch_round(self) -> bool:
        worked = False
        for component, job in list(self._every_batch.items()):
            worked = self._guard(component, job) or worked
        return worked

    def _periodic_round(self) -> None:
        with self._periodic_lock:
            for component, job in list(self._periodic.items()):
                self._guard(component, job)

    def _drain(self) -> bool:
        """Runs every queued job; whether there was any."""
        ran = False
        while True:
            try:
                job = self._pending.popleft()
            except IndexError:
                return ran
            job()
            ran = True

    def _run(self, stop: threading.Event) -> None:
        wait = self._batch_seconds
        while not stop.is_set():
            self._idle = wait > self._batch_seconds
            self._wake.wait(wait)
            self._wake.clear()
            self._idle = False
            self._watch()
            worked = self._drain()
            worked = self._batch_round() or worked
            wait = self._batch_seconds if worked else min(2 * wait, max(self._batch_seconds, self._idle_seconds))

    def _periodic_wait(self, last_round: float) -> float:
        """Until the next round is due, and at most a quarter of `stuck_seconds` (the watchdog's look: a job
        stuck since just after it is reported within 1.25 x `stuck_seconds`)."""
        due = last_round + self._interval - time.monotonic()
        return max(0.001, min(due, self._stuck_seconds / 4))

    def _run_periodic(self, stop: threading.Event) -> None:
        last_round = time.monotonic()
        while not stop.is_set():
            self._tick.wait(self._periodic_wait(last_round))
            self._tick.clear()
            self._watch()
            if not stop.is_set() and time.monotonic() - last_round >= self._interval:
                self._periodic_round()
                last_round = time.monotonic()
