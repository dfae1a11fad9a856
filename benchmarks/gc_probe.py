"""A mitmdump script that measures the garbage collector: `-s benchmarks/gc_probe.py` beside any addon.

It times every collection (`gc.callbacks`, the collecting thread's CPU clock) per generation and counts the
collections. On SIGUSR1 it writes its running totals as JSON to `$COPILOT_GC_PROBE_OUT` (written to a
temporary file and renamed, so a reader never sees half of it). `benchmarks.paired` reads it before and
after each load run. It changes nothing else: no hooks on flows, no options.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
from typing import Any


class GcProbe:
    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        self._out = os.environ.get("COPILOT_GC_PROBE_OUT", "")

    def load(self, loader: Any) -> None:
        gc.callbacks.append(self._callback)
        if self._out and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._write)

    def done(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.thread_time()
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = now
            return
        began = self._started.pop(ident, None)
        if began is None:
            return
        generation = info.get("generation", 0)
        with self._lock:
            self.seconds[generation] += now - began
            self.collections[generation] += 1

    def _write(self, signum: int, frame: Any) -> None:
        with self._lock:
            doc = {"seconds": list(self.seconds), "collections": list(self.collections)}
        tmp = f"{self._out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, self._out)


addons = [GcProbe()]
