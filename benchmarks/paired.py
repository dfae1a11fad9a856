"""Paired rounds: two or more versions of the addon against bare mitmdump, side by side, on the same load.

`python -m benchmarks.paired [--tree NAME=PATH ...] [--rounds 8] [--requests 2000] [--gc]`

One fake backend and one benchmark client (`benchmarks.bench`'s, with its traffic mix and proxy users); one
streaming bare mitmdump and one mitmdump per tree, each running `<tree>/exporter/addon.py` with that tree
first on PYTHONPATH (a `git worktree add /tmp/old <commit>` is a tree; `head` is this checkout and is always
run). Every round drives `--requests` requests through each proxy in turn, in a rotating order, so that the
machine's drift (another job, CPU frequency, a noisy neighbour) falls on every configuration alike; a
round's figures are paired: each tree's CPU per request minus bare's in the same round. Printed per tree:
the median and interquartile range of that difference over the rounds, and the median requests/s ratio.

This is the comparison issue 11 asks for (the core before and after its reshaping, or any two commits),
with the spread that says whether a difference is real. `--gc` adds `benchmarks/gc_probe.py` to every
mitmdump (bare included) and prints the collector's CPU per request per generation.

`--callgrind` counts instructions instead of CPU time: every mitmdump runs under `valgrind --tool=callgrind`,
the same warm-up and `--requests` requests go through each (concurrency 4), and `callgrind_control` reads the
process's instruction count before and after them: instructions per request of the whole process (mitmproxy,
the addon, its threads, the garbage collector), bare and with each tree, and the difference. Unlike CPU time
this does not move with the machine's load. The daily summary's timed rewrite (`copilot_flush_interval`, 5 s)
is set past the run: under valgrind 5 s are some 50 requests instead of 1,500, so it would weigh 30 times
what it weighs in a real process.

`--idle SECONDS` measures the proxies with no traffic at all, after the warm-up: CPU milliseconds per second and
thread wake-ups per second (voluntary context switches of all the process's threads, from /proc). An idle
proxy should cost nothing; the addon's threads sleep until there is work, and poll at most once a second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import Backend, proc_cpu, write_htpasswd
from benchmarks.loadgen import LoadSpec, run_load
from tests.e2e.harness import Mitmdump, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
BARE = "bare"
GC_PROBE = REPO_ROOT / "benchmarks" / "gc_probe.py"


@dataclass
class Proxy:
    name: str
    mitm: Mitmdump
    gc_out: Path | None
    cpu_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    gc_us: list[list[float]] = field(default_factory=list)  # per round: µs per request of gen 0, 1, 2
    gc_runs: list[list[float]] = field(default_factory=list)  # per round: collections per 1,000 requests
    counted: int = 0
    instructions: list[float] = field(default_factory=list)  # --callgrind: per request, per run


def _gc_totals(proxy: Proxy) -> list[float] | None:
    """The probe's cumulative collector seconds and collections per generation (written on SIGUSR1)."""
    if proxy.gc_out is None:
        return None
    before = proxy.gc_out.stat().st_mtime_ns if proxy.gc_out.exists() else 0
    os.kill(proxy.mitm.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proxy.gc_out.exists() and proxy.gc_out.stat().st_mtime_ns != before:
            doc = json.loads(proxy.gc_out.read_text())
            return [*doc["seconds"], *doc["collections"]]
        time.sleep(0.01)
    raise RuntimeError(f"{proxy.name}: the GC probe did not answer")


def _valgrind_wrapper(directory: Path) -> Path:
    """An executable that runs mitmdump under callgrind (counting from the start, dumping on request)."""
    wrapper = directory / "mitmdump-under-callgrind"
    mitmdump = Path(sys.executable).with_name("mitmdump")
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec valgrind --tool=callgrind --callgrind-out-file="{directory}/callgrind.%p" --dump-instr=no '
        f'"{sys.executable}" "{mitmdump}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


_TOTALS = re.compile(rb"^totals:\s*(\d+)\n", re.M)  # the last line of a dump: once it is there, the dump is whole


def _instructions(proxy: Proxy) -> int:
    """Instructions since the last dump (callgrind zeroes its counters at each dump)."""
    directory = proxy.mitm.tmp_dir
    before = set(directory.glob("callgrind.*"))
    subprocess.run(["callgrind_control", "--dump", str(proxy.mitm.pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(directory.glob("callgrind.*")) - before)
        found = _TOTALS.search(new[-1].read_bytes()) if new else None
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"{proxy.name}: callgrind wrote no dump")


def wakeups(pid: int) -> int:
    """Voluntary context switches of all of a process's threads so far (each one a wait that blocked)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # a thread that ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    return total


def idle_report(proxies: dict[str, Proxy], seconds: float) -> str:
    """CPU and wake-ups per second of each proxy over `seconds` without traffic (the proxies run meanwhile)."""
    before = {n: (proc_cpu(p.mitm.pid), wakeups(p.mitm.pid)) for n, p in proxies.items()}
    t0 = time.monotonic()
    time.sleep(seconds)  # the measured period itself: nothing is waited for
    elapsed = time.monotonic() - t0
    lines = [f"idle, no traffic for {elapsed:.0f} s", f"  {'proxy':<12} {'CPU ms/s':>9} {'wake-ups/s':>11}"]
    for n, p in proxies.items():
        cpu, woke = before[n]
        cpu_ms = (proc_cpu(p.mitm.pid) - cpu) / elapsed * 1000
        lines.append(f"  {n:<12} {cpu_ms:9.2f} {(wakeups(p.mitm.pid) - woke) / elapsed:11.1f}")
    return "\n".join(lines)


def start(
    name: str, tree: Path | None, backend: Backend, workdir: Path, htpasswd: Path, gc: bool, callgrind: bool = False
) -> Proxy:
    directory = workdir / name
    directory.mkdir(parents=True)
    options: dict[str, object] = {"stream_large_bodies": "1"} if tree is None else {}
    env: dict[str, str] = {}
    gc_out = directory / "gc.json" if gc else None
    if gc_out is not None:
        env["COPILOT_GC_PROBE_OUT"] = str(gc_out)
    if tree is not None:
        options["copilot_data_dir"] = str(directory / "data")
        options["copilot_metrics_port"] = free_port()
        env["PYTHONPATH"] = str(tree)
        if callgrind:
            options["copilot_flush_interval"] = "3600"
    mitm = Mitmdump(
        backend,
        directory,
        addon=None if tree is None else tree / "exporter" / "addon.py",
        proxyauth=f"@{htpasswd}",
        options=options,
        extra_args=["-s", str(GC_PROBE)] if gc else [],
        env=env,
        cwd=tree or REPO_ROOT,
        start_timeout=600 if callgrind else 60,
        stop_timeout=120 if callgrind else 15,
        executable=_valgrind_wrapper(directory) if callgrind else None,
    )
    mitm.start()
    return Proxy(name, mitm, gc_out)


def drive(proxy: Proxy, spec: LoadSpec) -> None:
    gc0 = _gc_totals(proxy)
    p0 = proc_cpu(proxy.mitm.pid)
    result = asyncio.run(run_load(spec))
    time.sleep(0.2)  # what the last answers started (the writer thread)
    p1 = proc_cpu(proxy.mitm.pid)
    gc1 = _gc_totals(proxy)
    if result.errors or result.timed_out:
        raise RuntimeError(f"{proxy.name}: {result.errors} errors, timed out={result.timed_out}: {result.first_errors}")
    n = max(1, result.ok)
    proxy.cpu_ms.append((p1 - p0) / n * 1000)
    proxy.rps.append(result.rps)
    proxy.counted += result.counted
    if gc0 is not None and gc1 is not None:
        deltas = [b - a for a, b in zip(gc0, gc1, strict=True)]
        proxy.gc_us.append([d / n * 1e6 for d in deltas[:3]])
        proxy.gc_runs.append([d / n * 1000 for d in deltas[3:]])


def count(proxy: Proxy, spec: LoadSpec) -> None:
    """--callgrind: the instructions of `spec.requests` requests through the proxy."""
    _instructions(proxy)  # zero the counters: what came before (start-up, warm-up) is not counted
    result = asyncio.run(run_load(spec))
    time.sleep(1.0)  # the writer thread's batch of the last answers
    total = _instructions(proxy)
    if result.errors or result.timed_out:
        raise RuntimeError(f"{proxy.name}: {result.errors} errors, timed out={result.timed_out}: {result.first_errors}")
    proxy.instructions.append(total / max(1, result.ok))
    proxy.counted += result.counted


def instruction_report(proxies: dict[str, Proxy], requests: int) -> str:
    bare = statistics.median(proxies[BARE].instructions)
    lines = [
        f"instructions per request of the whole mitmdump process (callgrind), {requests} requests, concurrency 4",
        f"  {'proxy':<12} {'per request':>14} {'over bare':>14} {'ratio':>7}   runs",
    ]
    for name, p in proxies.items():
        median = statistics.median(p.instructions)
        runs = " ".join(f"{i:,.0f}" for i in p.instructions)
        added = "" if name == BARE else f"{median - bare:+14,.0f}"
        lines.append(f"  {name:<12} {median:14,.0f} {added:>14} {median / bare:7.3f}   {runs}")
    return "\n".join(lines)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(proxies: dict[str, Proxy], rounds: int, requests: int) -> str:
    bare = proxies[BARE]
    lines = [
        f"paired rounds: {rounds} x {requests} requests per proxy, concurrency 16, rotating order",
        f"  {'proxy':<12} {'CPU ms/req':>10} {'added (median, IQR) ms/req':>30} {'rps ratio':>10}"
        f" {'GC us/req 0/1/2':>20} {'GC runs/1k req':>16}",
    ]
    for name, p in proxies.items():
        cpu = statistics.median(p.cpu_ms)
        gc = "/".join(f"{statistics.median(g[i] for g in p.gc_us):.0f}" for i in range(3)) if p.gc_us else "-"
        runs = "/".join(f"{statistics.median(g[i] for g in p.gc_runs):.1f}" for i in range(3)) if p.gc_runs else "-"
        if name == BARE:
            lines.append(f"  {name:<12} {cpu:10.3f} {'':>30} {'':>10} {gc:>20} {runs:>16}")
            continue
        added = [a - b for a, b in zip(p.cpu_ms, bare.cpu_ms, strict=True)]
        q1, q2, q3 = _quartiles(added)
        ratio = statistics.median(a / b for a, b in zip(p.rps, bare.rps, strict=True))
        spread = f"+{q2:.3f} (+{q1:.3f} … +{q3:.3f})"
        lines.append(f"  {name:<12} {cpu:10.3f} {spread:>30} {ratio:9.2f}x {gc:>20} {runs:>16}")
    lines.append(
        "  per round, added ms/req: "
        + "; ".join(
            f"{n}: " + " ".join(f"{a - b:+.2f}" for a, b in zip(p.cpu_ms, bare.cpu_ms, strict=True))
            for n, p in proxies.items()
            if n != BARE
        )
    )
    return "\n".join(lines)


def _trees(specs: Sequence[str]) -> dict[str, Path]:
    trees = {"head": REPO_ROOT}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in (BARE, "head"):
            raise SystemExit(f"--tree {spec!r}: give NAME=PATH (NAME not 'bare' or 'head')")
        tree = Path(path).resolve()
        if not (tree / "exporter" / "addon.py").is_file():
            raise SystemExit(f"--tree {spec!r}: {tree}/exporter/addon.py not found")
        trees[name] = tree
    return trees


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="another checkout")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--gc", action="store_true", help="also measure the garbage collector per request")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per request (valgrind)")
    parser.add_argument("--idle", type=float, metavar="SECONDS", help="measure the proxies idle instead")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.idle is not None and not args.idle > 0:
        parser.error(f"--idle needs a number of seconds over 0, not {args.idle}")
    if (
        args.callgrind
        and subprocess.run(["sh", "-c", "command -v valgrind callgrind_control"], capture_output=True).returncode
    ):
        raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
    trees = _trees(args.tree)
    users = tuple((f"dev{i:02d}", f"pw-{i:02d}-Xq7Lm2Zr") for i in range(1, 9))
    run_ids = itertools.count(int(time.time()) % 100_000 * 1000)
    with tempfile.TemporaryDirectory(prefix="copilot-paired-") as tmp:
        workdir = Path(tmp)
        htpasswd = write_htpasswd(workdir / "htpasswd", users, 5)
        backend = Backend(workdir, 50.0)
        proxies: dict[str, Proxy] = {}
        try:
            cg = args.callgrind
            proxies[BARE] = start(BARE, None, backend, workdir, htpasswd, args.gc, cg)
            for name, tree in trees.items():
                proxies[name] = start(name, tree, backend, workdir, htpasswd, args.gc, cg)

            def spec(p: Proxy, n: int) -> LoadSpec:
                concurrency, limit = (4, 3600.0) if cg else (16, 120.0)
                return LoadSpec(
                    p.mitm.port, str(p.mitm.ca_cert_path), users, n, concurrency, next(run_ids), time_limit=limit
                )

            for p in proxies.values():
                asyncio.run(run_load(spec(p, args.warmup)))
            if args.idle is not None:
                print(idle_report(proxies, args.idle))
                return 0
            if cg:
                for r in range(args.rounds):
                    for p in proxies.values():
                        count(p, spec(p, args.requests))
                        print(f"  run {r + 1}/{args.rounds}: {p.name} {p.instructions[-1]:,.0f} instructions/request")
                print(instruction_report(proxies, args.requests))
                return 0
            order = list(proxies.values())
            for r in range(args.rounds):
                for p in order[r % len(order) :] + order[: r % len(order)]:
                    drive(p, spec(p, args.requests))
                print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{p.name} {p.cpu_ms[-1]:.3f}" for p in order))
        finally:
            for p in proxies.values():
                p.mitm.stop()
            backend.stop()
    print(report(proxies, args.rounds, args.requests))
    if args.json_out:
        doc = {
            n: {"cpu_ms": p.cpu_ms, "rps": p.rps, "gc_us": p.gc_us, "gc_runs": p.gc_runs} for n, p in proxies.items()
        }
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
