"""Durability: mitmdump is killed with SIGKILL at random points during traffic, several times on one data dir.

After every kill the day's summary on disk must be valid JSON in the original schema (it is written with
tmp file + fsync + os.replace, so a reader sees the old file or the new one, whole). After the last kill,
the documented rebuild command (`copilot-proxy-insight-rebuild --data-dir DIR DAY`) must rebuild each
day's summary from the JSON event log with exactly the counts of the counted lines in that log, reporting
and skipping a last line cut by a kill.

The kill points are drawn from a seeded RNG: `DURABILITY_SEED=<n>` replays a run (the seed is printed, and
named in every assertion message); `DURABILITY_KILLS=<n>` sets the number of kills (default 6).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, Gate
from tests.e2e.harness import Mitmdump, free_port, open_stream, proxy_client, send, wait_for
from tests.e2e.test_e2e import check_summary_schema, variant

pytestmark = pytest.mark.e2e

S = samples
REBUILD = Path(sys.executable).parent / "copilot-proxy-insight-rebuild"
SEED = int(os.environ.get("DURABILITY_SEED") or random.SystemRandom().randrange(2**32))
KILLS = int(os.environ.get("DURABILITY_KILLS", "6"))
USERS = ("alice", "bob")
CHAT_KINDS = frozenset(
    {"chat", "chat_panel", "chat_agent", "chat_edits", "chat_inline", "chat_notebook", "chat_terminal", "chat_ws"}
)
# The mix each client sends: counted completions from three editors, a prefetch, agent turns and steps.
MIX = ("vscode_completion", "neovim_completion", "jetbrains_completion", "vscode_completion_speculative", "turn")


def next_calls(rng: random.Random) -> list[samples.Exchange]:
    """One item of the mix: a call, or a chat turn (user request + a tool-loop step, own interaction id)."""
    name = rng.choice(MIX)
    if name == "turn":
        iid = str(uuid.uuid4())
        return [variant(S.VSCODE_AGENT_TURN, iid), variant(S.VSCODE_AGENT_STEP, iid)]
    return [variant(S.BY_NAME[name])]


@dataclass
class Traffic:
    """Client threads sending the mix until told to stop (or their bound); counts what fully came back."""

    proxy: Mitmdump
    rng: random.Random
    completed: int = 0
    errors: int = 0  # connection errors: expected once the proxy is killed
    mismatches: list[str] = field(default_factory=list)  # answers that differ from the backend's: never
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client_loop(self, user: str, seed: int, max_requests: int = 200) -> None:
        rng = random.Random(seed)
        sent = 0
        with proxy_client(self.proxy.port, user, "pw", self.proxy.ca_cert_path, timeout=10) as client:
            while not self.stop.is_set() and sent < max_requests:
                for ex in next_calls(rng):
                    sent += 1
                    try:
                        result = send(client, ex)
                    except httpx.HTTPError:
                        with self.lock:
                            self.errors += 1
                        return  # the proxy is gone
                    with self.lock:
                        if result.body == ex.response_body:
                            self.completed += 1
                        else:
                            self.mismatches.append(f"{ex.name} {ex.request_id}")


def log_lines(data: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (data / "events").glob("copilot-events_*.jsonl"))


def durable_call(proxy: Mitmdump, data: Path, user: str) -> None:
    """One call, then wait until its line is on disk: every process leaves something in the log, whatever
    the writer's batching (it writes every 250 ms), so the rebuild always has lines to work on."""
    before = log_lines(data)
    ex = variant(S.VSCODE_COMPLETION)
    with proxy_client(proxy.port, user, "pw", proxy.ca_cert_path) as client:
        assert send(client, ex).body == ex.response_body
    proxy.wait_for(lambda: log_lines(data) > before, 10.0, "the first call's log line")


def kill9(proxy: Mitmdump) -> None:
    assert proxy.proc is not None
    os.kill(proxy.pid, signal.SIGKILL)
    proxy.proc.wait(10)
    proxy.stop()  # closes the log file; the process is already gone
    assert proxy.returncode == -signal.SIGKILL


@dataclass
class KillReport:
    iteration: int
    point: str
    flush_interval: str
    completed_before_kill: int  # answers the clients got whole, the durable first call included
    summary_totals: tuple[int, int] | None
    cut_last_line: bool


def check_disk_after_kill(data: Path, what: str) -> tuple[tuple[int, int] | None, bool]:
    """Every summary parses and is consistent; returns (chat, completion totals) and whether a log line is cut."""
    totals: tuple[int, int] | None = None
    for path in sorted((data / "metrics").glob("copilot-usage_*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise AssertionError(f"{what}: {path.name} is not valid JSON after a kill: {e}; {text[:200]!r}") from e
        check_summary_schema(doc)
        chat, comp = totals or (0, 0)
        totals = (chat + doc["total_chat_turns"], comp + doc["total_completions_count"])
    assert not list((data / "metrics").glob("*.corrupt")), what
    cut = False
    for path in sorted((data / "events").glob("copilot-events_*.jsonl")):
        raw = path.read_bytes()
        cut = cut or (bool(raw) and not raw.endswith(b"\n"))
    return totals, cut


def expected_from_log(lines: list[str], day: str) -> tuple[dict[str, Any], int]:
    """The day's summary built independently from the log's counted lines; and the unreadable line count."""
    usage: dict[str, dict[str, Any]] = {}
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not rec.get("counted") or not str(rec["timestamp"]).startswith(day):
            continue
        entry = usage.setdefault(rec["user"], {"chat_turns": 0, "completions_count": 0, "chat": {}, "completions": {}})
        key = rec["summary_key"]
        if rec["kind"] in CHAT_KINDS:
            entry["chat_turns"] += 1
            entry["chat"][key] = entry["chat"].get(key, 0) + 1
        elif rec["kind"] == "completion":
            entry["completions_count"] += 1
            langs = entry["completions"].setdefault(key, {})
            langs[rec["language"]] = langs.get(rec["language"], 0) + 1
    doc = {
        "day": day,
        "total_chat_turns": sum(e["chat_turns"] for e in usage.values()),
        "total_completions_count": sum(e["completions_count"] for e in usage.values()),
        "usage": usage,
    }
    return doc, bad


def rebuild(data: Path, day: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REBUILD), "--data-dir", str(data), day], capture_output=True, text=True, timeout=60, check=False
    )


def start(backend: FakeCopilotBackend, tmp: Path, data: Path, flush: str) -> Mitmdump:
    return Mitmdump(
        backend,
        tmp,
        proxyauth="any",
        options={"copilot_data_dir": data, "copilot_metrics_port": free_port(), "copilot_flush_interval": flush},
    ).start()


def test_kill9_at_random_points_summary_stays_valid_and_rebuild_matches_log(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    what = f"DURABILITY_SEED={SEED}"
    print(f"\ndurability: {what} DURABILITY_KILLS={KILLS}")
    data = tmp_path / "data"
    reports: list[KillReport] = []
    with FakeCopilotBackend() as backend:
        for i in range(KILLS):
            point = rng.choice(("after_responses", "mid_stream", "burst"))
            flush = rng.choice(("0.05", "0.1", "0.3"))
            proxy = start(backend, tmp_path / f"run{i}", data, flush)
            traffic = Traffic(proxy, rng)
            try:
                durable_call(proxy, data, USERS[i % 2])
                traffic.completed = 1
                if point == "after_responses":
                    # Sequential calls, killed right after the k-th answer: the writer still has work queued.
                    k = rng.randint(2, 26)
                    with proxy_client(proxy.port, USERS[i % 2], "pw", proxy.ca_cert_path) as client:
                        while traffic.completed < k:
                            for ex in next_calls(rng):
                                assert send(client, ex).body == ex.response_body
                                traffic.completed += 1
                    kill9(proxy)
                elif point == "mid_stream":
                    # Some calls, then a stream the backend holds after its first event: killed mid-stream.
                    with proxy_client(proxy.port, USERS[i % 2], "pw", proxy.ca_cert_path) as client:
                        for _ in range(rng.randint(0, 10)):
                            for ex in next_calls(rng):
                                assert send(client, ex).body == ex.response_body
                                traffic.completed += 1
                        held = variant(S.VSCODE_COMPLETION)
                        gate = Gate(after=1)
                        backend.script_exchange(held, gate=gate)
                        with open_stream(client, held) as response:
                            raw = response.iter_raw()
                            assert next(raw)
                            kill9(proxy)
                            with pytest.raises(httpx.HTTPError):
                                b"".join(raw)
                        gate.release()
                else:
                    # Four concurrent clients; killed once the total reaches k (bigger write batches).
                    k = rng.randint(6, 61)
                    threads = [
                        threading.Thread(target=traffic.client_loop, args=(USERS[t % 2], rng.randrange(2**32)))
                        for t in range(4)
                    ]
                    for t in threads:
                        t.start()
                    try:
                        wait_for(lambda t=traffic, n=k: t.completed >= n, 30.0, f"{k} answers ({what})")
                        kill9(proxy)
                    finally:
                        traffic.stop.set()
                        for t in threads:
                            t.join(30)
                    assert not any(t.is_alive() for t in threads), what
                    assert traffic.mismatches == [], what
            finally:
                if proxy.running():
                    proxy.stop()
            totals, cut = check_disk_after_kill(data, f"{what}, kill {i} ({point})")
            reports.append(KillReport(i, point, flush, traffic.completed, totals, cut))

    days = sorted(p.name[len("copilot-events_") : -len(".jsonl")] for p in (data / "events").glob("*.jsonl"))
    assert days, what
    natural_cuts = sum(r.cut_last_line for r in reports)
    simulated = False
    if not reports[-1].cut_last_line:
        # A kill between two raw writes of one batch leaves the last line cut; when no kill happened to do
        # it, cut the last line the same way (drop its tail) so the rebuild's handling is exercised anyway.
        log = data / "events" / f"copilot-events_{days[-1]}.jsonl"
        raw = log.read_bytes()
        last = raw.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        log.write_bytes(raw[: len(raw) - 1 - len(last) // 2])
        simulated = True
    summary_before = {d: json.loads((data / "metrics" / f"copilot-usage_{d}.json").read_text()) for d in days}

    for day in days:
        lines = (data / "events" / f"copilot-events_{day}.jsonl").read_text(encoding="utf-8").splitlines()
        expected, bad = expected_from_log(lines, day)
        result = rebuild(data, day)
        assert result.returncode == 0, (what, result.stderr)
        rebuilt = json.loads((data / "metrics" / f"copilot-usage_{day}.json").read_text(encoding="utf-8"))
        check_summary_schema(rebuilt)
        assert rebuilt == expected, what
        if bad:
            assert f"{day}: skipped {bad} unreadable line(s) (cut by a crash)" in result.stderr, (what, result.stderr)
        else:
            assert "skipped" not in result.stderr, (what, result.stderr)
        if day == days[-1]:
            assert bad >= 1, what  # the cut last line
        logged = expected["total_chat_turns"] + expected["total_completions_count"]
        before = summary_before[day]
        print(
            f"  {day}: log has {len(lines)} lines, {logged} counted, {bad} unreadable; summary on disk after the "
            f"last kill held {before['total_chat_turns'] + before['total_completions_count']}; rebuilt {logged}"
        )
    for r in reports:
        print(
            f"  kill {r.iteration}: {r.point:15} flush={r.flush_interval:4} answers before kill="
            f"{r.completed_before_kill:3} summary totals (chat, completions)={r.summary_totals} "
            f"cut last line={r.cut_last_line}"
        )
    tmp_left = list((data / "metrics").glob(".*.tmp"))
    print(
        f"  kills survived: {len(reports)}; last lines cut by a kill: {natural_cuts}; cut simulated: {simulated}; "
        f"stale summary tmp files left by kills: {len(tmp_left)}"
    )
    answered = sum(r.completed_before_kill for r in reports)
    assert answered > 0, what
    # Every call of the mix is a model call, so every answer should have its line (counted or skipped);
    # those still in the writer's queue when the process was killed never reach the log.
    print(
        f"  answers the clients got: {answered}; log lines: {log_lines(data)} (+1 cut); lost with the kills: "
        f"{answered - log_lines(data) - 1}"
    )


def test_first_line_after_a_cut_line_is_not_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = variant(S.VSCODE_COMPLETION), variant(S.NEOVIM_COMPLETION)
    with FakeCopilotBackend() as backend:
        for n, ex in enumerate((first, second)):
            proxy = start(backend, tmp_path / f"run{n}", data, "0.1")
            try:
                with proxy_client(proxy.port, "alice", "pw", proxy.ca_cert_path) as client:
                    assert send(client, ex).body == ex.response_body
            finally:
                assert proxy.stop() == 0
            if n == 0:
                # What a kill between two raw writes leaves: the last line without its tail.
                [log] = (data / "events").glob("*.jsonl")
                raw = log.read_bytes()
                log.write_bytes(raw[: len(raw) // 2])
    [log] = (data / "events").glob("*.jsonl")
    day = log.name[len("copilot-events_") : -len(".jsonl")]
    lines = log.read_text(encoding="utf-8").splitlines()
    readable = [json.loads(line) for line in lines if _parses(line)]
    assert [r["request_id"] for r in readable] == [second.request_id], lines
    result = rebuild(data, day)
    assert "skipped 1 unreadable line(s)" in result.stderr
    rebuilt = json.loads((data / "metrics" / f"copilot-usage_{day}.json").read_text())
    assert rebuilt["total_completions_count"] == 1


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_rebuild_counts_equal_counted_lines_counter_sanity() -> None:
    """The independent expectation used above agrees with a plain count on a hand-made log."""
    lines = [
        json.dumps({"timestamp": "2026-01-02T00:00:00Z", "counted": True, "user": "u", "kind": "completion",
                    "summary_key": "vscode-1", "language": "python"}),
        json.dumps({"timestamp": "2026-01-02T00:00:01Z", "counted": True, "user": "u", "kind": "chat_agent",
                    "summary_key": "vscode-1", "language": "unknown"}),
        json.dumps({"timestamp": "2026-01-02T00:00:02Z", "counted": False, "user": "u", "kind": "completion",
                    "summary_key": "vscode-1", "language": "python"}),
        '{"timestamp": "2026-01-02T00:00:03Z", "counted": tr',
    ]  # fmt: skip
    doc, bad = expected_from_log(lines, "2026-01-02")
    assert bad == 1
    assert Counter({"chat": doc["total_chat_turns"], "completion": doc["total_completions_count"]}) == Counter(
        {"chat": 1, "completion": 1}
    )
    assert doc["usage"]["u"]["completions"] == {"vscode-1": {"python": 1}}
