"""The addon's own cost per request, measured so that noise does not swamp it: its hooks replayed in-process.

`python -m benchmarks.replay [--requests 2000] [--repeat 7] [--callgrind] [--json-out FILE]`

The benchmark's traffic mix (`benchmarks/traffic.py`, built into mitmproxy flows by
`benchmarks.profile_addon.build_flows`, not timed) is driven through the addon's hooks the way mitmproxy
calls them for a streamed answer, with every default sink on. Three figures:

- **CPU per request** (`time.process_time`): each repetition replays `--requests` fresh requests into one warm
  addon; the minimum over the repetitions is the figure (what the code costs when nothing else interferes),
  the median and the spread are printed beside it.
- **Per feature**: the feature's entry points are wrapped with a `perf_counter` timer (in-process and
  single-threaded, wall time is CPU time; the scanner thread of secret detection is timed with its own
  thread clock), so each feature's share of the same replay is known: core, telemetry parsing (acceptance),
  credits and quota, teams, secret scanning. Features whose code is not in this checkout are listed as
  absent. The timers' own cost (about 0.1 µs per wrapped call) is in the total, not in the features.
- **Instructions per request** (`--callgrind`, needs valgrind): the replay run twice under
  `valgrind --tool=callgrind`, with the same flows built and `--requests` and 2 x `--requests` of them
  driven; the difference divided by `--requests` is the instruction count of one request's hooks, repeatable
  to a fraction of a percent on a busy machine (start-up and flow building cancel out). The daily summary's
  timed rewrite (every `copilot_flush_interval`, 5 s) is left out of it: under valgrind 5 s are a few dozen
  requests instead of about 1,500, so it would weigh 50 times what it weighs in a real process.

What it does not show: mitmproxy's own cost of calling the hooks and the GIL hand-offs to the writer thread in
a real process. `benchmarks.bench` measures the whole process against bare mitmdump.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitmproxy.test import taddons

from benchmarks.profile_addon import build_flows, drive
from exporter.hooks import CopilotInsight

# Feature -> its entry points (module, dotted attribute). Every call of a feature goes through one of these;
# nested entry points of one feature are timed once (the outermost call).
FEATURES: dict[str, tuple[tuple[str, str], ...]] = {
    "telemetry": (("exporter.calls", "CallTracker._read_telemetry"), ("exporter.observe", "telemetry_observations")),
    "credits": (
        ("exporter.assemble", "_cost"),
        ("exporter.budgets", "CostSink.handle"),
        ("exporter.calls", "CallTracker._learn"),
    ),
    "teams": (("exporter.teams", "TeamDirectory.of"), ("exporter.outputs", "Outputs._track_teams")),
    "secrets": (("exporter.calls", "CallTracker._scan"), ("exporter.scanner", "Scanner._one")),
    "tools": (("exporter.calls", "request_tools"), ("exporter.observe", "governance")),
}


@dataclass
class Timers:
    """Seconds spent inside each feature's entry points; per thread, so a nested call is counted once."""

    spent: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, feature: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        main = threading.main_thread()

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "inside", False):
                return fn(*args, **kwargs)
            clock = time.perf_counter if threading.current_thread() is main else time.thread_time
            self._local.inside = True
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                self._local.inside = False
                with self._lock:
                    self.spent[feature] = self.spent.get(feature, 0.0) + dt
                    self.calls[feature] = self.calls.get(feature, 0) + 1

        return timed

    def reset(self) -> None:
        with self._lock:
            self.spent.clear()
            self.calls.clear()


def _resolve(module: str, attr: str) -> tuple[Any, str, Any] | None:
    try:
        owner: Any = importlib.import_module(module)
    except ImportError:
        return None
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    fn = getattr(owner, name, None)
    return (owner, name, fn) if callable(fn) else None


@contextmanager
def instrumented(timers: Timers) -> Iterator[dict[str, bool]]:
    """Wraps every present entry point; yields feature -> present."""
    undo: list[tuple[Any, str, Any]] = []
    present: dict[str, bool] = {}
    try:
        for feature, points in FEATURES.items():
            present[feature] = False
            for module, attr in points:
                found = _resolve(module, attr)
                if found is None:
                    continue
                owner, name, fn = found
                undo.append((owner, name, fn))
                setattr(owner, name, timers.wrap(feature, fn))
                present[feature] = True
        yield present
    finally:
        for owner, name, fn in reversed(undo):
            setattr(owner, name, fn)


@dataclass
class Result:
    requests: int
    repeat: int
    us_per_request: list[float]
    features: dict[str, list[float]]
    present: dict[str, bool]
    calls: dict[str, int] = field(default_factory=dict)  # entry-point calls per feature, last repetition
    instructions_per_request: float | None = None

    @property
    def best(self) -> float:
        return min(self.us_per_request)

    def feature_best(self, name: str) -> float:
        # The feature's share in the fastest repetition (consistent with the total it is part of).
        i = self.us_per_request.index(self.best)
        return self.features[name][i]


def _settle(addon: CopilotInsight) -> None:
    """Waits for the secret scanner's queue to empty (its thread's CPU is part of the request's cost)."""
    if not addon.outputs.scanner.wait_idle():
        raise RuntimeError("the secret scanner did not finish its queue within 10 s")


def replay(requests: int, repeat: int, users: int = 8, options: dict[str, Any] | None = None) -> Result:
    timers = Timers()
    totals: list[float] = []
    per_feature: dict[str, list[float]] = {f: [] for f in FEATURES}
    with tempfile.TemporaryDirectory(prefix="copilot-replay-") as tmp, instrumented(timers) as present:
        addon = CopilotInsight()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, copilot_data_dir=tmp, copilot_metrics_port=0, **(options or {}))
            drive(addon, build_flows(300, users, run=0))  # warm-up: imports, caches, first files
            _settle(addon)
            for r in range(repeat):
                flows = build_flows(requests, users, run=r + 1)
                # The flows built up front are the harness's, not the proxy's (it holds a few in flight): keep
                # the garbage collector from scanning them, as it would not in a real process.
                gc.collect()
                gc.freeze()
                timers.reset()
                c0 = time.process_time()
                drive(addon, flows)
                _settle(addon)
                totals.append((time.process_time() - c0) / requests * 1e6)
                del flows
                gc.unfreeze()
                for f in FEATURES:
                    per_feature[f].append(timers.spent.get(f, 0.0) / requests * 1e6)
            calls = dict(timers.calls)
            addon.done()
    return Result(requests, repeat, totals, per_feature, present, calls)


def _callgrind_child(requests: int, users: int) -> None:
    """Under callgrind: builds 2 x `requests` flows, drives `requests` (or all, per env) of them.

    Nothing in the two runs may depend on how fast they go (valgrind runs ~50 times slower, and slower still
    on a busy machine): the daily summary's timed rewrite is pushed past the run (both runs write it once, at
    the end), and the flows built up front are frozen out of the collector's walks, as in `replay`."""
    with tempfile.TemporaryDirectory(prefix="copilot-replay-cg-") as tmp:
        addon = CopilotInsight()
        with taddons.context(addon) as tctx:
            tctx.configure(addon, copilot_data_dir=tmp, copilot_metrics_port=0, copilot_flush_interval="3600")
            drive(addon, build_flows(100, users, run=0))
            flows = build_flows(2 * requests, users, run=1)
            gc.collect()
            gc.freeze()
            n = int(os.environ["REPLAY_DRIVE"])
            drive(addon, flows[:n])
            _settle(addon)
            addon.done()


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def callgrind_instructions(requests: int, users: int) -> float:
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
    counts = []
    for n in (requests, 2 * requests):
        env = {**os.environ, "REPLAY_DRIVE": str(n), "PYTHONHASHSEED": "0"}
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                "-m",
                "benchmarks.replay",
                "--callgrind-child",
                "--requests",
                str(requests),
                "--users",
                str(users),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            check=False,
        )
        found = _COLLECTED.search(proc.stderr)
        if proc.returncode != 0 or found is None:
            raise SystemExit(f"callgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / requests


def report(result: Result) -> str:
    lines = [
        f"in-process replay, {result.requests} requests x {result.repeat} repetitions "
        f"(traffic mix of benchmarks/traffic.py, every default sink)",
        f"  CPU per request: min {result.best:.1f} us, median {statistics.median(result.us_per_request):.1f} us, "
        f"max {max(result.us_per_request):.1f} us",
        "",
        f"  {'feature':<10} {'us/request':>11} {'share':>7}  (in the fastest repetition)",
    ]
    features = 0.0
    for name, present in result.present.items():
        if not present:
            lines.append(f"  {name:<10} {'absent':>11}")
            continue
        us = result.feature_best(name)
        features += us
        lines.append(f"  {name:<10} {us:11.1f} {us / result.best:7.1%}")
    core = result.best - features
    lines.append(
        f"  {'core':<10} {core:11.1f} {core / result.best:7.1%}  (the rest: routing, streams, counting, sinks)"
    )
    if result.instructions_per_request is not None:
        lines += [
            "",
            f"  instructions per request (callgrind, difference of two runs): {result.instructions_per_request:,.0f}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per request")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--callgrind-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.callgrind_child:
        _callgrind_child(args.requests, args.users)
        return 0
    result = replay(args.requests, args.repeat, args.users)
    if args.callgrind:
        result.instructions_per_request = callgrind_instructions(min(args.requests, 500), args.users)
    print(report(result))
    doc = {
        "requests": result.requests,
        "repeat": result.repeat,
        "us_per_request": result.us_per_request,
        "min_us": result.best,
        "features_us": {f: result.feature_best(f) for f, p in result.present.items() if p},
        "instructions_per_request": result.instructions_per_request,
    }
    print(json.dumps(doc))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
