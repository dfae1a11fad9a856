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
