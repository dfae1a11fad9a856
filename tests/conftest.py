"""Shared test helpers: drive the addon's hooks with sample exchanges, the way mitmproxy would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, http
from mitmproxy.test import taddons, tflow

from exporter import hooks
from exporter.dispatch import Emitted, Health
from exporter.events import UsageEvent
from exporter.hooks import CopilotInsight
from tests.samples import Exchange


@pytest.fixture(autouse=True)
def _heap_left_unfrozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """An addon's running() freezes the heap once per process (copilot_gc_freeze); not pytest's heap: tests
    that count on the collector reclaiming cycles would see it ignore every object alive before the freeze."""
    monkeypatch.setitem(hooks._heap, "frozen", True)


class CaptureSink:
    """A sink that keeps every event and health signal it is handed (the in-memory exporter of this project)."""

    name = "capture"

    def __init__(self) -> None:
        self.items: list[Emitted] = []
        self.signals: list[Health] = []

    def handle(self, item: Emitted) -> None:
        self.items.append(item)

    def health(self, signal: Health) -> None:
        self.signals.append(signal)

    def close(self) -> None:
        return None


class Harness:
    """An addon inside a taddons context, capturing every event it emits."""

    def __init__(self, addon: CopilotInsight, tctx: Any, data_dir: Path, capture: CaptureSink | None = None) -> None:
        if capture is None:
            capture = CaptureSink()
            addon.outputs.dispatcher.replace(capture.name, capture)
        self.addon = addon
        self.tctx = tctx
        self.data_dir = data_dir
        self.capture = capture

    @property
    def events(self) -> list[UsageEvent]:
        return [item.event for item in self.capture.items]

    def sample(self, name: str | None = None, **labels: str) -> float:
        if name is None:
            return 0.0
        return self.addon.prometheus.registry.get_sample_value(name, labels or None) or 0.0

    def flush(self) -> None:
        assert self.addon.writer.flush()

    def flow(
        self,
        ex: Exchange,
        user: str | None = "alice",
        client: connection.Client | None = None,
        chunks: tuple[bytes, ...] | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        error: str | None = None,
    ) -> http.HTTPFlow:
        """Runs one exchange through requestheaders → request → responseheaders → (stream) → response."""
        f = tflow.tflow()
        if client is not None:
            f.client_conn = client
        req_headers = [(k.encode(), v.encode()) for k, v in ex.request_headers if k.lower() != "host"]
        f.request = http.Request.make(ex.method, ex.url, ex.request_body, req_headers)
        if request_id is not None:
            f.request.headers["x-request-id"] = request_id
        for k, v in (headers or {}).items():
            f.request.headers[k] = v
        if user is not None:
            f.metadata["proxyauth"] = (user, "pw")
        before = f.request.copy()
        a = self.addon
        a.requestheaders(f)
        a.request(f)
        assert f.request.get_state() == before.get_state(), "the addon changed the request"
        resp_headers = [(k.encode(), v.encode()) for k, v in ex.response_headers]
        f.response = http.Response.make(status or ex.status, b"", resp_headers)
        a.responseheaders(f)
        body_chunks = chunks if chunks is not None else ex.response_chunks()
        if callable(f.response.stream):
            passed = b"".join(f.response.stream(c) for c in body_chunks if c)
            assert passed == b"".join(body_chunks), "the tee changed the stream"
            assert f.response.stream(b"") == b""
            f.response.content = None
        else:
            f.response.content = b"".join(body_chunks)
        if error is not None:
            from mitmproxy.flow import Error

            f.error = Error(error)
            a.error(f)
        else:
            a.response(f)
        return f

    def last(self) -> UsageEvent:
        assert self.events, "no event emitted"
        return self.events[-1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variables from the machine leak into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    capture = CaptureSink()
    addon = CopilotInsight(sinks=[capture])
    with taddons.context(addon) as tctx:
        tctx.configure(addon, copilot_data_dir=str(tmp_path), copilot_metrics_port=0)
        h = Harness(addon, tctx, tmp_path, capture)
        yield h
        addon.done()
