"""Hardening round 2, item 10, under real mitmdump: two processes on one data dir lose nothing.

Before the fix, two proxies on one data dir each rewrote `metrics/copilot-usage_<day>.json` from their own
counts, so the summary kept only the last writer's (15 of 30 calls). Now each process with its own
`copilot_instance_id` writes its own event log and summaries, and `copilot-proxy-insight-rebuild` merges
them. Here two real mitmdump processes run at the same time on one data dir, each answering 15 completions
sent concurrently through both (one user on both, one user on each): each replica's summary holds exactly its
own 15, /metrics of each says 15, no plain-named file is written, and the merged rebuild is the sum, 30.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from exporter.rebuild import main as rebuild_main
from exporter.sinks.daily import summary_path
from exporter.sinks.jsonlog import log_path
from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, free_port, proxy_client, send
from tests.e2e.test_e2e import metric, parse_metrics, scrape, variant, write_htpasswd

pytestmark = pytest.mark.e2e

DEADLINE = 30.0
PASSWORDS = {u: f"{u}-Pw-7r4Kq" for u in ("alice", "bob", "carol")}
# The figure: 15 calls through each of two processes. alice goes through both.
PLAN = {
    "r1": ["alice"] * 8 + ["bob"] * 7,
    "r2": ["alice"] * 7 + ["carol"] * 8,
}


def _completions(summary: dict[str, Any]) -> dict[str, int]:
    return {user: entry["completions_count"] for user, entry in summary["usage"].items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc


def _log_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_two_mitmdump_processes_on_one_data_dir_each_keep_their_counts_and_the_rebuild_is_the_sum(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    expected = {name: dict(Counter(users)) for name, users in PLAN.items()}
    with FakeCopilotBackend() as backend:
        proxies: dict[str, Mitmdump] = {}
        try:
            for name in PLAN:
                proxies[name] = Mitmdump(
                    backend,
                    tmp_path / name,
                    proxyauth=f"@{htpasswd}",
                    options={
                        "copilot_data_dir": data_dir,  # the one data dir of both processes
                        "copilot_instance_id": name,
                        "copilot_metrics_port": free_port(),
                        "copilot_flush_interval": "0.1",  # both rewrite their summaries while the other runs
                        "connection_strategy": "lazy",
                    },
                ).start()

            def run(name: str) -> list[int]:
                proxy = proxies[name]
                statuses = []
                for user in PLAN[name]:
                    ex = variant(samples.VSCODE_COMPLETION)
                    backend.script_exchange(ex)
                    with proxy_client(proxy.port, user, PASSWORDS[user], proxy.ca_cert_path, http2=True) as client:
                        statuses.append(send(client, ex).status)
                return statuses

            # Both processes answer at the same time: their writes to the shared data dir interleave.
            with ThreadPoolExecutor(max_workers=len(PLAN)) as pool:
                results = dict(zip(PLAN, pool.map(run, PLAN), strict=True))
            assert results == {name: [200] * len(users) for name, users in PLAN.items()}

            day = time.strftime("%Y-%m-%d", time.gmtime())
            for name, proxy in proxies.items():
                want = expected[name]
                got = proxy.wait_for(
                    lambda name=name, want=want: (  # type: ignore[misc]
                        (doc := _read_json(summary_path(data_dir, day, name))) is not None
                        and _completions(doc) == want
                        and doc
                    ),
                    DEADLINE,
                    f"{name}'s own summary with {want}",
                )
                assert got["total_completions_count"] == 15
                requests = metric(parse_metrics(scrape(proxy.metrics_url)), "copilot_requests_total", ("user",))
                assert {u: n for (u,), n in requests.items()} == want
        finally:
            codes = {name: proxy.stop() for name, proxy in proxies.items()}
    assert codes == {name: 0 for name in PLAN}

    # After a graceful stop of both, each replica's files still hold its own counts: nobody overwrote them.
    for name, want in expected.items():
        own = _read_json(summary_path(data_dir, day, name))
        assert own is not None and _completions(own) == want, name
        lines = _log_lines(log_path(data_dir, day, name))
        assert len(lines) == 15 and all(line["counted"] for line in lines), name
        assert Counter(line["user"] for line in lines) == Counter(want), name
        extended = _read_json(data_dir / "metrics" / f"copilot-insight_{day}.{name}.json")
        assert extended is not None and extended["totals"]["interactions"] == 15, name
    # Neither process wrote the plain (single-proxy) names.
    assert not log_path(data_dir, day).exists() and not summary_path(data_dir, day).exists()

    # The documented rebuild merges both replicas' logs: the sum, 30 of 30.
    assert rebuild_main(["--data-dir", str(data_dir), day]) == 0
    merged = _read_json(summary_path(data_dir, day))
    assert merged is not None
    assert (
        _completions(merged) == dict(Counter(PLAN["r1"]) + Counter(PLAN["r2"])) == {"alice": 15, "bob": 7, "carol": 8}
    )
    assert merged["total_completions_count"] == 30
    extended = _read_json(data_dir / "metrics" / f"copilot-insight_{day}.json")
    assert extended is not None and extended["totals"]["interactions"] == 30


def _files(data_dir: Path) -> list[Path]:
    """The data dir's files, without the temp files of the summaries' atomic writes (there for an instant)."""
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


@pytest.mark.parametrize("instance", ["", "r1"])
def test_a_second_mitmdump_on_a_data_dir_in_use_stops_with_one_line_and_the_first_loses_nothing(
    tmp_path: Path, instance: str
) -> None:
    """Without instance ids (or with the same one twice) the second process used to share the first's files
    and overwrite its summary; now it stops at start with one line naming the data dir, and writes nothing."""
    data_dir = tmp_path / "data"
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    options: dict[str, Any] = {"copilot_data_dir": data_dir, "copilot_flush_interval": "0.1"}
    if instance:
        options["copilot_instance_id"] = instance
    with FakeCopilotBackend() as backend:
        first_options = {**options, "copilot_metrics_port": free_port()}
        first = Mitmdump(backend, tmp_path / "first", proxyauth=f"@{htpasswd}", options=first_options).start()
        try:
            ex = variant(samples.VSCODE_COMPLETION)
            backend.script_exchange(ex)
            with proxy_client(first.port, "alice", PASSWORDS["alice"], first.ca_cert_path, http2=True) as client:
                assert send(client, ex).status == 200
            day = time.strftime("%Y-%m-%d", time.gmtime())
            first.wait_for(
                lambda: (
                    (doc := _read_json(summary_path(data_dir, day, instance))) is not None
                    and _completions(doc) == {"alice": 1}
                ),
                DEADLINE,
                "the first process's summary",
            )
            extended_path = data_dir / "metrics" / f"copilot-insight_{day}{'.' + instance if instance else ''}.json"
            first.wait_for(extended_path.is_file, DEADLINE, "the first process's extended summary")
            events_path = data_dir / "events" / f"copilot-events_{day}{'.' + instance if instance else ''}.jsonl"
            first.wait_for(events_path.is_file, DEADLINE, "the first process's event log")
            before = _files(data_dir)

            second = Mitmdump(
                backend, tmp_path / "second", proxyauth=f"@{htpasswd}", options={**options, "copilot_metrics_port": 0}
            )
            second.confdir.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                second.command(), capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL
            )
            output = done.stdout + done.stderr
            assert done.returncode != 0, output
            lines = [line for line in output.splitlines() if "is in use by process" in line]
            assert len(lines) == 1, output
            assert str(data_dir) in lines[0] and "copilot_instance_id" in lines[0], output
            assert f"process {first.pid}" in lines[0], output
            assert "Traceback" not in output, output
            # The refused process wrote nothing: the same files (the first's, which it keeps rewriting), the
            # same counts.
            assert _files(data_dir) == before
            doc = _read_json(summary_path(data_dir, day, instance))
            assert doc is not None and _completions(doc) == {"alice": 1}

            # The first goes on counting into its own files.
            ex = variant(samples.VSCODE_COMPLETION)
            backend.script_exchange(ex)
            with proxy_client(first.port, "bob", PASSWORDS["bob"], first.ca_cert_path, http2=True) as client:
                assert send(client, ex).status == 200
            first.wait_for(
                lambda: (
                    (doc := _read_json(summary_path(data_dir, day, instance))) is not None
                    and _completions(doc) == {"alice": 1, "bob": 1}
                ),
                DEADLINE,
                "the first process's summary after the refused start",
            )
        finally:
            assert first.stop() == 0
