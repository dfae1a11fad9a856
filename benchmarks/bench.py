"""Benchmark: the addon against bare mitmdump, on realistic Copilot traffic. `python -m benchmarks.bench [--quick]`.

Starts on 127.0.0.1 a fake Copilot backend (`benchmarks/fake.py`, a separate process: an upstream proxy
that terminates TLS with per-host certificates for the real Copilot host names) and, in upstream mode in
front of it, four mitmdump processes, all with the same `proxyauth=@htpasswd` (bcrypt):

  bare      bare mitmdump, bodies buffered (the default)
  stream    bare mitmdump with `stream_large_bodies=1`: every body streamed, as a transparent proxy does
  addon     mitmdump with the addon (`-s benchmarks/addon_entry.py`, i.e. exporter/addon.py) and its default
            sinks: /metrics, the JSON event log, the daily summary
  addon_1k  the same, with 1,000 distinct users already in today's daily summary

`direct` is the client talking to the fake backend itself (the client's and the backend's own ceiling).
`--diagnose` adds `null_hooks` (a do-nothing addon with the addon's hooks, streaming answers the same way)
and `addon_nolog` (the addon with its JSON log off). Phases, the configurations interleaved (the order
rotates every round) and repeated, medians over the rounds reported:

  ttfb   streamed completions of 5 events 50 ms apart, 4 at a time: time to the first byte of the body
  rps    the traffic mix (completions, agent turns and steps, telemetry posts, from 8 users) at concurrency 16, no
         backend delay: requests per second, latency p50/p99, mitmdump CPU per request (/proc/<pid>/stat)
  soak   fresh `stream` and `addon_1k` processes: a warm-up, then 20,000 requests; RSS and CPU per
         request at every tenth (first vs last 10%, peak RSS)

It prints one table, the budget checks and a JSON line (`--json-out` keeps every run). The addon's
`copilot_requests_total` and `copilot_model_calls_total` must equal what the client sent and got answered
(checked, not timed; the exit status is 1 otherwise). Every load run is bounded by a request count and a
time limit, and the whole benchmark by `--max-minutes` (9.5). `--profile DIR` adds py-spy profiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bcrypt
import httpx
from mitmproxy import version as mitmproxy_version
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import pyspy_summary, traffic
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from tests.e2e.harness import Mitmdump, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
DIRECT, BARE, STREAM, ADDON, ADDON_1K = "direct", "bare", "stream", "addon", "addon_1k"
NULL_HOOKS, ADDON_NOLOG = "null_hooks", "addon_nolog"  # --diagnose only
PROXIES = (BARE, STREAM, ADDON, ADDON_1K)
DIAGNOSE = (NULL_HOOKS, ADDON_NOLOG)
ADDONS = (ADDON, ADDON_1K, ADDON_NOLOG)  # configurations that run exporter/addon.py
LABELS = {
    DIRECT: "direct",
    BARE: "bare (buffer)",
    STREAM: "bare (stream)",
    ADDON: "addon",
    ADDON_1K: "addon, 1k users",
    NULL_HOOKS: "null hooks",
    ADDON_NOLOG: "addon, log off",
}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Settings:
    warmup: int = 300  # requests per configuration before measuring (certificates, imports, caches)
    ttfb_rounds: int = 5
    ttfb_requests: int = 40
    ttfb_concurrency: int = 4
    rps_rounds: int = 5
    rps_requests: int = 2000
    concurrency: int = 16
    soak_requests: int = 20_000
    soak_configs: tuple[str, ...] = (STREAM, ADDON_1K)
    users: int = 8
    summary_users: int = 1000
    event_delay_ms: float = 50.0
    per_connection: int = 200
    run_time_limit: float = 120.0  # seconds per load run
    soak_time_limit: float = 240.0  # seconds per soak run
    max_seconds: float = 570.0  # the whole benchmark: later runs are cut short or skipped past this
    bcrypt_rounds: int = 5  # Apache `htpasswd -B` default cost


FULL = Settings()
QUICK = Settings(
    warmup=20,
    ttfb_rounds=1,
    ttfb_requests=8,
    rps_rounds=1,
    rps_requests=200,
    soak_requests=400,
    soak_configs=(ADDON_1K,),
    run_time_limit=30.0,
    soak_time_limit=30.0,
    max_seconds=100.0,
)


# ---------------------------------------------------------------------------------------------------
# Processes


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads, exited ones included) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_mem(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Backend:
    """`python -m benchmarks.fake` as a subprocess; has `port` and `ca_cert_path` for `Mitmdump`."""

    def __init__(self, directory: Path, slow_delay_ms: float) -> None:
        self.ca_cert_path = directory / "fake-ca.pem"
        self.log_path = directory / "fakebackend.log"
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "benchmarks.fake", "--ca-out", str(self.ca_cert_path)]
        self.proc = subprocess.Popen(
            [*cmd, "--slow-delay-ms", str(slow_delay_ms)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"fake backend did not start: {line!r} {self.log_path.read_text()[-2000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        m = re.search(rb"port=(\d+)", line)
        if m is None:
            self.stop()
            raise RuntimeError(f"unexpected ready line {line!r}")
        self.port = int(m.group(1))
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def listens(pid: int, port: int) -> bool:
    """True if process `pid` holds the socket listening on 127.0.0.1:`port` (not another process)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == f"0100007F:{port:04X}" and parts[3] == "0A":
                inodes.add(f"socket:[{parts[9]}]")
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return True
    return False


def write_htpasswd(path: Path, users: Sequence[tuple[str, str]], rounds: int) -> Path:
    path.write_text(
        "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=rounds)).decode()}\n" for u, p in users)
    )
    return path


def today_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def write_day_summary(data_dir: Path, users: int) -> tuple[int, int]:
    """Today's summary with `users` distinct users in the original schema; returns (chat, completions)."""
    usage: dict[str, Any] = {}
    chat_total = completions_total = 0
    for i in range(users):
        chat = 1 + i % 7
        completions = 3 + i % 40
        usage[f"dev{i:04d}@example.com"] = {
            "chat_turns": chat,
            "completions_count": completions,
            "chat": {"vscode-1.111.0": chat},
            "completions": {"vscode-1.111.0": {"python": completions - 1, "typescript": 1}},
        }
        chat_total += chat
        completions_total += completions
    doc = {
        "day": today_utc(),
        "total_chat_turns": chat_total,
        "total_completions_count": completions_total,
        "usage": usage,
    }
    path = data_dir / "metrics" / f"copilot-usage_{today_utc()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=4))
    return chat_total, completions_total


@dataclass(slots=True)
class Target:
    """A place the client sends to: mitmdump (one configuration) or the fake backend (direct)."""

    name: str
    port: int
    ca_path: Path
    mitm: Mitmdump | None = None
    counted_sent: int = 0
    calls_sent: int = 0
    counted_unsure: int = 0  # in flight when a run was cut short, or failed: the addon may have counted them
    calls_unsure: int = 0

    @property
    def pid(self) -> int | None:
        return self.mitm.pid if self.mitm is not None else None

    @property
    def metrics_url(self) -> str | None:
        return self.mitm.metrics_url if self.mitm is not None and self.mitm.metrics_port else None


def start_proxy(name: str, backend: Backend, directory: Path, htpasswd: Path, summary_users: int) -> Target:
    """One mitmdump of configuration `name`, in upstream mode to the fake backend, proxy auth on."""
    for attempt in range(3):
        tmp = directory / (name if attempt == 0 else f"{name}-{attempt}")
        tmp.mkdir(parents=True)
        options: dict[str, object] = {}
        addon: Path | None = None
        if name == STREAM:
            options["stream_large_bodies"] = "1"
        if name == NULL_HOOKS:
            addon = REPO_ROOT / "benchmarks" / "null_addon.py"
        if name in ADDONS:
            addon = REPO_ROOT / "benchmarks" / "addon_entry.py"
            data_dir = tmp / "data"
            if name == ADDON_1K:
                write_day_summary(data_dir, summary_users)
            options["copilot_data_dir"] = str(data_dir)
            options["copilot_metrics_port"] = free_port()
            if name == ADDON_NOLOG:
                options["copilot_log_json"] = "off"
        mitm = Mitmdump(backend, tmp, addon=addon, proxyauth=f"@{htpasswd}", options=options, start_timeout=60)
        mitm.start()
        # Another process may have taken the /metrics port between free_port() and mitmdump's bind (the
        # addon then runs without /metrics, and the readiness probe was answered by that other process).
        if not mitm.metrics_port or listens(mitm.pid, mitm.metrics_port):
            return Target(name, mitm.port, mitm.ca_cert_path, mitm)
        mitm.stop()
    raise RuntimeError(f"{name}: /metrics port taken by another process three times")


# ---------------------------------------------------------------------------------------------------
# Runs


@dataclass(slots=True)
class Run:
    config: str
    phase: str
    requests: int
    errors: int
    elapsed: float
    rps: float
    ttfb_p50_ms: float
    last_p50_ms: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_ms: float | None  # mitmdump CPU per answered request
    proxy_util: float | None  # mitmdump CPU seconds per wall second
    client_cpu_ms: float
    backend_cpu_ms: float
    timed_out: bool
    first_errors: list[str] = field(default_factory=list)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def counts_match(target: Target, counted: float, calls: float) -> bool:
    """The addon's counts equal what was sent and answered, but for requests in flight when a run was cut at
    its time limit (or that failed): the proxy may have answered and counted those after the client gave up."""
    return (
        target.counted_sent <= counted <= target.counted_sent + target.counted_unsure
        and target.calls_sent <= calls <= target.calls_sent + target.calls_unsure
    )


def count_line(name: str, c: dict[str, Any]) -> str:
    """One configuration's count check as the report prints it."""
    line = (
        f"{name} copilot_requests_total {c['copilot_requests_total']:.0f} / counted sent {c['counted_sent']}, "
        f"model calls {c['copilot_model_calls_total']:.0f} / {c['model_calls_sent']}"
    )
    cut, cut_calls = c.get("counted_in_flight_when_cut", 0), c.get("model_calls_in_flight_when_cut", 0)
    if cut or cut_calls:
        line += f" (+ up to {cut} / {cut_calls} in flight when cut)"
    return line


class Bench:
    def __init__(self, settings: Settings, workdir: Path, log: Callable[[str], None]) -> None:
        self.s = settings
        self.workdir = workdir
        self.log = log
        self.users = tuple((f"dev{i:02d}", f"pw-{i:02d}-Xq7Lm2Zr") for i in range(1, settings.users + 1))
        self.run_ids = itertools.count(int(time.time()) % 100_000 * 1000)
        self.backend: Backend | None = None
        self.targets: dict[str, Target] = {}
        self.runs: list[Run] = []
        self.soak: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, dict[str, Any]] = {}
        self.configs: tuple[str, ...] = PROXIES
        self.deadline = time.monotonic() + settings.max_seconds
        self.skipped: list[str] = []
        self.elapsed = 0.0
        self.profile_report = ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.htpasswd = write_htpasswd(self.workdir / "htpasswd", self.users, self.s.bcrypt_rounds)
        self.backend = Backend(self.workdir, self.s.event_delay_ms)
        self.targets[DIRECT] = Target(DIRECT, self.backend.port, self.backend.ca_cert_path)
        self.targets.update(self._start_proxies(self.configs, self.workdir / "proxies"))

    def _start_proxies(self, names: Sequence[str], directory: Path) -> dict[str, Target]:
        assert self.backend is not None
        backend = self.backend
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {
                n: pool.submit(start_proxy, n, backend, directory, self.htpasswd, self.s.summary_users) for n in names
            }
            out: dict[str, Target] = {}
            errors = []
            for n, fut in futures.items():
                try:
                    out[n] = fut.result()
                except Exception as e:
                    errors.append(f"{n}: {e}")
        if errors:
            for t in out.values():
                self._stop_target(t)
            raise RuntimeError("mitmdump did not start: " + "; ".join(errors))
        return out

    def _stop_target(self, t: Target) -> None:
        if t.mitm is not None:
            t.mitm.stop()

    def stop(self) -> None:
        for t in self.targets.values():
            self._stop_target(t)
        if self.backend is not None:
            self.backend.stop()

    # -- one load run ---------------------------------------------------------------------------

    def drive(
        self,
        target: Target,
        phase: str,
        requests: int,
        concurrency: int,
        slow: bool = False,
        progress: Callable[[int], None] | None = None,
        time_limit: float | None = None,
    ) -> tuple[Run, LoadResult] | None:
        """One load run; None (and noted in `skipped`) when the time budget is spent."""
        assert self.backend is not None
        limit = min(time_limit or self.s.run_time_limit, self.deadline - time.monotonic())
        if limit < 3:
            self.skipped.append(f"{target.name} {phase}")
            self.log(f"  - {target.name} {phase}: skipped, the time budget ({self.s.max_seconds:.0f} s) is spent")
            return None
        spec = LoadSpec(
            port=target.port,
            ca_path=str(target.ca_path),
            users=self.users,
            requests=requests,
            concurrency=concurrency,
            run_id=next(self.run_ids),
            slow=slow,
            per_connection=self.s.per_connection,
            time_limit=limit,
        )
        pid = target.pid
        p0 = proc_cpu(pid) if pid else 0.0
        b0 = proc_cpu(self.backend.pid)
        c0 = time.process_time()
        result = asyncio.run(run_load(spec, progress))
        c1 = time.process_time()
        time.sleep(0.2)  # let mitmdump finish what the last answers started (the addon's writer thread)
        p1 = proc_cpu(pid) if pid else 0.0
        b1 = proc_cpu(self.backend.pid)
        target.counted_sent += result.counted
        target.calls_sent += result.model_calls
        target.counted_unsure += result.unsure_counted
        target.calls_unsure += result.unsure_model_calls
        n = max(1, result.ok)
        run = Run(
            config=target.name,
            phase=phase,
            requests=result.ok,
            errors=result.errors,
            elapsed=result.elapsed,
            rps=result.rps,
            ttfb_p50_ms=pct(result.ttfbs, 50) * 1000,
            last_p50_ms=pct(result.latencies, 50) * 1000,
            p50_ms=pct(result.latencies, 50) * 1000,
            p99_ms=pct(result.latencies, 99) * 1000,
            proxy_cpu_ms=(p1 - p0) / n * 1000 if pid else None,
            proxy_util=(p1 - p0) / result.elapsed if pid and result.elapsed > 0 else None,
            client_cpu_ms=(c1 - c0) / n * 1000,
            backend_cpu_ms=(b1 - b0) / n * 1000,
            timed_out=result.timed_out,
            first_errors=result.first_errors[:5],
        )
        if result.errors or result.timed_out:
            self.log(
                f"  ! {target.name} {phase}: {result.errors} errors, timed out={result.timed_out}: "
                f"{result.first_errors[:3]}"
            )
        return run, result

    # -- phases ---------------------------------------------------------------------------------

    def warmup(self) -> None:
        for name, t in self.targets.items():
            done = self.drive(t, "warmup", self.s.warmup, self.s.concurrency)
            if done is not None:
                self.log(f"  warm-up {name}: {done[0].requests} requests, {done[0].errors} errors")

    def rounds(
        self, phase: str, configs: Sequence[str], rounds: int, requests: int, concurrency: int, slow: bool
    ) -> None:
        for r in range(rounds):
            order = list(configs[r % len(configs) :]) + list(configs[: r % len(configs)])
            for name in order:
                done = self.drive(self.targets[name], phase, requests, concurrency, slow=slow)
                if done is None:
                    continue
                run = done[0]
                self.runs.append(run)
                extra = f"ttfb p50 {run.ttfb_p50_ms:.2f} ms" if slow else f"{run.rps:.0f} rps"
                cpu = f", mitmdump {run.proxy_cpu_ms:.3f} ms CPU/req" if run.proxy_cpu_ms is not None else ""
                self.log(f"  {phase} round {r + 1}/{rounds} {name:9s} {extra}, p99 {run.p99_ms:.1f} ms{cpu}")

    def run_soak(self, name: str) -> dict[str, Any]:
        """A fresh mitmdump of configuration `name`: one run of a warm-up (connections, certificates) and then
        `soak_requests` requests, with CPU and RSS read at every tenth of those."""
        directory = self.workdir / f"soak-{name}"
        target = self._start_proxies([name], directory)[name]
        try:
            pid = target.pid
            assert pid is not None
            n = self.s.soak_requests
            warm = min(300, max(50, n // 10))
            marks = [warm + round(n * k / 10) for k in range(11)]
            points: list[tuple[int, float, float, float]] = []

            def progress(done: int) -> None:
                if marks and done >= marks[0]:
                    marks.pop(0)
                    points.append((done, proc_cpu(pid), *proc_mem(pid)))

            done = self.drive(
                target, "soak", warm + n, self.s.concurrency, progress=progress, time_limit=self.s.soak_time_limit
            )
            if done is None or not points:
                return {}
            run = done[0]
            self.runs.append(run)
            if len(points) < 11:
                points.append((run.requests, proc_cpu(pid), *proc_mem(pid)))  # cut short: the rest as one part
            deciles = [
                (b[1] - a[1]) / max(1, b[0] - a[0]) * 1000 for a, b in itertools.pairwise(points)
            ]  # CPU ms per request in each tenth of the run
            rss = [p[2] for p in points]
            out = {
                "config": name,
                "warmup_requests": warm,
                "requests": points[-1][0] - points[0][0],
                "errors": run.errors,
                "rps": run.rps,
                "cpu_ms_per_request_by_decile": deciles,
                "cpu_first10_ms": deciles[0] if deciles else float("nan"),
                "cpu_last10_ms": deciles[-1] if deciles else float("nan"),
                "rss_mib_by_decile": rss,
                "rss_start_mib": rss[0],
                "rss_10pct_mib": rss[1] if len(rss) > 1 else float("nan"),
                "rss_end_mib": rss[-1],
                "peak_rss_mib": max(p[3] for p in points),
            }
            if target.metrics_url:
                out["count_check"] = self.check_counts(target)
            return out
        finally:
            self._stop_target(target)

    def check_counts(self, target: Target, timeout: float = 10.0) -> dict[str, Any]:
        """The addon's copilot_requests_total / copilot_model_calls_total sums against what was sent."""
        url = target.metrics_url
        assert url is not None
        deadline = time.monotonic() + timeout
        counted = calls = -1.0
        while True:
            text = httpx.get(url, timeout=5, trust_env=False).text
            sums = {"copilot_requests": 0.0, "copilot_model_calls": 0.0}
            for fam in text_string_to_metric_families(text):
                if fam.name in sums:
                    sums[fam.name] += sum(s.value for s in fam.samples if s.name.endswith("_total"))
            counted, calls = sums["copilot_requests"], sums["copilot_model_calls"]
            ok = counts_match(target, counted, calls)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return {
            "counted_sent": target.counted_sent,
            "copilot_requests_total": counted,
            "model_calls_sent": target.calls_sent,
            "copilot_model_calls_total": calls,
            "counted_in_flight_when_cut": target.counted_unsure,
            "model_calls_in_flight_when_cut": target.calls_unsure,
            "ok": ok,
        }

    def profile(self, directory: Path) -> None:
        """One more rps run per configuration under `py-spy record`; prints where the CPU goes per request."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            self.log("  profile: py-spy not found (pip install py-spy into the venv); skipped")
            return
        directory.mkdir(parents=True, exist_ok=True)
        report_lines = []
        for name in (c for c in (STREAM, NULL_HOOKS, ADDON) if c in self.configs):
            target = self.targets[name]
            out = directory / f"{name}.pyspy.txt"
            cmd = [pyspy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", str(out)]
            spy = subprocess.Popen(
                [*cmd, "--pid", str(target.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                time.sleep(1.0)  # attach
                done = self.drive(target, "profile", self.s.rps_requests, self.s.concurrency)
            finally:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(10)
            if done is None or done[0].proxy_cpu_ms is None or not out.exists():
                continue
            summary = pyspy_summary.load(out)
            only = "exporter/" if name == ADDON else None
            text = pyspy_summary.report(summary, done[0].proxy_cpu_ms, top=25 if only else 12, only=only)
            report_lines.append(f"profile of {LABELS[name]} ({out}):\n{text}\n")
        self.profile_report = "\n".join(report_lines)
        (directory / "summary.txt").write_text(self.profile_report)

    def run_all(self, profile_dir: Path | None = None) -> None:
        t0 = time.monotonic()
        self.log(f"warm-up ({self.s.warmup} requests per configuration)")
        self.warmup()
        self.log(
            f"ttfb: {self.s.ttfb_rounds} rounds x {self.s.ttfb_requests} streamed completions "
            f"({traffic.EVENTS_PER_COMPLETION} events {self.s.event_delay_ms:g} ms apart), "
            f"{self.s.ttfb_concurrency} at a time"
        )
        self.rounds(
            "ttfb",
            (DIRECT, BARE, STREAM, ADDON),
            self.s.ttfb_rounds,
            self.s.ttfb_requests,
            self.s.ttfb_concurrency,
            slow=True,
        )
        self.log(
            f"rps: {self.s.rps_rounds} rounds x {self.s.rps_requests} requests at concurrency {self.s.concurrency}"
        )
        self.rounds(
            "rps", (DIRECT, *self.configs), self.s.rps_rounds, self.s.rps_requests, self.s.concurrency, slow=False
        )
        for name in self.configs:
            if name in ADDONS:
                self.counts[name] = self.check_counts(self.targets[name])
        if profile_dir is not None:
            self.log(f"profile: py-spy on one more rps run per configuration, into {profile_dir}")
            self.profile(profile_dir)
            for name in self.configs:
                if name in ADDONS:
                    self.counts[name] = self.check_counts(self.targets[name])
        for name in self.s.soak_configs:
            self.log(f"soak {name}: fresh mitmdump, {self.s.soak_requests} requests")
            result = self.run_soak(name)
            if result:
                self.soak[name] = result
            if "count_check" in result:
                self.counts[f"soak_{name}"] = result["count_check"]
        self.elapsed = time.monotonic() - t0


# ---------------------------------------------------------------------------------------------------
# Report


def med(values: Sequence[float | None]) -> float:
    vs = [v for v in values if v is not None and v == v]
    return statistics.median(vs) if vs else float("nan")


def summarize(runs: Sequence[Run], configs: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in (DIRECT, *configs):
        ttfb = [r for r in runs if r.config == name and r.phase == "ttfb"]
        rps = [r for r in runs if r.config == name and r.phase == "rps"]
        out[name] = {
            "ttfb_ms": med([r.ttfb_p50_ms for r in ttfb]),
            "last_event_ms": med([r.last_p50_ms for r in ttfb]),
            "rps": med([r.rps for r in rps]),
            "p50_ms": med([r.p50_ms for r in rps]),
            "p99_ms": med([r.p99_ms for r in rps]),
            "cpu_ms": med([r.proxy_cpu_ms for r in rps]),
            "util": med([r.proxy_util for r in rps]),
            "client_cpu_ms": med([r.client_cpu_ms for r in rps]),
            "backend_cpu_ms": med([r.backend_cpu_ms for r in rps]),
            "errors": float(sum(r.errors for r in ttfb + rps)),
        }
    return out


@dataclass(slots=True)
class Check:
    name: str
    value: float
    limit: float
    ok: bool
    detail: str


def budget(m: dict[str, dict[str, float]], soak: dict[str, dict[str, Any]]) -> list[Check]:
    d, s, a, k = m[DIRECT], m[STREAM], m[ADDON], m[ADDON_1K]
    checks = []

    def add(name: str, value: float, limit: float, ok: bool, detail: str) -> None:
        checks.append(Check(name, value, limit, ok, detail))

    # The budget of docs/performance.md (issue 20, every feature on).
    r = a["ttfb_ms"] / d["ttfb_ms"]
    add(
        "TTFB addon <= 1.05x direct",
        r,
        1.05,
        r <= 1.05,
        f"{a['ttfb_ms']:.2f} vs {d['ttfb_ms']:.2f} ms (bare stream {s['ttfb_ms'] / d['ttfb_ms']:.2f}x direct, "
        f"addon {a['ttfb_ms'] / s['ttfb_ms']:.2f}x bare stream; +{a['ttfb_ms'] - s['ttfb_ms']:.2f} ms)",
    )
    r = a["last_event_ms"] / d["last_event_ms"]
    add(
        "(info) last event addon <= 1.10x direct",
        r,
        1.10,
        r <= 1.10,
        f"{a['last_event_ms']:.1f} vs {d['last_event_ms']:.1f} ms",
    )
    r = a["rps"] / s["rps"]
    add("rps addon >= 0.95x bare stream", r, 0.95, r >= 0.95, f"{a['rps']:.0f} vs {s['rps']:.0f} rps")
    r = a["p99_ms"] / s["p99_ms"]
    add("p99 addon <= 1.10x bare stream", r, 1.10, r <= 1.10, f"{a['p99_ms']:.1f} vs {s['p99_ms']:.1f} ms")
    diff = a["cpu_ms"] - s["cpu_ms"]
    add(
        "added CPU <= 0.25 ms/request",
        diff,
        0.25,
        diff <= 0.25,
        f"{a['cpu_ms']:.3f} - {s['cpu_ms']:.3f} ms (vs bare buffer: +{a['cpu_ms'] - m[BARE]['cpu_ms']:.3f} ms)",
    )
    r = k["rps"] / a["rps"]
    add("1k users in the day: rps >= 0.95x addon", r, 0.95, r >= 0.95, f"{k['rps']:.0f} vs {a['rps']:.0f} rps")
    r = k["cpu_ms"] / a["cpu_ms"]
    add(
        "1k users in the day: CPU/request <= 1.05x addon",
        r,
        1.05,
        r <= 1.05,
        f"{k['cpu_ms']:.3f} vs {a['cpu_ms']:.3f} ms",
    )
    for name, so in soak.items():
        r = so["cpu_last10_ms"] / so["cpu_first10_ms"]
        add(
            f"soak {name}: CPU/request last 10% <= 1.10x first 10%",
            r,
            1.10,
            r <= 1.10,
            f"{so['cpu_last10_ms']:.3f} vs {so['cpu_first10_ms']:.3f} ms",
        )
        if name != STREAM and STREAM in soak:
            growth = (so["rss_end_mib"] - so["rss_10pct_mib"]) - (
                soak[STREAM]["rss_end_mib"] - soak[STREAM]["rss_10pct_mib"]
            )
            add(
                f"soak {name}: RSS growth 10%->100% over bare stream's <= 8 MiB",
                growth,
                8.0,
                growth <= 8.0,
                f"{so['rss_10pct_mib']:.0f} -> {so['rss_end_mib']:.0f} MiB (bare stream "
                f"{soak[STREAM]['rss_10pct_mib']:.0f} -> {soak[STREAM]['rss_end_mib']:.0f})",
            )
    return checks


def fmt(v: float | None, spec: str) -> str:
    if v is None or v != v:
        return "-"
    return format(v, spec)


def environment() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy_version.VERSION,
        "loadavg": os.getloadavg(),
    }


def report(bench: Bench, quick: bool, env_before: dict[str, Any], env_after: dict[str, Any]) -> dict[str, Any]:
    m = summarize(bench.runs, bench.configs)
    cols = (DIRECT, *bench.configs)
    rows: list[tuple[str, str, str]] = [
        ("TTFB p50, streamed answer (ms)", "ttfb_ms", ".2f"),
        ("last event p50 (ms)", "last_event_ms", ".1f"),
        ("requests/s, concurrency 16", "rps", ".0f"),
        ("latency p50 (ms)", "p50_ms", ".2f"),
        ("latency p99 (ms)", "p99_ms", ".2f"),
        ("mitmdump CPU ms/request", "cpu_ms", ".3f"),
        ("mitmdump CPU s per s", "util", ".2f"),
        ("client CPU ms/request", "client_cpu_ms", ".3f"),
        ("fake backend CPU ms/request", "backend_cpu_ms", ".3f"),
    ]
    w = 17
    lines = ["", f"{'':32s}" + "".join(f"{LABELS[c]:>{w}s}" for c in cols)]
    for label, key, spec in rows:
        lines.append(f"{label:32s}" + "".join(f"{fmt(m[c][key], spec):>{w}s}" for c in cols))
    if bench.soak:
        lines.append("")
        warm = next(iter(bench.soak.values()))["warmup_requests"]
        lines.append(f"soak: a fresh process, {warm} requests of warm-up, then {bench.s.soak_requests} measured")
        lines.append(f"{'':32s}" + "".join(f"{LABELS[c]:>{w}s}" for c in bench.soak))
        for label, key, spec in (
            ("requests/s", "rps", ".0f"),
            ("CPU ms/request, first 10%", "cpu_first10_ms", ".3f"),
            ("CPU ms/request, last 10%", "cpu_last10_ms", ".3f"),
            ("RSS after warm-up (MiB)", "rss_start_mib", ".1f"),
            ("RSS at 10% (MiB)", "rss_10pct_mib", ".1f"),
            ("RSS at end (MiB)", "rss_end_mib", ".1f"),
            ("peak RSS (MiB)", "peak_rss_mib", ".1f"),
        ):
            lines.append(f"{label:32s}" + "".join(f"{fmt(bench.soak[c][key], spec):>{w}s}" for c in bench.soak))
    diffs = {
        "addon_minus_bare_buffer_cpu_ms": m[ADDON]["cpu_ms"] - m[BARE]["cpu_ms"],
        "addon_minus_bare_stream_cpu_ms": m[ADDON]["cpu_ms"] - m[STREAM]["cpu_ms"],
        "addon_1k_minus_bare_stream_cpu_ms": m[ADDON_1K]["cpu_ms"] - m[STREAM]["cpu_ms"],
    }
    if NULL_HOOKS in m:
        diffs["null_hooks_minus_bare_stream_cpu_ms"] = m[NULL_HOOKS]["cpu_ms"] - m[STREAM]["cpu_ms"]
        diffs["addon_minus_null_hooks_cpu_ms"] = m[ADDON]["cpu_ms"] - m[NULL_HOOKS]["cpu_ms"]
    if ADDON_NOLOG in m:
        diffs["addon_minus_addon_log_off_cpu_ms"] = m[ADDON]["cpu_ms"] - m[ADDON_NOLOG]["cpu_ms"]
    lines.append("")
    lines.append("CPU per request over bare: " + ", ".join(f"{k} {v:+.3f}" for k, v in diffs.items()))
    counts_ok = all(c["ok"] for c in bench.counts.values())
    lines.append(
        "addon counts: "
        + "; ".join(count_line(k, c) for k, c in bench.counts.items())
        + (" OK" if counts_ok else " MISMATCH")
    )
    checks: list[Check] = []
    if not quick:
        checks = budget(m, bench.soak)
        lines.append("")
        lines.append("budget (medians):")
        for c in checks:
            lines.append(f"  {'PASS' if c.ok else 'MISS'}  {c.name}: {c.value:.3f} (limit {c.limit:g}) {c.detail}")
    errors = sum(r.errors for r in bench.runs)
    if bench.skipped:
        lines.append(f"skipped (time budget {bench.s.max_seconds:.0f} s spent): {', '.join(bench.skipped)}")
    lines.append("")
    lines.append(
        f"{len(bench.users)} users (htpasswd, bcrypt cost {bench.s.bcrypt_rounds}); mix per worker: "
        + ", ".join(t.name for t in traffic.MIX_TEMPLATES)
        + f"; {errors} request errors; {bench.elapsed:.0f} s of load; load average before "
        + "/".join(f"{x:.2f}" for x in env_before["loadavg"])
        + ", after "
        + "/".join(f"{x:.2f}" for x in env_after["loadavg"])
        + f"; {env_before['cpus']} CPUs {env_before['cpu_model']}, Python {env_before['python']}, "
        f"mitmproxy {env_before['mitmproxy']}"
    )
    if bench.profile_report:
        lines += ["", bench.profile_report]
    print("\n".join(lines), flush=True)
    doc = {
        "benchmark": "copilot-proxy-insight",
        "mode": "quick" if quick else "full",
        "settings": asdict(bench.s),
        "medians": m,
        "cpu_diffs_ms": diffs,
        "soak": bench.soak,
        "counts": bench.counts,
        "counts_ok": counts_ok,
        "budget": [asdict(c) for c in checks],
        "errors": errors,
        "skipped": bench.skipped,
        "environment": {"before": env_before, "after": env_after},
        "elapsed_s": bench.elapsed,
        "runs": [asdict(r) for r in bench.runs],
    }
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, separators=(",", ":")), flush=True)
    return doc


# ---------------------------------------------------------------------------------------------------
# CLI


@contextlib.contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    d = tempfile.mkdtemp(prefix="copilot-bench-")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few hundred requests: a smoke test, no timings checked")
    parser.add_argument("--json-out", type=Path, help="also write the full results (every run) to this file")
    parser.add_argument("--workdir", type=Path, help="keep processes' files (logs, data dirs) here")
    parser.add_argument("--rps-requests", type=int, help="requests per rps run (default: 4000, quick 300)")
    parser.add_argument("--rounds", type=int, help="rounds of the ttfb and rps phases (default: 5, quick 1)")
    parser.add_argument("--soak-requests", type=int, help="requests per soak run (default: 20000, quick 400)")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also run mitmdump with a do-nothing addon of the same hooks and the addon with its JSON log off",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="record py-spy profiles of one more rps run per configuration"
    )
    parser.add_argument("--max-minutes", type=float, help="time budget of the whole run (default 9.5, quick 1.7)")
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.rps_requests:
        overrides["rps_requests"] = args.rps_requests
    if args.rounds:
        overrides["rps_rounds"] = overrides["ttfb_rounds"] = args.rounds
    if args.soak_requests:
        overrides["soak_requests"] = args.soak_requests
    if args.max_minutes:
        overrides["max_seconds"] = args.max_minutes * 60
    if overrides:
        s = Settings(**{**asdict(s), **overrides})

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env_before = environment()
    with workdir(args.workdir) as wd:
        bench = Bench(s, wd, log)
        if args.diagnose:
            bench.configs = PROXIES + DIAGNOSE
        log(f"starting the fake backend and {len(bench.configs)} mitmdump processes in {wd}")
        try:
            bench.start()
            bench.run_all(args.profile)
        finally:
            bench.stop()
    doc = report(bench, args.quick, env_before, environment())
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2))
    ok = doc["counts_ok"] and doc["errors"] == 0 and not any(r.timed_out for r in bench.runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
