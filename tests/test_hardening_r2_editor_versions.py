"""Hardening round 2, item 7: distinct Editor-Version values cannot grow memory without bound.

Before the fix the Prometheus sink remembered every raw (user, editor, editor version, plugin, plugin
version) it had announced in a plain set, to announce each client once: about 1 KiB per distinct value, for
ever, although the `copilot_client_info` series themselves were capped. Now the inventory is deduplicated in
the client directory's bounded LRU (`exporter.clients.JOIN_CACHE` entries) and the label policy's caches are
bounded by the series cap, so once the bounds are full a flood of new values costs no more memory.

The flood runs through the real addon's hooks (mitmproxy's taddons). The bounds are shrunk (JOIN_CACHE 500
instead of 10,000, `copilot_max_series=100` instead of 10,000) so that filling them takes 1,500 calls instead
of 40,000 (the label cache holds up to 4 x the series cap raw label sets before it is cleared); every
call reuses one request id, so the counted-request-id sets (bounded and measured elsewhere) do not grow.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from exporter import clients
from exporter.hooks import CopilotInsight
from tests import samples
from tests.conftest import CaptureSink, Harness

FILL = 1_500  # distinct values that fill every bound (JOIN_CACHE 500; the label cache, 4 x 100)
FLOOD = 3_000  # distinct values measured after that
MAX_GROWTH = 256 * 1024  # bytes; an unbounded set of ~1 KiB per value would hold ~3 MiB more


def _version(i: int) -> str:
    return f"vscode/1.{i}.0-{'x' * 40}"  # a long, made-up version: what a hostile client sends


def test_a_flood_of_distinct_editor_versions_costs_no_memory_once_the_bounds_are_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "JOIN_CACHE", 500)
    capture = CaptureSink()
    addon = CopilotInsight(sinks=[capture])
    with taddons.context(addon) as tctx:
        tctx.configure(
            addon,
            copilot_data_dir=str(tmp_path),
            copilot_metrics_port=0,
            copilot_log_json="off",
            copilot_max_series=100,
        )
        h = Harness(addon, tctx, tmp_path, capture)
        ex = samples.VSCODE_COMPLETION

        def flood(first: int, n: int) -> None:
            for i in range(first, first + n):
                h.flow(ex, user="alice", headers={"editor-version": _version(i)}, request_id="one-request-id")
                capture.items.clear()
                capture.signals.clear()  # the test sink keeps every health signal; the exporter does not

        # Traced from the start: a bounded structure replaces old entries by new ones, and the frees of entries
        # allocated before tracing started would not be seen.
        tracemalloc.start()
        try:
            flood(0, FILL)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            flood(FILL, FLOOD)
            gc.collect()
            grew = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        print(f"\n{FLOOD} more distinct Editor-Version values after {FILL}: {grew / 1024:+.1f} KiB traced")
        assert grew < MAX_GROWTH
        inventory = [
            s
            for metric in addon.prometheus.registry.collect()
            if metric.name == "copilot_client_info"
            for s in metric.samples
        ]
        versions = {s.labels["editor_version"] for s in inventory}
        # The series stay capped too: 200 versions kept (first come), the rest folded into `other`.
        assert len(versions) <= 201 and "other" in versions
        addon.done()
