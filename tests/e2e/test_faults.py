"""Transparency under faults, with a real mitmdump + addon in front of the fake Copilot backend.

Faults: the data dir unwritable (it lies below a regular file; the tests run as root, so chmod would not
stop the writes) or full (a 64 KiB tmpfs filled to ENOSPC), the /metrics port already taken, the upstream
resetting the connection mid-stream (TCP RST), the client going away mid-stream (HTTP/1.1 close, HTTP/2
RST_STREAM), HTTP/2 clients with many streams on one connection, and the Responses API over WebSocket.

Each test checks that Copilot traffic passes byte-identical (what the client got against what the
backend sent, and the request the backend got against what the client sent), that the failure is logged
and counted, and that the proxy keeps running: a later request still passes and is counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, Gate
from tests.e2e.harness import (
    H2Client,
    H2Stream,
    Mitmdump,
    TimedResult,
    free_port,
    open_stream,
    open_websocket,
    proxy_client,
    request_headers,
    send_timed,
)
from tests.e2e.test_e2e import metric_total, parse_metrics, read_log, read_summaries, scrape, variant

pytestmark = pytest.mark.e2e

S = samples
PASSWORD = "faults-Pw-4c9Qx"  # proxyauth=any: every user name is accepted, and names the user
_FAILED = re.compile(r"copilot-proxy-insight: (\S+) failed: ")


def start_proxy(backend: FakeCopilotBackend, tmp: Path, data_dir: Path, **options: object) -> Mitmdump:
    opts: dict[str, object] = {
        "copilot_data_dir": data_dir,
        "copilot_metrics_port": free_port(),
        "copilot_flush_interval": "0.2",
        "connection_strategy": "lazy",  # HTTP/2 between client and proxy (see harness.proxy_client)
    }
    opts.update(options)
    wait_metrics = bool(opts.pop("wait_metrics", True))
    return Mitmdump(backend, tmp, proxyauth="any", options=opts, wait_metrics=wait_metrics).start()


def exporter_failures(log: str) -> Counter[str]:
    """How often the addon logged '<component> failed:' (its ErrorReporter's line)."""
    return Counter(_FAILED.findall(log))


def metrics(proxy: Mitmdump) -> list[tuple[str, dict[str, str], float]]:
    return parse_metrics(scrape(proxy.metrics_url))


def counted(proxy: Mitmdump, **labels: str) -> float:
    return metric_total(metrics(proxy), "copilot_requests_total", **labels)


def errors(proxy: Mitmdump, component: str | None = None) -> float:
    match = {"component": component} if component else {}
    return metric_total(metrics(proxy), "copilot_exporter_errors_total", **match)


def assert_transparent(backend: FakeCopilotBackend, ex: samples.Exchange, got: TimedResult | H2Stream) -> None:
    """The client got exactly what the backend sent (the sample's answer), and the backend got the request."""
    rid = str(ex.request_id)
    sent = backend.wait_for_response_complete(rid)
    assert sent.complete and sent.error is None, ex.name
    body = bytes(got.body)
    assert got.status == sent.status == ex.status, ex.name
    assert body == bytes(sent.body) == ex.response_body, ex.name
    got_headers = got.headers.multi_items() if isinstance(got.headers, httpx.Headers) else got.headers
    for name, value in ex.response_headers:
        assert [v for k, v in got_headers if k.lower() == name.lower()] == [value], (ex.name, name)
    [req] = backend.requests_for(rid)
    assert (req.method, req.host, req.path, req.body) == (ex.method, ex.host, ex.path, ex.request_body)
    for name, value in request_headers(ex):
        assert req.header(name) == value, (ex.name, name)


def later_request_is_counted(backend: FakeCopilotBackend, proxy: Mitmdump, user: str) -> None:
    """The proxy keeps running: a new client's completion passes unchanged and is counted."""
    ex = variant(S.VSCODE_COMPLETION)
    labels = {"user": user, "kind": "completion"}
    before = counted(proxy, **labels)
    with proxy_client(proxy.port, user, PASSWORD, proxy.ca_cert_path) as client:
        got = send_timed(client, ex)
    assert_transparent(backend, ex, got)
    proxy.wait_for(lambda: counted(proxy, **labels) == before + 1, 10.0, "the later completion to be counted")


def log_record(data_dir: Path, request_id: str) -> dict[str, Any] | None:
    return next((r for r in read_log(data_dir) if r["request_id"] == request_id), None)


# ---------------------------------------------------------------------------------------------------
# The data dir unwritable or full


@dataclass
class DataDirRun:
    fault: str
    calls: list[samples.Exchange]
    results: dict[str, TimedResult]
    errors_during: dict[str, float]
    counted_during: float
    log_during: str
    counted_after_fix: float
    summaries_after_fix: list[dict[str, Any]]
    log_after: str
    returncode: int | None


@contextlib.contextmanager
def full_tmpfs(where: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at `where`, filled to ENOSPC by the file `fill` (delete it to free the space)."""
    where.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(where)], capture_output=True, text=True
    )
    if r.returncode != 0:
        why = f"cannot mount a 64 KiB tmpfs to make a full disk (needs root): {r.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)  # CI runs as root: a skip there would hide an untested fault
        pytest.skip(why)
    try:
        with open(where / "fill", "wb", buffering=0) as f:
            for _ in range(1000):  # 64 KiB in 4 KiB blocks: ENOSPC long before the bound
                try:
                    f.write(b"\0" * 4096)
                except OSError:
                    break
            else:
                raise AssertionError("the 64 KiB tmpfs never filled up")
        with pytest.raises(OSError, match="No space left"), open(where / "probe", "wb", buffering=0) as f:
            f.write(b"x")
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def data_dir_fault(fault: str, tmp: Path) -> Iterator[tuple[Path, Any]]:
    """(data dir, fix) for the fault: `fix()` removes it while the proxy runs."""
    if fault == "unwritable":
        blocker = tmp / "blocker"
        blocker.write_text("a regular file where a directory should be\n")
        yield blocker / "data", blocker.unlink
    else:
        with full_tmpfs(tmp / "full") as mnt:
            yield mnt / "data", (mnt / "fill").unlink


@pytest.fixture(scope="module", params=["unwritable", "full"])
def data_dir_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDirRun]:
    fault = str(request.param)
    tmp = tmp_path_factory.mktemp(f"datadir-{fault}")
    iid = str(uuid.uuid4())
    calls = [
        variant(S.VSCODE_COMPLETION),
        variant(S.VSCODE_AGENT_TURN, iid),
        variant(S.NEOVIM_COMPLETION),
        variant(S.JETBRAINS_COMPLETION),
    ]
    with FakeCopilotBackend() as backend, data_dir_fault(fault, tmp) as (data_dir, fix):
        for ex in calls:
            backend.script_exchange(ex)
        proxy = start_proxy(backend, tmp / "mitmdump", data_dir, copilot_record=True)
        try:
            results: dict[str, TimedResult] = {}
            with proxy_client(proxy.port, "dora", PASSWORD, proxy.ca_cert_path, http2=True) as client:
                for ex in calls:
                    before = errors(proxy, "jsonlog")
                    results[str(ex.request_id)] = send_timed(client, ex)
                    # One call per write batch: wait until the writer has tried (and failed) to log it.
                    proxy.wait_for(lambda b=before: errors(proxy, "jsonlog") > b, 10.0, "the failed log write")
            for ex in calls:
                assert_transparent(backend, ex, results[str(ex.request_id)])
            failing = ("jsonlog", "daily", "recorder")
            proxy.wait_for(
                lambda: all(errors(proxy, c) >= 1 for c in failing) and counted(proxy) == len(calls),
                15.0,
                "the write failures to be counted",
            )
            parsed = metrics(proxy)
            errors_during = {
                labels["component"]: value for name, labels, value in parsed if name == "copilot_exporter_errors_total"
            }
            counted_during = metric_total(parsed, "copilot_requests_total")
            log_during = proxy.log_text()

            fix()
            later_request_is_counted(backend, proxy, "dora")
            # The day's counts were kept in memory while the disk failed: the summary holds all five.
            proxy.wait_for(
                lambda: (
                    sum(d["total_completions_count"] + d["total_chat_turns"] for d in read_summaries(data_dir)) == 5
                ),
                15.0,
                "the daily summary to be written once the fault is gone",
            )
            counted_after_fix = counted(proxy)
            summaries = read_summaries(data_dir)
        finally:
            returncode = proxy.stop()
        yield DataDirRun(
            fault,
            calls,
            results,
            errors_during,
            counted_during,
            log_during,
            counted_after_fix,
            summaries,
            proxy.log_text(),
            returncode,
        )


def test_data_dir_fault_traffic_passes_is_counted_and_recovers(data_dir_run: DataDirRun) -> None:
    run = data_dir_run
    # (Bytes: checked against the backend in the fixture, for every call, while the disk failed.)
    assert len(run.results) == len(run.calls) == 4
    assert all(r.http_version == "HTTP/2" for r in run.results.values())
    # Every sink that writes was counted as failing; /metrics went on counting the traffic.
    for component in ("jsonlog", "daily", "recorder"):
        assert run.errors_during.get(component, 0) >= 1, (component, run.errors_during)
    # An unwritable data dir is also reported once at start (data_dir), before any call.
    at_start = {"data_dir"} if run.fault == "unwritable" else set()
    assert set(run.errors_during) <= {"jsonlog", "daily", "recorder", *at_start}, run.errors_during
    assert run.counted_during == 4
    # Logged, with the reason, and with the promise that traffic still passes.
    failures = exporter_failures(run.log_during)
    assert set(failures) == {"jsonlog", "daily", "recorder", *at_start}, run.log_during[-3000:]
    reason = "Not a directory" if run.fault == "unwritable" else "No space left on device"
    assert reason in run.log_during
    assert "traffic still passes; counted in copilot_exporter_errors_total" in run.log_during
    # The proxy kept running; once the fault was gone the summary was written with every count.
    assert run.counted_after_fix == 5
    assert sum(d["total_completions_count"] for d in run.summaries_after_fix) == 4
    assert sum(d["total_chat_turns"] for d in run.summaries_after_fix) == 1
    assert "daily works again" in run.log_after
    assert run.returncode == 0, run.log_after[-3000:]
    assert "Traceback" not in run.log_after


def test_data_dir_fault_is_logged_once_per_component(data_dir_run: DataDirRun) -> None:
    failures = exporter_failures(data_dir_run.log_during)
    at_start = {"data_dir": 1} if data_dir_run.fault == "unwritable" else {}
    assert failures == {"jsonlog": 1, "daily": 1, "recorder": 1, **at_start}, data_dir_run.log_during[-3000:]
    assert "works again" not in data_dir_run.log_during


# ---------------------------------------------------------------------------------------------------
# The /metrics port already taken


def test_metrics_port_taken_is_logged_once_and_traffic_passes(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(8)
        port = blocker.getsockname()[1]
        data = tmp_path / "data"
        ex1, ex2 = variant(S.VSCODE_COMPLETION), variant(S.NEOVIM_COMPLETION)
        with FakeCopilotBackend() as backend:
            backend.script_exchange(ex1)
            backend.script_exchange(ex2)
            proxy = start_proxy(backend, tmp_path / "mitmdump", data, copilot_metrics_port=port, wait_metrics=False)
            try:
                proxy.wait_for_log("metrics_server failed")
                for ex in (ex1, ex2):  # the second one: the proxy keeps running
                    try:
                        with proxy_client(proxy.port, "erin", PASSWORD, proxy.ca_cert_path) as client:
                            got = send_timed(client, ex)
                    except (httpx.HTTPError, OSError) as e:
                        raise AssertionError(
                            f"the proxy stopped serving ({e!r}); running={proxy.running()}; "
                            f"log:\n{proxy.log_text()[-2000:]}"
                        ) from e
                    assert_transparent(backend, ex, got)
                # /metrics is not served, so the count is read from the JSON log (the error counter is
                # checked at the addon level in tests/test_hardening.py).
                proxy.wait_for(
                    lambda: [r["counted"] for r in read_log(data)] == [True, True], 10.0, "two counted log lines"
                )
                log = proxy.log_text()
            finally:
                returncode = proxy.stop()
            # The port is still the blocker's: the addon neither took it over nor broke it.
            blocker.settimeout(5)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                conn, _ = blocker.accept()
                conn.close()
    assert exporter_failures(log) == {"metrics_server": 1}, log[-3000:]
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in log
    assert "Address already in use" in log
    assert "/metrics on http://" not in log
    assert returncode == 0, proxy.log_text()[-3000:]
    [doc] = read_summaries(data)
    assert doc["total_completions_count"] == 2


# ---------------------------------------------------------------------------------------------------
# Streams: upstream reset, client abort, HTTP/2, WebSocket (one proxy for the module)


@dataclass
class StreamProxy:
    backend: FakeCopilotBackend
    proxy: Mitmdump
    data_dir: Path


@pytest.fixture(scope="module")
def stream_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamProxy]:
    tmp = tmp_path_factory.mktemp("streams")
    with FakeCopilotBackend() as backend:
        proxy = start_proxy(backend, tmp / "mitmdump", tmp / "data")
        try:
            yield StreamProxy(backend, proxy, tmp / "data")
            # None of these faults is the exporter's own: nothing failed inside the addon.
            assert errors(proxy) == 0
            assert exporter_failures(proxy.log_text()) == {}
        finally:
            returncode = proxy.stop()
        log = proxy.log_text()
        assert returncode == 0, log[-3000:]
        assert "Traceback" not in log and "Addon error" not in log, log[-3000:]


def skipped(proxy: Mitmdump, reason: str, kind: str = "completion") -> float:
    return metric_total(metrics(proxy), "copilot_skipped_requests_total", kind=kind, reason=reason)


def logged_once(sp: StreamProxy, request_id: str, log_before: str, *error_classes: str) -> dict[str, Any]:
    """The call's JSON log line (waited for): its error is one word of the fixed vocabulary (never the bytes
    of mitmproxy's message), and the addon itself logged no failure for it since `log_before`."""
    rec: dict[str, Any] = sp.proxy.wait_for(lambda: log_record(sp.data_dir, request_id), 10.0, "the log line")
    assert rec["error"] in error_classes, rec
    new = sp.proxy.log_text()[len(log_before) :]
    assert "copilot-proxy-insight: addon failed" not in new and "parser failed" not in new, new
    return rec


def test_upstream_reset_mid_stream_http1(stream_proxy: StreamProxy) -> None:
    sp, backend, proxy = stream_proxy, stream_proxy.backend, stream_proxy.proxy
    ex = variant(S.VSCODE_COMPLETION)
    chunks = ex.response_chunks()
    gate = Gate(after=2)
    backend.script_exchange(ex, gate=gate, reset_after=2)
    cancelled_before, log_before = skipped(proxy, "cancelled"), proxy.log_text()
    received = b""
    with (
        proxy_client(proxy.port, "frank", PASSWORD, proxy.ca_cert_path) as client,
        open_stream(client, ex) as response,
    ):
        assert response.status_code == 200
        raw = response.iter_raw()
        while len(received) < len(chunks[0] + chunks[1]):
            received += next(raw)
        gate.release()
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in raw:
                received += chunk
    # Exactly the two events the backend sent before its RST, and nothing made up after them.
    sent = backend.wait_for_response_complete(str(ex.request_id))
    assert sent.error == "reset" and sent.chunks_sent == 2
    assert received == bytes(sent.body) == chunks[0] + chunks[1]
    rec = logged_once(sp, str(ex.request_id), log_before, "connection_closed")
    assert (rec["counted"], rec["skip_reason"], rec["status"]) == (False, "cancelled", 200)
    assert sp.proxy.log_text()[len(log_before) :].count("peer closed connection") == 1  # mitmproxy's own line
    proxy.wait_for(lambda: skipped(proxy, "cancelled") == cancelled_before + 1, 10.0, "the cancelled call")
    assert counted(proxy, user="frank") == 0
    later_request_is_counted(backend, proxy, "frank")


def test_client_abort_mid_stream_http1(stream_proxy: StreamProxy) -> None:
    sp, backend, proxy = stream_proxy, stream_proxy.backend, stream_proxy.proxy
    ex = variant(S.VSCODE_COMPLETION)
    chunks = ex.response_chunks()
    gate = Gate(after=1)
    backend.script_exchange(ex, gate=gate)
    cancelled_before, log_before = skipped(proxy, "cancelled"), proxy.log_text()
    with (
        proxy_client(proxy.port, "grace", PASSWORD, proxy.ca_cert_path) as client,
        open_stream(client, ex) as response,
    ):
        raw = response.iter_raw()
        received = b""
        while len(received) < len(chunks[0]):
            received += next(raw)
        assert received == chunks[0]
    # Leaving the block closed the response mid-body: httpx drops the HTTP/1.1 connection.
    rec = logged_once(sp, str(ex.request_id), log_before, "client_disconnected")
    gate.release()
    assert (rec["counted"], rec["skip_reason"], rec["finish_reason"]) == (False, "cancelled", "cancelled")
    proxy.wait_for(lambda: skipped(proxy, "cancelled") == cancelled_before + 1, 10.0, "the cancelled call")
    later_request_is_counted(backend, proxy, "grace")


# Streams that complete normally next to the faulty one on the same HTTP/2 connection.
_H2_NORMAL = ("vscode_completion", "vscode_responses", "vscode_messages", "jetbrains_completion")


def _h2_normal_calls() -> list[samples.Exchange]:
    out = []
    for name in _H2_NORMAL:
        ex = S.BY_NAME[name]
        out.append(variant(ex, str(uuid.uuid4()) if ex.expected["interaction_id"] else None))
    return out


def _h2_fault(sp: StreamProxy, user: str, fault: str) -> None:
    """On one HTTP/2 connection: a held stream that the client cancels (RST_STREAM) or the upstream resets,
    and four normal streams (completion, Responses, Messages, another editor's completion) interleaved."""
    backend, proxy = sp.backend, sp.proxy
    faulty = variant(S.VSCODE_COMPLETION)
    chunks = faulty.response_chunks()
    gate = Gate(after=1)
    backend.script_exchange(faulty, gate=gate, reset_after=1 if fault == "reset" else None)
    normal = _h2_normal_calls()
    gates = {str(ex.request_id): Gate(after=1) for ex in normal}
    for ex in normal:
        backend.script_exchange(ex, gate=gates[str(ex.request_id)])
    cancelled_before, log_before = skipped(proxy, "cancelled"), proxy.log_text()
    counted_before = counted(proxy, user=user)
    by_host: dict[str, list[samples.Exchange]] = {}
    for ex in normal:
        by_host.setdefault(ex.host, []).append(ex)
    with H2Client(proxy.port, user, PASSWORD, proxy.ca_cert_path, faulty.host) as h2:
        bad = h2.request(faulty)
        streams = [h2.request(ex) for ex in by_host.pop(faulty.host, [])]
        # Every stream has its first event while the backend holds the rest.
        h2.pump(lambda: all(len(s.body) > 0 for s in [bad, *streams]))
        assert bytes(bad.body) == chunks[0]
        if fault == "cancel":
            h2.cancel(bad)
            gate.release()
        else:
            gate.release()
            h2.pump(lambda: bad.done)
            assert bad.reset_code is not None and not bad.ended  # RST_STREAM towards the client
        for g in gates.values():
            g.release()
        h2.pump(lambda: all(s.done for s in streams))
        assert not h2.terminated
        assert bytes(bad.body) == chunks[0]  # nothing more, nothing made up
        for s in streams:
            assert_transparent(backend, s.exchange, s)
    # The calls to other hosts (the API host), on their own HTTP/2 connection per host, after the fault.
    for host, exchanges in by_host.items():
        with H2Client(proxy.port, user, PASSWORD, proxy.ca_cert_path, host) as h2:
            more = [h2.request(ex) for ex in exchanges]
            h2.pump(lambda: all(s.done for s in more))  # noqa: B023 (used before the loop moves on)
            for s in more:
                assert_transparent(backend, s.exchange, s)
    rec = logged_once(sp, str(faulty.request_id), log_before, *H2_FAULT_CLASSES[fault])
    assert (rec["counted"], rec["skip_reason"]) == (False, "cancelled")
    proxy.wait_for(lambda: skipped(proxy, "cancelled") == cancelled_before + 1, 10.0, "the cancelled call")
    proxy.wait_for(
        lambda: counted(proxy, user=user) == counted_before + len(normal), 10.0, "the normal streams to be counted"
    )
    later_request_is_counted(backend, proxy, user)


H2_FAULT_CLASSES = {"cancel": ("client_disconnected", "cancelled"), "reset": ("connection_closed", "connection_reset")}


def test_http2_client_cancels_one_stream_others_pass(stream_proxy: StreamProxy) -> None:
    _h2_fault(stream_proxy, "heidi", "cancel")


def test_http2_upstream_reset_on_one_stream_others_pass(stream_proxy: StreamProxy) -> None:
    _h2_fault(stream_proxy, "ivan", "reset")


def _create_frame(initiator: str) -> str:
    """A `response.create` frame: the Responses request body minus `stream`, plus the initiator."""
    body = json.loads(S.VSCODE_RESPONSES.request_body)
    body.pop("stream", None)
    return json.dumps({"type": "response.create", **body, "initiator": initiator})


@dataclass
class WsRun:
    request_id: str
    headers: list[tuple[str, str]]
    sent_frames: list[tuple[bool, bytes]]
    got_frames: list[tuple[bool, bytes]]
    records: list[dict[str, Any]]
    metrics: list[tuple[str, dict[str, str], float]]
    user: str


@pytest.fixture(scope="module")
def ws_run(stream_proxy: StreamProxy) -> WsRun:
    """A Responses WebSocket: a user turn, a tool-loop round (initiator agent), a binary frame, a non-call frame."""
    proxy = stream_proxy.proxy
    ex = S.VSCODE_RESPONSES
    rid = f"ws-{uuid.uuid4()}"
    iid = str(uuid.uuid4())
    headers = [(k, iid if k.lower() == "x-interaction-id" else v) for k, v in request_headers(ex, rid)]
    sent_frames: list[tuple[bool, bytes]] = []
    got_frames: list[tuple[bool, bytes]] = []
    user = "judy"

    def model_calls() -> float:
        return metric_total(metrics(proxy), "copilot_model_calls_total", user=user, kind="chat_ws")

    with open_websocket(proxy.port, user, PASSWORD, proxy.ca_cert_path, ex.host, "/responses", headers) as ws:
        for initiator in ("user", "agent"):  # the turn, then a tool-loop round on the same socket
            frame = _create_frame(initiator)
            ws.send_text(frame)
            sent_frames.append((True, frame.encode()))
            for _ in range(100):  # bounded: 6 frames expected
                msg = ws.receive()
                got_frames.append(msg)
                if b'"type":"response.completed"' in msg[1]:
                    break
        ws.send_bytes(b"\x00\x01binary\xff")  # echoed by the backend: binary frames pass too
        sent_frames.append((False, b"\x00\x01binary\xff"))
        got_frames.append(ws.receive())
        ws.send_text('{"type":"session.update"}')  # not a call
        sent_frames.append((True, b'{"type":"session.update"}'))
        proxy.wait_for(lambda: model_calls() == 2, 10.0, "two WebSocket model calls")

    def records() -> list[dict[str, Any]] | None:
        recs = [r for r in read_log(stream_proxy.data_dir) if r["kind"] == "chat_ws" and r["user"] == user]
        return recs if len(recs) == 2 else None

    recs: list[dict[str, Any]] = proxy.wait_for(records, 10.0, "two chat_ws log lines")
    return WsRun(rid, headers, sent_frames, got_frames, recs, metrics(proxy), user)


def test_websocket_responses_frames_pass_unchanged_and_are_counted(stream_proxy: StreamProxy, ws_run: WsRun) -> None:
    backend, proxy, run = stream_proxy.backend, stream_proxy.proxy, ws_run
    session = backend.wait_for_websocket(run.request_id, lambda w: w.closed)
    [upgrade] = backend.requests_for(run.request_id)
    assert (upgrade.method, upgrade.path, upgrade.source) == ("GET", "/responses", "websocket")
    for name, value in run.headers:
        if name.lower() != "content-type":  # (open_websocket sends no content-type on the GET)
            assert upgrade.header(name) == value, name
    # Unchanged both ways, in order: 2 x 6 Responses events, the echoed binary frame.
    assert session.received == run.sent_frames
    assert session.sent == run.got_frames
    assert len(run.got_frames) == 2 * 6 + 1 and session.close_code == 1000

    def ws(name: str, **labels: str) -> float:
        return metric_total(run.metrics, name, user=run.user, kind="chat_ws", **labels)

    # One user turn; both model calls, with their tokens.
    assert ws("copilot_requests_total") == 1
    assert ws("copilot_model_calls_total", initiator="user") == 1
    assert ws("copilot_model_calls_total", initiator="agent") == 1
    assert ws("copilot_tokens_total", type="input") == 2 * 812
    assert ws("copilot_tokens_total", type="output") == 2 * 9
    first, second = run.records
    assert (first["counted"], first["initiator"], first["status"]) == (True, "user", 101)
    assert (first["finish_reason"], first["output_tokens"]) == ("completed", 9)
    assert (second["counted"], second["initiator"]) == (False, "agent")
    later_request_is_counted(backend, proxy, run.user)


def test_websocket_calls_have_their_own_request_ids_and_skip_reasons(ws_run: WsRun) -> None:
    first, second = ws_run.records
    assert first["request_id"] != second["request_id"]
    assert second["skip_reason"] == "agent_step"
    assert metric_total(ws_run.metrics, "copilot_skipped_requests_total", kind="chat_ws", reason="retry_duplicate") == 0
