"""benchmarks.paired and benchmarks.gc_probe: the paired comparison and the collector probe (never timings)."""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks import paired
from benchmarks.gc_probe import GcProbe


def test_the_probe_counts_each_collection_in_its_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gc.json"
    monkeypatch.setenv("COPILOT_GC_PROBE_OUT", str(out))
    probe = GcProbe()
    probe.load(None)
    try:
        for generation in (0, 1, 2, 2):
            gc.collect(generation)
        probe._write(0, None)
    finally:
        probe.done()
    doc = json.loads(out.read_text())
    assert doc["collections"][1] >= 1 and doc["collections"][2] >= 2
    assert all(s >= 0 for s in doc["seconds"])
    assert probe._callback not in gc.callbacks, "done() takes the probe off the collector"


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nothing", "NAME=PATH"), ("bare=/tmp", "NAME=PATH"), ("head=/tmp", "NAME=PATH"), ("x=/nonexistent", "addon.py")],
)
def test_a_bad_tree_is_refused_with_what_to_give(spec: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        paired._trees([spec])


def test_a_tree_is_a_checkout_with_the_addon(tmp_path: Path) -> None:
    (tmp_path / "exporter").mkdir()
    (tmp_path / "exporter" / "addon.py").write_text("addons = []\n")
    trees = paired._trees([f"old={tmp_path}"])
    assert trees == {"head": paired.REPO_ROOT, "old": tmp_path.resolve()}


class _Mitm:
    pid = 0


def _proxy(name: str, cpu: list[float], rps: list[float], instructions: Sequence[float] = ()) -> paired.Proxy:
    p = paired.Proxy(name, _Mitm(), None)  # type: ignore[arg-type]
    p.cpu_ms, p.rps, p.instructions = cpu, rps, list(instructions)
    return p


def test_the_report_pairs_each_round_with_bare() -> None:
    proxies = {
        "bare": _proxy("bare", [3.0, 2.0, 4.0], [300, 400, 250]),
        "head": _proxy("head", [3.2, 2.3, 4.1], [285, 380, 240]),
    }
    text = paired.report(proxies, 3, 2000)
    # Per round +0.2, +0.3, +0.1: the median of the paired differences, not the difference of the medians.
    assert "+0.200 (+0.150 … +0.250)" in text
    assert "head: +0.20 +0.30 +0.10" in text
    assert "0.95x" in text


def test_the_instruction_report_gives_the_difference_over_bare() -> None:
    proxies = {
        "bare": _proxy("bare", [], [], [24_000_000, 24_200_000, 24_100_000]),
        "head": _proxy("head", [], [], [25_500_000]),
    }
    text = paired.instruction_report(proxies, 600)
    assert "24,100,000" in text and "+1,400,000" in text and "1.058" in text


def test_wakeups_counts_the_voluntary_switches_of_every_thread_of_a_process() -> None:
    import os
    import time

    before = paired.wakeups(os.getpid())
    for _ in range(20):  # each nap blocks this thread: a voluntary switch (what is measured, not a wait)
        time.sleep(0.001)
    assert paired.wakeups(os.getpid()) >= before + 20
    assert paired.wakeups(os.getpid()) < before + 10_000


@pytest.mark.parametrize("seconds", ["0", "-5", "nan"])
def test_an_idle_period_that_is_not_over_zero_is_refused_before_anything_starts(
    seconds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        paired.main(["--idle", seconds])
    assert stopped.value.code == 2
    assert "--idle needs a number of seconds over 0" in capsys.readouterr().err
