"""copilot_gc_freeze: once the proxy runs, the start-up heap goes to the collector's permanent generation, once per
process, and not at all with the option off. gc itself is replaced by recorders: pytest's heap is never frozen."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from exporter import hooks
from exporter.hooks import CopilotInsight, freeze_startup_heap
from exporter.settings import SettingsError
from tests.test_settings import _settings


def test_the_heap_is_collected_then_frozen_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setitem(hooks._heap, "frozen", False)
    assert freeze_startup_heap() is True
    assert calls == ["collect", "freeze"]  # garbage freed first, never frozen for good
    assert freeze_startup_heap() is False  # a script reload or a second addon does not freeze again
    assert calls == ["collect", "freeze"]


@pytest.mark.parametrize(("value", "froze"), [(True, 1), (False, 0)])
def test_running_freezes_only_with_the_option_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: bool, froze: int
) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(hooks, "freeze_startup_heap", lambda: frozen.append(True) or True)
    addon = CopilotInsight()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0, copilot_gc_freeze=value)
        assert frozen == []  # configuring alone freezes nothing: only a running proxy
        try:
            addon.running()
        finally:
            addon.done()
    assert len(frozen) == froze


def test_the_option_is_a_bool_on_by_default() -> None:
    assert _settings().gc_freeze is True
    assert _settings(copilot_gc_freeze=False).gc_freeze is False
    with pytest.raises(SettingsError, match="copilot_gc_freeze='yes': expected true or false"):
        _settings(copilot_gc_freeze="yes")
