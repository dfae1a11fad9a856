"""The call tracker: plain request/response values in, finished UsageEvents out (no mitmproxy here).

The addon's hooks read each flow once into the frozen values below and hand them to `CallTracker`, which
owns the state of every Copilot call in flight (HTTP and Responses-over-WebSocket alike), decodes and
parses bodies and streams, runs the counting policy and returns one `Finished` per call. One injected
clock stamps start, first content and end, so durations and time to first token are exact in tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter import jsoncodec
from exporter.acceptance import AcceptanceState, TelemetryReport
from exporter.assemble import build_event
from exporter.bodies import MAX_PARSE_BYTES, NO_FACTS, RequestFacts, read_request
from exporter.classify import MODEL_CALL_KINDS, HostRole, HostTable, Kind, chat_mode, refine_proxy_chat, route
from exporter.clients import ClientDirectory
from exporter.counting import Counter
from exporter.credits import PriceBook
from exporter.dispatch import ClientSeen
from exporter.events import UsageEvent
from exporter.identity import ClientIdentity, clean
from exporter.labels import LabelBounds
from exporter.quota import QuotaReading, from_user_info
from exporter.scanner import UNDECODABLE, ScanJob, Scanner
from exporter.sinks.recorder import MAX_RECORDED_EVENTS, Recording, wants_recording
from exporter.sse import BodyDecoder, BodyTooLarge, DecodeError, SSEDecoder, SSEEvent, inflate_capped
from exporter.streams import AnswerParser, Shape, shape_for_path
from exporter.telemetry import MAX_TELEMETRY_BYTES, parse_post, redacted_for_recording, skipped_post
from exporter.tools import NO_TOOLS, RequestTools, request_tools
from exporter.values import quick_init
from exporter.writer import ErrorReporter

log = logging.getLogger("copilot_proxy_insight")

Clock = Callable[[], float]
Feed = Callable[[bytes], None]

MAX_JSON_RESPONSE = 8 * 1024 * 1024  # a buffered answer larger than this (decoded) is not parsed
_HOST_ANSWERS = frozenset({Kind.TOKEN_EXCHANGE, Kind.USER_INFO})
_READ_ANSWERS = MODEL_CALL_KINDS | _HOST_ANSWERS | {Kind.MODEL_LIST}


@quick_init
@dataclass(frozen=True, slots=True)
class RequestMeta:
    """A request's head as the tracker needs it. `headers`: lower-cased name -> first value."""

    host: str
    role: HostRole
    method: str
    path: str
    headers: Mapping[str, str]
    user: str
    connection: Hashable  # the client connection (editor joins per connection)
    url: str = ""  # for recordings
    header_items: tuple[tuple[str, str], ...] = ()  # every header, only when recording


@quick_init
@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    content_type: str
    content_encoding: str | None


@quick_init
@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """How a call ended. `body` is the raw (still encoded) buffered body; None when streamed or absent."""

    status: int | None
    content_encoding: str | None = None
    body: bytes | None = None
    error: str | None = None  # the flow's error, already mapped to a fixed vocabulary (`error_class`)
    websocket: bool = False  # the answer upgraded the connection to a WebSocket
    header_items: tuple[tuple[str, str], ...] = ()  # only when recording
    quota_headers: tuple[tuple[str, str], ...] = ()  # x-quota-snapshot-* and x-usage-ratelimit-* (exporter.quota)


@quick_init
@dataclass(frozen=True, slots=True)
class WsFrame:
    from_client: bool
    is_text: bool
    content: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class TrackerOptions:
    capture: bool = False  # prompts and answers into the event
    record: bool = False
    record_telemetry: bool = False
    record_max_bytes: int = 1_000_000


@quick_init
@dataclass(frozen=True, slots=True)
class Finished:
    event: UsageEvent
    recording: Recording | None = None
    # A client new to the inventory, announced after the event (whose successful model call may have just
    # given the user a label slot: see labels.UserSlots).
    client_seen: ClientSeen | None = None


@dataclass(slots=True)
class InFlightCall:
    """The state of one Copilot call between its request head and its end."""

    started: float
    meta: RequestMeta
    kind: Kind
    path_model: str | None
    client: ClientIdentity
    request_id: str | None
    interaction_id: str | None
    initiator: str | None
    intent: str | None
    speculative: bool
    task_id: str | None = None  # X-Agent-Task-Id: the agent loop a call belongs to
    client_seen: ClientSeen | None = None  # announced with the call's event
    facts: RequestFacts = NO_FACTS  # frozen: one shared empty value
    request_text: bytes | None = None  # the decoded body, kept only for recordings
    parser: AnswerParser | None = None
    body: BodyDecoder | None = None
    sse: SSEDecoder | None = None
    streamed: bool = False
    first_content_at: float | None = None
    parse_error: str | None = None
    # A telemetry post: its raw body (a reference, read only once the answer is in) and what it said.
    telemetry_body: bytes | None = None
    telemetry_encoding: str | None = None
    telemetry: TelemetryReport | None = None
    quota: tuple[QuotaReading, ...] = ()  # from a copilot_internal/user answer
    plan: str | None = None
    tools: RequestTools = NO_TOOLS  # the MCP servers the request's tool list offers
    feed: _CallFeed | None = None  # the stream callback's feed (streamed answers)


@dataclass(slots=True)
class _Socket:
    """A Responses-over-WebSocket connection: its upgrade request and its calls in flight, oldest first."""

    flow_id: str
    meta: RequestMeta
    client: ClientIdentity
    calls: list[InFlightCall] = field(default_factory=list)
    seq: int = 0  # only grows: each call on the socket gets its own request id
    client_seen: ClientSeen | None = None  # the upgrade's, announced with the socket's first call


_ERROR_CLASSES = (
    ("client disconnected", "client_disconnected"),
    ("cancel", "cancelled"),
    ("killed", "killed"),
    ("timeout", "timeout"),
    ("timed out", "timeout"),
    ("tls", "tls_error"),
    ("ssl", "tls_error"),
    ("certificate", "tls_error"),
    ("reset", "connection_reset"),
    ("closed", "connection_closed"),
    ("protocol", "protocol_error"),
    ("http/2", "protocol_error"),
    ("refused", "connection_failed"),
    ("connect", "connection_failed"),
    ("resolve", "connection_failed"),
)


def error_class(message: str) -> str:
    """A flow error as one word of a fixed vocabulary. Protocol errors quote the bytes they choked on (a
    Cookie, a token), so no part of the message itself ever reaches an output."""
    lowered = message.lower()
    for needle, name in _ERROR_CLASSES:
        if needle in lowered:
            return name
    return "error"


def _header(headers: Mapping[str, str], name: str, limit: int = 128) -> str | None:
    return clean(headers.get(name), limit)


class CallTracker:
    """Owns every Copilot call in flight, keyed by flow id; returns each finished call once."""

    def __init__(
        self,
        hosts: HostTable,
        bounds: LabelBounds,
        errors: ErrorReporter,
        clock: Clock = time.time,
        options: TrackerOptions | None = None,
        counter: Counter | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self.hosts = hosts
        self.bounds = bounds
        self.errors = errors
        self.clock = clock
        self.options = options or TrackerOptions()
        self.counter = counter or Counter()
        self.clients = ClientDirectory()
        self.prices = PriceBook()  # learns /models prices; its table is set from copilot_price_table
        self.teams: Callable[[str], tuple[str, ...]] = _no_teams  # the user's teams (exporter.teams)
        self.scanner = scanner  # the secret scanner (None: bodies are not scanned)
        self._calls: dict[str, InFlightCall] = {}
        self._sockets: dict[str, _Socket] = {}
        self.acceptance = AcceptanceState(clock)

    def __len__(self) -> int:
        return len(self._calls) + len(self._sockets)

    # -- requests -------------------------------------------------------------------------------

    def _client(self, meta: RequestMeta, interaction_id: str | None) -> tuple[ClientIdentity, ClientSeen | None]:
        client, new = self.clients.resolve(meta.connection, meta.user, interaction_id, meta.headers)
        if not new:
            return client, None
        seen = ClientSeen(
            meta.user,
            self.bounds.editor(client.editor),
            client.editor_version or "",
            client.plugin or "",
            client.plugin_version or "",
        )
        return client, seen

    def start(self, flow_id: str, meta: RequestMeta) -> None:
        """A Copilot request head arrived."""
        h = meta.headers
        r = route(meta.role, meta.method, meta.path)
        interaction_id = _header(h, "x-interaction-id")
        initiator = (h.get("x-initiator") or "").strip().lower() or None
        kind = r.kind
        if kind is Kind.CHAT:
            kind = chat_mode(h.get("openai-intent"), h.get("x-interaction-type"))
        client, seen = self._client(meta, interaction_id)
        self._calls[flow_id] = InFlightCall(
            started=self.clock(),
            meta=meta,
            kind=kind,
            path_model=r.path_model,
            client=client,
            request_id=_header(h, "x-request-id"),
            interaction_id=interaction_id,
            initiator=initiator if initiator in ("user", "agent") else None,
            intent=_header(h, "openai-intent", 64) or _header(h, "x-interaction-type", 64),
            speculative=(h.get("x-copilot-speculative") or "").strip().lower() == "true",
            task_id=_header(h, "x-agent-task-id"),
            client_seen=seen,
        )

    def wants_body(self, flow_id: str) -> bool:
        call = self._calls.get(flow_id)
        return call is not None and (call.kind in MODEL_CALL_KINDS or call.kind is Kind.TELEMETRY)

    def request_body(self, flow_id: str, raw: bytes | None, content_encoding: str | None) -> None:
        """The request body (raw, as sent): decoded with a cap, then parsed into RequestFacts."""
        call = self._calls.get(flow_id)
        if call is not None and call.kind is Kind.TELEMETRY:
            # Only a reference: the post goes upstream at once and is read when its answer is in.
            call.telemetry_body, call.telemetry_encoding = raw, content_encoding
            return
        if call is None or call.kind not in MODEL_CALL_KINDS:
            return
        try:
            body = inflate_capped(raw, content_encoding, MAX_PARSE_BYTES) if raw else raw
        except DecodeError as e:
            call.facts = RequestFacts(error="body_too_large" if isinstance(e, BodyTooLarge) else "malformed_body")
            if self.scanner is not None:
                self.scanner.skipped(UNDECODABLE)
            return
        keep = self.options.record and (body is None or len(body) <= self.options.record_max_bytes)
        call.facts, parsed = read_request(body, shape_for_path(call.meta.path), keep_parsed=keep)
        if body:
            call.tools = request_tools(body, parsed)
            self._scan(call, body, parsed)
        if self.options.record and call.facts.parsed is None and body:
            call.request_text = body[: self.options.record_max_bytes + 1]
        if call.kind is Kind.PROXY_CHAT_OTHER:
            call.kind = refine_proxy_chat(call.facts.model)

    def _scan(self, call: InFlightCall, body: bytes, parsed: Any = None) -> None:
        """Hands the decoded body (and what it parsed to) to the secret scanner's queue (never waits; the scan
        runs on its thread, which only reads the parsed body)."""
        if self.scanner is not None and self.scanner.enabled:
            self.scanner.submit(_scan_job(call, self.bounds.editor(call.client.editor), body, parsed))

    # -- responses ------------------------------------------------------------------------------

    def _keep_events(self) -> int:
        return MAX_RECORDED_EVENTS if self.options.record else 0

    def stream(self, flow_id: str, head: ResponseHead) -> Feed | None:
        """For an event stream: the feed the addon's tee calls with every chunk (b"" at the end). None:
        not a stream of a tracked call, leave the response as mitmproxy buffers it."""
        call = self._calls.get(flow_id)
        if call is None or "text/event-stream" not in head.content_type.lower():
            return None
        call.streamed = True
        try:
            call.parser = AnswerParser(shape_for_path(call.meta.path), self._keep_events())
            call.body = BodyDecoder(head.content_encoding)
            call.sse = SSEDecoder()
        except Exception as e:  # e.g. an unknown content-encoding: pass the stream on untouched, unparsed
            call.parse_error = str(e)[:200]
            call.parser = None
            self.errors.failed("parser", e)
            return _ignore
        feed = call.feed = _CallFeed(self, call)
        return feed

    def _feed(self, call: InFlightCall, chunk: bytes) -> None:
        if call.parse_error is not None or call.parser is None:
            return
        assert call.body is not None and call.sse is not None
        try:
            events = call.sse.feed(call.body.feed(chunk)) if chunk else call.sse.close()
            for ev in events:
                if call.parser.feed_event(ev) and call.first_content_at is None:
                    call.first_content_at = self.clock()
        except Exception as e:  # never let parsing touch the stream
            call.parse_error = f"{type(e).__name__}: {e}"[:200]
            self.errors.failed("parser", e)

    def finish(self, flow_id: str, resp: ResponseMeta) -> Finished | None:
        """The call ended (answered, failed or upgraded); its event, or None when it was not tracked."""
        call = self._calls.pop(flow_id, None)
        if call is None:
            return None
        if call.feed is not None:
            call.feed.call = None  # the flow keeps its stream callback until a collection: not the call
        if resp.websocket:
            # A WebSocket upgrade (/responses over ws): its frames are the calls, see ws_frame.
            self._sockets[flow_id] = _Socket(flow_id, call.meta, call.client, client_seen=call.client_seen)
            return None
        if not call.streamed:
            self._read_buffered(call, resp)
        return self._finished(call, resp)

    def _read_buffered(self, call: InFlightCall, resp: ResponseMeta) -> None:
        """Non-streamed bodies: JSON answers, buffered event streams, token exchanges (host learning)."""
        if call.kind not in _READ_ANSWERS:
            return
        if not resp.body:
            return
        try:
            body = inflate_capped(resp.body, resp.content_encoding, MAX_JSON_RESPONSE)
        except DecodeError as e:
            if not isinstance(e, BodyTooLarge):
                call.parse_error = f"content-encoding: {e}"[:200]
            return  # too large to parse: counted from what the headers say
        if call.kind in _HOST_ANSWERS or call.kind is Kind.MODEL_LIST:
            self._learn(call, body, resp.status)
            return
        parser = call.parser = AnswerParser(shape_for_path(call.meta.path), self._keep_events())
        if body.lstrip().startswith((b"data:", b"event:", b":")):
            sse = SSEDecoder()
            for ev in [*sse.feed(body), *sse.close()]:
                parser.feed_event(ev)
            return
        try:
            parser.feed_json(jsoncodec.loads(body))
        except (ValueError, RecursionError):
            parser.answer.malformed_events += 1

    def _learn(self, call: InFlightCall, body: bytes, status: int | None) -> None:
        """Token exchanges and user info teach hosts (user info also quotas and plan); /models, prices."""
        if status != 200:
            return
        try:
            doc = jsoncodec.loads(body)
        except (ValueError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        if call.kind is Kind.MODEL_LIST:
            learned = self.prices.learn(doc)
            if learned:
                log.debug("copilot-proxy-insight: learned prices of %d models", len(learned))
            return
        for host in self.hosts.learn(doc.get("endpoints")):
            log.info("copilot-proxy-insight: learned Copilot host %s", host)
        if call.kind is Kind.USER_INFO:
            call.quota, call.plan = from_user_info(doc)

    def _read_telemetry(self, call: InFlightCall, resp: ResponseMeta) -> None:
        """A telemetry post the backend took (2xx; a refused one is sent again): its acceptance increments."""
        raw, call.telemetry_body = call.telemetry_body, None
        if not raw or resp.status is None or not 200 <= resp.status < 300:
            return
        try:
            body = inflate_capped(raw, call.telemetry_encoding, MAX_TELEMETRY_BYTES)
        except DecodeError as e:
            post = skipped_post("too_large" if "over" in str(e) else "malformed_body")
        else:
            post = parse_post(body)
            if self.options.record and self.options.record_telemetry:
                call.request_text = None
                call.facts = RequestFacts(parsed=redacted_for_recording(body))
        editor = self.bounds.editor(call.client.editor)
        call.telemetry = self.acceptance.report(post, call.meta.user, editor, self.bounds)

    def _finished(self, call: InFlightCall, resp: ResponseMeta) -> Finished:
        if call.kind is Kind.TELEMETRY:
            try:
                self._read_telemetry(call, resp)
            except Exception as e:  # a bug here must not lose the post's own event
                self.errors.failed("telemetry", e)
        teams = self.teams(call.meta.user)
        event = build_event(
            call, resp, self.counter, self.bounds, self.clock(), self.options.capture, self.prices, teams
        )
        recording = None
        if self.options.record and wants_recording(event.kind, self.options.record_telemetry):
            recording = _recording(call, resp, self.options.record_max_bytes)
        return Finished(event, recording, call.client_seen)

    # -- WebSocket: Responses API over ws (/responses GET upgrade) --------------------------------

    def ws_frame(self, flow_id: str, frame: WsFrame) -> list[Finished]:
        sock = self._sockets.get(flow_id)
        if sock is None or not frame.is_text or len(frame.content) > MAX_JSON_RESPONSE:
            return []
        if frame.from_client:
            self._ws_call(sock, frame)
            return []
        if not sock.calls:
            return []
        call = sock.calls[0]
        assert call.parser is not None
        content = call.parser.feed_event(SSEEvent(None, frame.content.decode("utf-8", "replace")))
        if content and call.first_content_at is None:
            call.first_content_at = self.clock()
        if call.parser.answer.complete or call.parser.answer.error:
            sock.calls.pop(0)
            return [self._finished(call, ResponseMeta(status=101))]
        return []

    def _ws_call(self, sock: _Socket, frame: WsFrame) -> None:
        facts, parsed = read_request(frame.content, Shape.RESPONSES, keep_parsed=self.options.record)
        if facts.frame_type != "response.create":
            return
        h = sock.meta.headers
        sock.seq += 1
        call = InFlightCall(
            started=self.clock(),
            meta=sock.meta,
            kind=Kind.CHAT_WS,
            path_model=None,
            client=sock.client,
            request_id=f"{_header(h, 'x-request-id') or sock.flow_id}#{sock.seq}",
            # A long-lived socket carries several prompts: each call's ids come from its own frame.
            interaction_id=facts.interaction_id or _header(h, "x-interaction-id"),
            initiator=facts.initiator,
            intent=facts.interaction_type or _header(h, "openai-intent", 64) or _header(h, "x-interaction-type", 64),
            speculative=False,
            task_id=facts.task_id or _header(h, "x-agent-task-id"),
            client_seen=sock.client_seen,
            facts=facts,
            parser=AnswerParser(Shape.RESPONSES, self._keep_events()),
            streamed=True,
            tools=request_tools(frame.content, parsed),
        )
        sock.calls.append(call)
        sock.client_seen = None
        self._scan(call, frame.content, parsed)

    def ws_close(self, flow_id: str) -> list[Finished]:
        """The socket closed: every call still in flight on it ends (unanswered)."""
        sock = self._sockets.pop(flow_id, None)
        if sock is None:
            return []
        return [self._finished(call, ResponseMeta(status=101)) for call in sock.calls]

    def drop(self, flow_id: str) -> None:
        """Forget a flow without an event (e.g. a request the proxy answered itself)."""
        self._calls.pop(flow_id, None)
        self._sockets.pop(flow_id, None)


def _scan_job(call: InFlightCall, editor: str, body: bytes, parsed: Any) -> ScanJob:
    model = call.path_model or call.facts.model
    ids = (call.request_id, call.interaction_id)
    return ScanJob(call.started, call.meta.user, editor, call.kind.value, model, *ids, body, parsed)


def _recording(call: InFlightCall, resp: ResponseMeta, limit: int) -> Recording:
    """What copilot_record keeps of a call: the request (parsed, else its text up to `limit`) and the answer."""
    content: Any = call.facts.parsed
    if content is None and call.request_text is not None:
        raw = call.request_text
        text = raw[:limit].decode("utf-8", "replace")
        content = {"truncated": True, "text": text} if len(raw) > limit else text
    return Recording(
        url=call.meta.url,
        method=call.meta.method,
        request_headers=list(call.meta.header_items),
        request_content=content,
        response_headers=list(resp.header_items),
        response_content=call.parser.kept if call.parser is not None else None,
    )


def _no_teams(user: str) -> tuple[str, ...]:
    return ()


class _CallFeed:
    """The feed of one streamed call: each chunk to the tracker, while the call is in flight.

    mitmproxy's flows are reference cycles, freed only by the garbage collector, and a flow keeps its stream
    callback (and this feed) until then. When the call ends, the feed lets go of it, so the call's state
    (answer parser, decoders, request headers) is freed at once instead of riding along with the flow:
    fewer objects for each collection to walk, and fewer collections."""

    __slots__ = ("_tracker", "call")

    def __init__(self, tracker: CallTracker, call: InFlightCall) -> None:
        self._tracker = tracker
        self.call: InFlightCall | None = call

    def __call__(self, chunk: bytes) -> None:
        call = self.call
        if call is not None:
            self._tracker._feed(call, chunk)


def _ignore(chunk: bytes) -> None:
    return None
