"""One running proxy per data dir and instance id: an advisory lock file, so two processes never write the
same event log and summaries (they would keep only the last writer's counts; docs/hardening.md, item 10).

The lock is `flock` on `<data dir>/.copilot-proxy-insight[.<instance id>].lock`, held while the proxy runs and
released by the kernel when the process ends, however it ends (kill -9 included): no stale lock to clean up.
Replicas sharing a data dir each take their own (`copilot_instance_id`, docs/fleet.md). Where `fcntl` does not
exist (Windows) there is no lock; a data dir that cannot be written is not locked either (that is reported
on its own).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class DataDirInUse(Exception):
    """Another running process holds the lock of this data dir and instance id."""


def lock_path(data_dir: Path, instance: str) -> Path:
    return data_dir / (f".copilot-proxy-insight.{instance}.lock" if instance else ".copilot-proxy-insight.lock")


class DataDirLock:
    """The lock this process holds (at most one: a new data dir or instance id moves it)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._file: IO[str] | None = None

    def acquire(self, data_dir: Path, instance: str) -> None:
        """Takes the lock of `data_dir` and `instance` (keeping the old one if that fails); raises DataDirInUse
        when another process holds it."""
        path = lock_path(data_dir, instance)
        if fcntl is None or path == self.path:
            return
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open: the open file is the lock
        except OSError:
            return  # an unwritable data dir: reported by the start-up check, nothing is written there
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read(32).strip()
            f.close()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise DataDirInUse(
                f"the data dir {os.path.abspath(data_dir)} is in use by {who} "
                f"(lock {path.name}{f', copilot_instance_id={instance}' if instance else ''}): two proxies on one "
                "data dir must each have their own copilot_instance_id (docs/fleet.md), or their own data dir"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for the message only (a full disk keeps the lock)
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
        self.release()
        self.path, self._file = path, f

    def release(self) -> None:
        f, self._file, self.path = self._file, None, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()  # closing the file releases the flock
