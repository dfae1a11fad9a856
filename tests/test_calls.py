"""The call tracker without mitmproxy: every sample exchange as plain values, exact times from a fake clock."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import pytest

from exporter.calls import CallTracker, RequestMeta, ResponseHead, ResponseMeta, TrackerOptions, WsFrame, error_class
from exporter.classify import HostRole, HostTable
from exporter.dispatch import ClientSeen
from exporter.events import UsageEvent
from exporter.labels import LabelBounds
from exporter.writer import ErrorReporter
from tests import samples
from tests.samples import Exchange


@dataclass
class FakeClock:
    now: float = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _tracker(clock: FakeClock, **options: bool) -> tuple[CallTracker, list[str]]:
    failures: list[str] = []
    return CallTracker(
        HostTable(), LabelBounds(), ErrorReporter(failures.append), clock, TrackerOptions(**options)
    ), failures


def _meta(ex: Exchange, role: HostRole, user: str = "alice", connection: str = "conn-1") -> RequestMeta:
    headers: dict[str, str] = {}
    for name, value in ex.request_headers:
        headers.setdefault(name.lower(), value)
    return RequestMeta(ex.host, role, ex.method, ex.path, headers, user, connection)


def run(
    tracker: CallTracker, clock: FakeClock, ex: Exchange, flow_id: str, first_token_after: float = 0.25
) -> UsageEvent:
    """One exchange through start → body → stream (or buffered body) → finish, 0.25 s to the first chunk
    and 0.75 s more to the end."""
    role = tracker.hosts.role(ex.host)
    assert role is not None, ex.name
    tracker.start(flow_id, _meta(ex, role))
    if tracker.wants_body(flow_id):
        tracker.request_body(flow_id, ex.request_body, ex.header("content-encoding"))
    head = ResponseHead(ex.status, ex.response_header("content-type") or "", ex.response_header("content-encoding"))
    feed = tracker.stream(flow_id, head)
    clock.advance(first_token_after)
    body: bytes | None = None
    if feed is not None:
        for chunk in ex.response_chunks():
            feed(chunk)
            clock.advance(0.75 / max(1, len(ex.response_chunks())))
        feed(b"")
    else:
        body = ex.response_body
        clock.advance(0.75)
    done = tracker.finish(flow_id, ResponseMeta(ex.status, ex.response_header("content-encoding"), body))
    assert done is not None, ex.name
    return done.event


def test_every_sample_exchange_through_the_tracker() -> None:
    """The samples in order (a chat turn's later calls depend on its first), each checked against its table."""
    clock = FakeClock()
    tracker, failures = _tracker(clock)
    for i, ex in enumerate(samples.ALL):
        started = clock.now
        event = run(tracker, clock, ex, f"f{i}")
        want = ex.expected
        got = {
            "kind": event.kind,
            "counted": event.counted,
            "skip_reason": event.skip_reason,
            "language": event.language if event.language != "unknown" else None,
            "model": event.model,
            "request_id": event.request_id,
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "finish_reason": event.finish_reason,
            "streamed": event.streamed,
            "interaction_id": event.interaction_id,
        }
        assert got == {k: want[k] for k in got}, ex.name
        assert event.duration_s == pytest.approx(1.0), ex.name  # one clock: start to end, exactly
        if event.ttft_s is not None:
            assert 0.25 <= event.ttft_s < 1.0, ex.name
        assert event.timestamp.timestamp() == pytest.approx(started), ex.name
    assert failures == []
    assert len(tracker) == 0  # nothing left in flight


def test_time_to_first_token_is_exact_with_the_fake_clock() -> None:
    clock = FakeClock()
    tracker, _ = _tracker(clock)
    event = run(tracker, clock, samples.BY_NAME["vscode_completion"], "f1", first_token_after=0.4)
    assert event.ttft_s == pytest.approx(0.4)
    assert event.duration_s == pytest.approx(1.15)


def test_a_new_client_is_announced_once() -> None:
    clock = FakeClock()
    tracker, _ = _tracker(clock)
    ex = samples.BY_NAME["jetbrains_completion"]
    role = tracker.hosts.role(ex.host)
    assert role is not None
    for flow_id, user in (("a", "alice"), ("b", "alice"), ("c", "bob")):
        tracker.start(flow_id, _meta(ex, role, user=user))
    seen = [tracker.finish(f, ResponseMeta(200, None, ex.response_body)) for f in "abc"]
    assert [done.client_seen if done else None for done in seen] == [
        ClientSeen("alice", "jetbrains-iu", "243.22562.218", "copilot-intellij", "1.5.60-243"),
        None,  # the same client again
        ClientSeen("bob", "jetbrains-iu", "243.22562.218", "copilot-intellij", "1.5.60-243"),  # another user's
    ]


def test_an_untracked_flow_gives_nothing() -> None:
    tracker, _ = _tracker(FakeClock())
    assert tracker.stream("nope", ResponseHead(200, "text/event-stream", None)) is None
    assert tracker.finish("nope", ResponseMeta(200)) is None
    assert tracker.ws_frame("nope", WsFrame(True, True, b"{}")) == []


def test_a_request_body_bomb_is_refused_without_inflating_it() -> None:
    import brotli

    clock = FakeClock()
    tracker, _ = _tracker(clock)
    ex = samples.BY_NAME["vscode_completion"]
    role = tracker.hosts.role(ex.host)
    assert role is not None
    tracker.start("f", _meta(ex, role))
    bomb = brotli.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")
    assert len(bomb) < 100_000
    tracker.request_body("f", bomb, "br")
    done = tracker.finish("f", ResponseMeta(200, None, ex.response_body))
    assert done is not None and done.event.error == "body_too_large"


def test_a_client_abort_is_cancelled_and_never_quotes_the_protocol_error() -> None:
    clock = FakeClock()
    tracker, _ = _tracker(clock)
    ex = samples.BY_NAME["vscode_completion"]
    role = tracker.hosts.role(ex.host)
    assert role is not None
    tracker.start("f", _meta(ex, role))
    message = "HTTP/2 protocol error: Invalid header value: b' session=s3cr3t-cookie '"
    done = tracker.finish("f", ResponseMeta(None, error=error_class(message)))
    assert done is not None
    assert done.event.error == "protocol_error" and "s3cr3t" not in repr(done.event)
    assert done.event.skip_reason == "no_response" and done.event.finish_reason == "cancelled"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Client disconnected.", "client_disconnected"),
        ("Connection killed.", "killed"),
        ("Server connection to proxy.business.githubcopilot.com:443 timed out", "timeout"),
        ("TLS handshake failed: certificate verify failed", "tls_error"),
        ("Connection reset by peer", "connection_reset"),
        ("Invalid HTTP/2 header value b'cookie: a=b '", "protocol_error"),
        ("something else entirely: 'Bearer gho_x'", "error"),
    ],
)
def test_flow_errors_map_to_a_fixed_vocabulary(message: str, expected: str) -> None:
    assert error_class(message) == expected


def test_recording_input_only_when_recording_is_on() -> None:
    ex = samples.BY_NAME["vscode_completion"]
    for record in (False, True):
        clock = FakeClock()
        tracker, _ = _tracker(clock, record=record)
        role = tracker.hosts.role(ex.host)
        assert role is not None
        tracker.start("f", _meta(ex, role))
        tracker.request_body("f", ex.request_body, None)
        done = tracker.finish("f", ResponseMeta(200, None, ex.response_body))
        assert done is not None
        assert (done.recording is not None) is record


def test_the_copilot_cli_samples_through_the_tracker() -> None:
    """The CLI's four transports: one turn per prompt (the 429'd one included), tool rounds as agent steps."""
    clock = FakeClock()
    tracker, failures = _tracker(clock)
    for i, ex in enumerate(samples.CLI):
        event = run(tracker, clock, ex, f"cli{i}")
        want = ex.expected
        got = {k: getattr(event, k) for k in ("kind", "editor", "counted", "skip_reason", "interaction_id", "model")}
        assert got == {k: want[k] for k in got}, ex.name
    assert failures == [] and len(tracker) == 0


def _server_frames(body: bytes) -> list[bytes]:
    from exporter.sse import SSEDecoder

    decoder = SSEDecoder()
    return [ev.data.encode() for ev in [*decoder.feed(body), *decoder.close()] if ev.data]


def test_one_websocket_carrying_two_prompts_takes_each_calls_ids_from_its_frame() -> None:
    clock = FakeClock()
    tracker, failures = _tracker(clock)
    first = samples.CLI_WEBSOCKET[0]
    role = tracker.hosts.role(first.host)
    assert role is not None
    tracker.start("ws", _meta(first, role))
    assert tracker.finish("ws", ResponseMeta(101, websocket=True)) is None  # the upgrade is not a call
    events: list[UsageEvent] = []
    for ex in samples.CLI_WEBSOCKET:
        assert tracker.ws_frame("ws", WsFrame(True, True, ex.request_body)) == []
        clock.advance(0.5)
        for frame in _server_frames(ex.response_body):
            events += [done.event for done in tracker.ws_frame("ws", WsFrame(False, True, frame))]
    assert [e.interaction_id for e in events] == [ex.expected["interaction_id"] for ex in samples.CLI_WEBSOCKET]
    assert [(e.counted, e.skip_reason) for e in events] == [
        (ex.expected["counted"], ex.expected["skip_reason"]) for ex in samples.CLI_WEBSOCKET
    ]
    assert {e.kind for e in events} == {"chat_ws"} and {e.editor for e in events} == {"cli"}
    assert len({e.request_id for e in events}) == 3  # one request id per call on the socket
    assert all(e.ttft_s is not None and e.ttft_s == pytest.approx(0.5) for e in events)
    assert tracker.ws_close("ws") == [] and failures == []


def test_a_streamed_calls_feed_lets_go_of_the_call_when_the_call_ends() -> None:
    """mitmproxy's flows are reference cycles: a flow, and the stream callback it keeps, live until the next
    garbage collection. The call's state (parser, decoders, headers) must not live on with them."""
    clock = FakeClock()
    tracker, failures = _tracker(clock)
    ex = samples.VSCODE_COMPLETION
    role = tracker.hosts.role(ex.host)
    assert role is not None
    tracker.start("f1", _meta(ex, role))
    tracker.request_body("f1", ex.request_body, ex.header("content-encoding"))
    feed = tracker.stream("f1", ResponseHead(200, "text/event-stream", None))
    assert feed is not None
    for chunk in ex.response_chunks():
        feed(chunk)
    feed(b"")
    parser = tracker._calls["f1"].parser
    assert parser is not None
    parser_ref = weakref.ref(parser)
    del parser
    gc.disable()
    try:
        done = tracker.finish("f1", ResponseMeta(status=200))
        assert done is not None and done.event.counted and done.event.output_tokens
        del done
        assert parser_ref() is None, "freed by reference counting, with the collector off"
        feed(b'data: {"choices": [{"text": "late"}]}\n\n')  # a chunk after the end is ignored
    finally:
        gc.enable()
    assert failures == []
