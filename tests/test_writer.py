"""Background writer: order, periodic rounds under load, error counting that never raises, stop drains."""

from __future__ import annotations

import threading

from exporter.writer import BackgroundWriter, ErrorReporter


def test_jobs_run_in_order_off_the_calling_thread() -> None:
    seen: list[tuple[int, str]] = []
    w = BackgroundWriter(ErrorReporter(lambda c: None))
    w.start()
    for i in range(100):
        w.submit("t", lambda i=i: seen.append((i, threading.current_thread().name)))
    assert w.flush()
    w.stop()
    assert [i for i, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"copilot-proxy-insight-writer"}


def test_failures_are_counted_and_logged_once_per_run(caplog) -> None:  # type: ignore[no-untyped-def]
    counted: list[str] = []
    w = BackgroundWriter(ErrorReporter(counted.append))

    def boom() -> None:
        raise OSError("read-only file system")

    for _ in range(3):
        w.submit("jsonlog", boom)
    w.submit("jsonlog", lambda: None)
    w.submit("jsonlog", boom)
    w.flush()
    assert counted == ["jsonlog"] * 4
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2  # first failure, then again after it recovered once
    assert "read-only file system" in errors[0].getMessage()


def test_periodic_jobs_run_at_flush_and_at_stop() -> None:
    rounds: list[int] = []
    w = BackgroundWriter(ErrorReporter(lambda c: None), interval=3600)
    w.every_interval("daily", lambda: rounds.append(1))
    w.start()
    w.flush()
    w.stop()
    assert len(rounds) == 2


def test_periodic_jobs_run_even_when_the_queue_never_empties() -> None:
    done = threading.Event()
    w = BackgroundWriter(ErrorReporter(lambda c: None), interval=0.0)
    w.every_interval("daily", done.set)
    w.start()
    for _ in range(1000):
        w.submit("t", lambda: None)
    assert done.wait(5)
    w.stop()


def test_queue_is_bounded() -> None:
    counted: list[str] = []
    w = BackgroundWriter(ErrorReporter(counted.append), max_pending=10)
    for _ in range(15):
        w.submit("jsonlog", lambda: None)
    assert counted == ["jsonlog_queue"] * 5


def test_batch_jobs_mark_recovery_only_when_they_did_work(caplog) -> None:  # type: ignore[no-untyped-def]
    counted: list[str] = []
    w = BackgroundWriter(ErrorReporter(counted.append))
    state = {"fail": True, "work": False}

    def drain() -> bool:
        if state["fail"]:
            raise OSError("No space left on device")
        return state["work"]

    w.every_batch("jsonlog", drain)
    w.flush()
    state["fail"] = False
    w.flush()  # nothing to write: says nothing about the disk
    assert not [r for r in caplog.records if "works again" in r.getMessage()]
    state["work"] = True
    w.flush()
    assert [r for r in caplog.records if "works again" in r.getMessage()]
    assert counted == ["jsonlog"]


class _ScriptedWake:
    """Stands in for a thread's wake-up Event: records each wait's timeout and runs the script's step for it."""

    def __init__(self, steps: dict[int, object]) -> None:
        self.timeouts: list[float | None] = []
        self._steps = steps

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        step = self._steps.get(len(self.timeouts))
        if callable(step):
            step()
        return False

    def set(self) -> None:
        return None

    def clear(self) -> None:
        return None


def test_an_idle_writer_waits_longer_and_longer_up_to_a_second_and_work_sets_it_back() -> None:
    w = BackgroundWriter(ErrorReporter(lambda c: None), batch_seconds=0.1, idle_seconds=1.0)
    stop = threading.Event()
    ran: list[int] = []
    wake = _ScriptedWake({6: lambda: w.submit("t", lambda: ran.append(1)), 9: stop.set})
    w._wake = wake  # type: ignore[assignment]
    w._run(stop)
    assert ran == [1]
    assert wake.timeouts == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.1, 0.2, 0.4]


def test_a_batch_job_that_did_work_keeps_the_writer_at_its_batch_pace() -> None:
    w = BackgroundWriter(ErrorReporter(lambda c: None), batch_seconds=0.1, idle_seconds=1.0)
    stop = threading.Event()
    busy = iter([False, False, True, False])
    w.every_batch("jsonlog", lambda: next(busy, False))
    wake = _ScriptedWake({5: stop.set})
    w._wake = wake  # type: ignore[assignment]
    w._run(stop)
    assert wake.timeouts == [0.1, 0.2, 0.4, 0.1, 0.2]


def test_the_periodic_thread_sleeps_until_the_next_round_and_at_most_a_quarter_of_the_stuck_time() -> None:
    import time

    w = BackgroundWriter(ErrorReporter(lambda c: None), interval=5.0, stuck_seconds=10.0)
    now = time.monotonic()
    assert 2.4 < w._periodic_wait(now) <= 2.5  # the watchdog's pace, not the old half-second tick
    assert 0.9 < w._periodic_wait(now - 4.0) <= 1.0  # the round due in a second
    assert w._periodic_wait(now - 60.0) == 0.001  # overdue: at once
    w.set_interval(0.05)
    assert w._periodic_wait(now) <= 0.05


def test_the_first_job_after_a_quiet_spell_wakes_the_writer_and_jobs_under_traffic_do_not() -> None:
    w = BackgroundWriter(ErrorReporter(lambda c: None))
    w._idle = True  # what _run sets while it is in a wait longer than a batch
    w.submit("t", lambda: None)
    assert w._wake.is_set() and not w._idle
    w._wake.clear()
    w.submit("t", lambda: None)  # the thread is (as far as producers know) in its batch pace: no hand-off
    assert not w._wake.is_set()
    w.nudge()
    assert not w._wake.is_set()
