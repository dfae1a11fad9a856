"""Soak: many concurrent streaming clients through a real mitmdump + addon for a bounded time.

    python -m tests.e2e.soak --clients 200 --seconds 120

The fake Copilot backend runs as its own process (`python -m tests.e2e.fakebackend`) so that it keeps up;
mitmdump runs with the addon in upstream mode in front of it, with `proxyauth=any` (client i is user
`soak-<i>`) and `connection_strategy=lazy` (a share of the clients speak HTTP/2, as VS Code does). Each
client sends a weighted mix of real-looking Copilot calls (completions from three editors, prefetches,
empty completions, agent turns with a tool step and the follow-up, Responses and Messages API turns, a
Zed chat), one after the other, each with a fresh request id (and interaction id), and reads each event
stream to its end, comparing it with the sample's bytes. Everything is bounded: by `--seconds` and by
`--requests-per-client`.

It reports, and fails (exit status 1) unless all hold:
- no error: every answer arrived whole and byte-identical, no client exception, no addon failure in
  mitmdump's log, `copilot_exporter_errors_total` 0;
- exact counts: `/metrics` `copilot_requests_total` equals the counted calls sent (from the samples'
  expected facts), `copilot_responses_total` equals the calls sent; after a graceful stop, the JSON log's
  counted lines and the daily summary's totals equal them too.
It also samples mitmdump's RSS (VmRSS from /proc/<pid>/status), open files and CPU time once a second and
reports the first sample after the warm-up (at least `--warmup` seconds, and until every client has made
its first call to each of the four upstream hosts, so that all connections are open), the last one while
all clients still send, and the peak (reported, not asserted: memory is judged by a person, not by a
timed threshold). `--no-addon` runs bare mitmdump with the same traffic as a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import samples
from tests.e2e.harness import REPO_ROOT, Mitmdump, _H2FirstContext, free_port, request_headers
from tests.e2e.test_e2e import metric_total, parse_metrics, scrape, variant

S = samples
# (sample or "turn", weight): completions dominate, as in real use.
MIX: tuple[tuple[str, int], ...] = (
    ("vscode_completion", 4),
    ("neovim_completion", 2),
    ("jetbrains_completion", 2),
    ("vscode_completion_speculative", 1),
    ("vscode_completion_empty", 1),
    ("turn", 1),  # agent turn + tool step + follow-up suggestions, one fresh interaction id
    ("vscode_responses", 1),
    ("vscode_messages", 1),
    ("zed_chat", 1),
)
_FAILED = re.compile(r"copilot-proxy-insight: \S+ failed: ")


# One call to each upstream host first, so that every client's connections are open after the warm-up.
FIRST = ("vscode_completion", "neovim_completion", "vscode_responses", "zed_chat")


def pick(rng: random.Random, nth: int = len(FIRST)) -> list[samples.Exchange]:
    """The next calls of a client: one sample (fresh ids), or the three calls of an agent turn."""
    name = FIRST[nth] if nth < len(FIRST) else rng.choices([n for n, _ in MIX], weights=[w for _, w in MIX])[0]
    if name == "turn":
        iid = str(uuid.uuid4())
        return [
            variant(S.BY_NAME[n], iid) for n in ("vscode_agent_turn", "vscode_agent_step", "vscode_agent_suggestions")
        ]
    ex = S.BY_NAME[name]
    return [variant(ex, str(uuid.uuid4()) if ex.expected["interaction_id"] else None)]


# ---------------------------------------------------------------------------------------------------
# The fake backend as a process


@dataclass
class BackendProcess:
    """`python -m tests.e2e.fakebackend` running; has `port` and `ca_cert_path` for `Mitmdump`."""

    proc: subprocess.Popen[str]
    port: int
    ca_cert_path: Path

    @classmethod
    def start(cls, directory: Path, event_delay_ms: float, timeout: float = 30.0) -> BackendProcess:
        ca = directory / "fakebackend-ca.pem"
        cmd = [sys.executable, "-m", "tests.e2e.fakebackend", "--port", "0", "--ca-out", str(ca)]
        cmd += ["--event-delay-ms", str(event_delay_ms)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        assert proc.stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                raise RuntimeError("the fake backend process did not report ready") from None
            if line.startswith("fakebackend ready"):
                fields = dict(part.split("=", 1) for part in line.split()[2:])
                return cls(proc, int(fields["port"]), Path(fields["ca"]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---------------------------------------------------------------------------------------------------
# Clients


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    counted: int = 0  # calls the samples say are counted interactions
    by_kind: Counter[str] = field(default_factory=Counter)
    counted_by_kind: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    http2_answers: int = 0
    primed: int = 0  # clients that made their first call to every host (all their connections are open)
    all_primed_at: float | None = None  # time.monotonic() when the last client got there


def _client(proxy: Mitmdump, user: str, http2: bool) -> httpx.AsyncClient:
    ctx: ssl.SSLContext = _H2FirstContext(ssl.PROTOCOL_TLS_CLIENT) if http2 else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(proxy.ca_cert_path))
    client = httpx.AsyncClient(
        proxy=f"http://{user}:pw@127.0.0.1:{proxy.port}",
        verify=ctx,
        http1=True,
        http2=http2,
        trust_env=False,
        timeout=60.0,
    )
    for name in ("accept", "accept-encoding", "user-agent"):
        del client.headers[name]
    return client


async def run_client(
    proxy: Mitmdump,
    index: int,
    clients: int,
    http2: bool,
    deadline: float,
    max_requests: int,
    seed: int,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    user = f"soak-{index:03d}"
    sent = picked = 0
    async with _client(proxy, user, http2) as client:
        while time.monotonic() < deadline and sent < max_requests:
            picked += 1
            if picked == len(FIRST) + 1:
                tally.primed += 1
                if tally.primed == clients:
                    tally.all_primed_at = time.monotonic()
            for ex in pick(rng, picked - 1):
                sent += 1
                tally.sent += 1
                try:
                    async with client.stream(
                        ex.method, ex.url, headers=request_headers(ex), content=ex.request_body or None
                    ) as r:
                        body = b"".join([chunk async for chunk in r.aiter_raw()])
                        if r.http_version == "HTTP/2":
                            tally.http2_answers += 1
                except Exception as e:  # every failure is a soak error, reported with its call
                    tally.errors.append(f"{user} {ex.name} {ex.request_id}: {type(e).__name__}: {e}")
                    continue
                if r.status_code != ex.status or body != ex.response_body:
                    tally.errors.append(f"{user} {ex.name} {ex.request_id}: status {r.status_code}, body differs")
                    continue
                tally.completed += 1
                tally.by_kind[ex.expected["kind"]] += 1
                if ex.expected["counted"]:
                    tally.counted += 1
                    tally.counted_by_kind[ex.expected["kind"]] += 1


# ---------------------------------------------------------------------------------------------------
# RSS, open files, CPU


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the clients started
    rss_kib: int
    fds: int
    cpu_s: float


class Sampler(threading.Thread):
    """Samples a process's RSS, open files and CPU time once a second (a sampling period, not a timing
    assumption: nothing is asserted on time)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.pid = pid
        self.samples: list[Sample] = []
        self.started_at = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, fds, cpu = rss_kib(self.pid), open_fds(self.pid), cpu_seconds(self.pid)
            if rss is not None and fds is not None and cpu is not None:
                self.samples.append(Sample(time.monotonic() - self.started_at, rss, fds, cpu))
            self._stop_event.wait(1.0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class SoakResult:
    clients: int
    seconds_planned: float
    seconds_run: float
    sent: int
    completed: int
    counted_expected: int
    http2_answers: int
    by_kind: dict[str, int]
    errors: list[str]
    metrics_requests_total: float
    metrics_responses_total: float
    metrics_exporter_errors: float
    metrics_requests_by_kind: dict[str, float]
    log_counted_lines: int
    summary_total: int
    addon_failures_logged: int
    tracebacks_logged: int
    returncode: int | None
    addon: bool
    rss_first_after_warmup_kib: int | None
    rss_last_kib: int | None
    rss_peak_kib: int | None
    warmup_s: float
    fds_first_after_warmup: int | None
    fds_last: int | None
    mitmdump_cpu_s: float | None
    backend_cpu_s: float | None
    clients_cpu_s: float
    samples: list[Sample]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        def mib(v: int | None) -> str:
            return "n/a" if v is None else f"{v / 1024:.1f} MiB"

        rate = self.sent / self.seconds_run if self.seconds_run else 0.0
        lines = [
            f"soak: {self.clients} clients, {self.seconds_run:.1f} s (planned {self.seconds_planned:.0f} s)",
            f"  calls sent {self.sent}, answered whole and byte-identical {self.completed} ({rate:.1f}/s), "
            f"over HTTP/2 {self.http2_answers}",
            f"  counted expected {self.counted_expected}; "
            f"/metrics copilot_requests_total {self.metrics_requests_total:.0f}; "
            f"JSON log counted lines {self.log_counted_lines}; daily summary total {self.summary_total}",
            f"  /metrics copilot_responses_total {self.metrics_responses_total:.0f}; "
            f"copilot_exporter_errors_total {self.metrics_exporter_errors:.0f}",
            f"  by kind: {dict(sorted(self.by_kind.items()))}",
            f"  client errors {len(self.errors)}; addon failures logged {self.addon_failures_logged}; "
            f"tracebacks logged {self.tracebacks_logged}; mitmdump exit status {self.returncode}",
            f"  warm-up {self.warmup_s} s (until every client had a connection to each host)",
            f"  mitmdump RSS: first after warm-up {mib(self.rss_first_after_warmup_kib)}, last "
            f"{mib(self.rss_last_kib)}, peak {mib(self.rss_peak_kib)} ({len(self.samples)} samples); open files "
            f"first after warm-up {self.fds_first_after_warmup}, last {self.fds_last}",
            f"  CPU seconds while the clients ran: mitmdump {self.mitmdump_cpu_s}, fake backend "
            f"{self.backend_cpu_s}, clients {self.clients_cpu_s:.1f}"
            + ("" if self.addon else " (baseline: mitmdump WITHOUT the addon; counts not checked)"),
            f"  result: {'OK' if self.ok else 'FAILED: ' + '; '.join(self.problems)}",
        ]
        lines += [f"  error: {e}" for e in self.errors[:10]]
        return "\n".join(lines)


def run_soak(
    clients: int,
    seconds: float,
    *,
    requests_per_client: int = 100_000,
    warmup: float = 20.0,
    http2_share: float = 0.5,
    event_delay_ms: float = 5.0,
    seed: int = 1,
    work_dir: Path | None = None,
    addon: bool = True,
) -> SoakResult:
    """Runs the soak (backend process + mitmdump + `clients` async clients) and checks errors and counts.
    `addon=False` runs bare mitmdump as a baseline for RSS and CPU (nothing to count then)."""
    own = None
    if work_dir is None:
        own = tempfile.TemporaryDirectory(prefix="soak-")
        work_dir = Path(own.name)
    data = work_dir / "data"
    backend = BackendProcess.start(work_dir, event_delay_ms)
    tally = Tally()
    options: dict[str, object] = {"connection_strategy": "lazy"}
    if addon:
        options.update(copilot_data_dir=data, copilot_metrics_port=free_port())
    proxy = Mitmdump(
        backend,
        work_dir / "mitmdump",
        proxyauth="any",
        options=options,
        **({} if addon else {"addon": None}),
    )
    sampler: Sampler | None = None
    backend_cpu: float | None = None
    clients_cpu = 0.0
    problems: list[str] = []
    metrics_text = ""
    started = time.monotonic()
    elapsed = 0.0
    try:
        proxy.start()
        sampler = Sampler(proxy.pid)
        sampler.start()
        rng = random.Random(seed)
        started = time.monotonic()
        cpu_before = time.process_time()
        backend_before = cpu_seconds(backend.proc.pid) or 0.0
        deadline = started + seconds

        async def all_clients() -> None:
            await asyncio.gather(
                *(
                    run_client(
                        proxy,
                        i,
                        clients,
                        rng.random() < http2_share,
                        deadline,
                        requests_per_client,
                        rng.randrange(2**32),
                        tally,
                    )
                    for i in range(clients)
                )
            )

        asyncio.run(all_clients())
        elapsed = time.monotonic() - started
        clients_cpu = time.process_time() - cpu_before
        backend_after = cpu_seconds(backend.proc.pid)
        backend_cpu = None if backend_after is None else round(backend_after - backend_before, 1)

        def all_seen() -> bool:
            parsed = parse_metrics(scrape(proxy.metrics_url))
            return metric_total(parsed, "copilot_responses_total") >= tally.completed

        if addon:
            with contextlib.suppress(TimeoutError):
                proxy.wait_for(all_seen, 60.0, "every answered call in copilot_responses_total")
            metrics_text = scrape(proxy.metrics_url)
    finally:
        if sampler is not None:
            sampler.stop()
        returncode = proxy.stop(timeout=60)
        backend.stop()
    parsed = parse_metrics(metrics_text) if metrics_text else []
    requests_total = metric_total(parsed, "copilot_requests_total")
    by_kind: Counter[str] = Counter()
    for name, labels, value in parsed:
        if name == "copilot_requests_total":
            by_kind[labels["kind"]] += value
    log_counted = 0
    for path in sorted((data / "events").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line and json.loads(line).get("counted") is True:
                log_counted += 1
    summary_total = 0
    for path in sorted((data / "metrics").glob("copilot-usage_*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        summary_total += doc["total_chat_turns"] + doc["total_completions_count"]
    log = proxy.log_text()
    failures = len(_FAILED.findall(log))
    tracebacks = log.count("Traceback")
    # While every client was still sending (clients close their connections as they finish).
    samples_ = [x for x in (sampler.samples if sampler is not None else []) if x.t <= min(elapsed, seconds)]
    # Warm-up: at least `warmup` seconds, and until every client has its connections open.
    primed = (tally.all_primed_at - started) if tally.all_primed_at is not None else elapsed
    warm = max(warmup, primed)
    after = [x for x in samples_ if x.t >= warm] or samples_[-1:]
    counted_expected = tally.counted  # completions and chat turns only: all of them are in the daily summary
    if tally.errors:
        problems.append(f"{len(tally.errors)} client errors")
    if tally.completed != tally.sent:
        problems.append(f"{tally.sent - tally.completed} calls not answered whole")
    if not addon:
        pass  # the baseline has nothing to count
    elif requests_total != counted_expected:
        problems.append(f"/metrics copilot_requests_total {requests_total} != counted calls sent {counted_expected}")
    if addon and {k: v for k, v in by_kind.items() if v} != {k: float(v) for k, v in tally.counted_by_kind.items()}:
        problems.append(f"per-kind counts differ: {dict(by_kind)} != {dict(tally.counted_by_kind)}")
    responses_total = metric_total(parsed, "copilot_responses_total")
    if addon and responses_total != tally.completed:
        problems.append(f"/metrics copilot_responses_total {responses_total} != calls answered {tally.completed}")
    exporter_errors = metric_total(parsed, "copilot_exporter_errors_total")
    if exporter_errors:
        problems.append(f"copilot_exporter_errors_total {exporter_errors}")
    if addon and log_counted != counted_expected:
        problems.append(f"JSON log counted lines {log_counted} != {counted_expected}")
    if addon and summary_total != counted_expected:
        problems.append(f"daily summary total {summary_total} != {counted_expected}")
    if failures or tracebacks:
        problems.append(f"mitmdump log: {failures} addon failures, {tracebacks} tracebacks")
    if returncode != 0:
        problems.append(f"mitmdump exit status {returncode}")
    result = SoakResult(
        clients=clients,
        seconds_planned=seconds,
        seconds_run=elapsed,
        sent=tally.sent,
        completed=tally.completed,
        counted_expected=counted_expected,
        http2_answers=tally.http2_answers,
        by_kind=dict(tally.by_kind),
        errors=tally.errors,
        metrics_requests_total=requests_total,
        metrics_responses_total=responses_total,
        metrics_exporter_errors=exporter_errors,
        metrics_requests_by_kind=dict(by_kind),
        log_counted_lines=log_counted,
        summary_total=summary_total,
        addon_failures_logged=failures,
        tracebacks_logged=tracebacks,
        returncode=returncode,
        addon=addon,
        rss_first_after_warmup_kib=after[0].rss_kib if after else None,
        rss_last_kib=samples_[-1].rss_kib if samples_ else None,
        rss_peak_kib=max((x.rss_kib for x in samples_), default=None),
        warmup_s=round(warm, 1),
        fds_first_after_warmup=after[0].fds if after else None,
        fds_last=samples_[-1].fds if samples_ else None,
        mitmdump_cpu_s=round(samples_[-1].cpu_s - samples_[0].cpu_s, 1) if samples_ else None,
        backend_cpu_s=backend_cpu,
        clients_cpu_s=clients_cpu,
        samples=samples_,
        problems=problems,
    )
    if own is not None:
        own.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients (default 200)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long clients send (default 120)")
    parser.add_argument("--requests-per-client", type=int, default=100_000, help="upper bound per client")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before the first RSS figure (default 20)")
    parser.add_argument("--http2-share", type=float, default=0.5, help="share of HTTP/2 clients (default 0.5)")
    parser.add_argument("--event-delay-ms", type=float, default=5.0, help="backend pause between events (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="RNG seed of the traffic mix (default 1)")
    parser.add_argument("--work-dir", type=Path, help="keep mitmdump's log and the data dir here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--no-addon", action="store_true", help="baseline: bare mitmdump, no counts checked")
    args = parser.parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    result = run_soak(
        args.clients,
        args.seconds,
        requests_per_client=args.requests_per_client,
        warmup=args.warmup,
        http2_share=args.http2_share,
        event_delay_ms=args.event_delay_ms,
        seed=args.seed,
        work_dir=args.work_dir,
        addon=not args.no_addon,
    )
    print(result.text())
    if args.json is not None:
        doc: dict[str, Any] = asdict(result)
        doc["ok"] = result.ok
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
