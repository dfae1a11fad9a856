"""One running proxy per data dir and instance id (hardening round 2, item 10): the advisory lock file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.datalock import DataDirInUse, DataDirLock, lock_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (no lock on Windows)")


def _holder(data_dir: Path, instance: str) -> subprocess.Popen[str]:
    """Another process holding the lock until its stdin closes (flock is per open file: a process of its own)."""
    code = (
        "import sys; from pathlib import Path; from exporter.datalock import DataDirLock; "
        f"lock = DataDirLock(); lock.acquire(Path({str(data_dir)!r}), {instance!r}); print('held', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def test_a_second_process_on_the_same_data_dir_and_instance_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "")
    try:
        with pytest.raises(DataDirInUse, match=rf"in use by process {holder.pid} .*copilot_instance_id"):
            DataDirLock().acquire(tmp_path, "")
    finally:
        _end(holder)
    lock = DataDirLock()
    lock.acquire(tmp_path, "")  # free again once the holder ended (the kernel drops an ended process's lock)
    assert lock.path == lock_path(tmp_path, "") and lock_path(tmp_path, "").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_instance_ids_are_separate_locks(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "a")
    try:
        lock = DataDirLock()
        lock.acquire(tmp_path, "b")
        assert lock.path == tmp_path / ".copilot-proxy-insight.b.lock"
        with pytest.raises(DataDirInUse, match="copilot_instance_id=a"):
            DataDirLock().acquire(tmp_path, "a")
        lock.release()
    finally:
        _end(holder)


def test_moving_the_lock_frees_the_old_one_and_a_refused_move_keeps_it(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    lock = DataDirLock()
    lock.acquire(first, "")
    holder = _holder(second, "")
    try:
        with pytest.raises(DataDirInUse):
            lock.acquire(second, "")
        assert lock.path == lock_path(first, "")  # still held: the move was refused
    finally:
        _end(holder)
    lock.acquire(second, "")
    assert lock.path == lock_path(second, "")
    other = _holder(first, "")  # the old data dir is free for another process now
    _end(other)
    lock.release()


def test_an_unwritable_data_dir_takes_no_lock_and_raises_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    lock = DataDirLock()
    lock.acquire(blocked / "data", "")
    assert lock.path is None


def test_a_running_proxy_moved_to_a_data_dir_in_use_refuses_the_option_and_keeps_its_own(tmp_path: Path) -> None:
    from exporter.outputs import Outputs
    from exporter.settings import Files, MetricsEndpoint, Settings, SettingsError

    first = Settings(files=Files(data_dir=tmp_path / "one"), metrics=MetricsEndpoint(port=0))
    moved = Settings(files=Files(data_dir=tmp_path / "two"), metrics=MetricsEndpoint(port=0))
    outputs = Outputs("12.0.0")
    outputs.apply(None, first)
    outputs.start(first)
    holder = _holder(tmp_path / "two", "")
    try:
        assert outputs.lock.path == lock_path(tmp_path / "one", "")
        with pytest.raises(SettingsError, match=r"copilot_data_dir: the data dir .*two is in use by process"):
            outputs.apply(first, moved)
        assert outputs.lock.path == lock_path(tmp_path / "one", "")
    finally:
        _end(holder)
        outputs.stop()
    assert outputs.lock.path is None  # released at stop
