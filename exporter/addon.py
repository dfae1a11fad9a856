"""mitmproxy addon: thin hooks that classify Copilot flows, tee their streams and hand events to the sinks.

Run with `mitmdump -s exporter/addon.py` or the `copilot-proxy-insight` console script. This is the only
module that imports mitmproxy; the logic lives in the pure modules next to it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    # Loaded as a script (`mitmdump -s exporter/addon.py`): make the package importable from a checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy import version as mitmproxy_version

from exporter import __version__
from exporter.bodies import RequestFacts, parse_request
from exporter.classify import (
    MODEL_CALL_KINDS,
    HostRole,
    HostTable,
    Kind,
    chat_mode,
    refine_proxy_chat,
    route,
)
from exporter.counting import Call, Counter
from exporter.events import UsageEvent
from exporter.identity import UNKNOWN_CLIENT, ClientIdentity, clean, identify, proxy_user, pseudonym
from exporter.labels import LabelBounds
from exporter.sinks.daily import DailySink
from exporter.sinks.jsonlog import MODES as LOG_MODES
from exporter.sinks.jsonlog import JsonLogSink
from exporter.sinks.prometheus import PrometheusSink
from exporter.sinks.recorder import RecorderSink, Recording
from exporter.sse import BodyDecoder, SSEDecoder, SSEEvent
from exporter.startup import facts_from_options, startup_lines
from exporter.streams import AnswerParser, Shape, shape_for_path
from exporter.writer import BackgroundWriter, ErrorReporter

if TYPE_CHECKING:
    from exporter.sinks.otel import OtelSink

log = logging.getLogger("copilot_proxy_insight")

OTEL_PROTOCOLS = ("", "http/protobuf", "grpc")
OTEL_OPTIONS = frozenset(
    {
        "copilot_otel",
        "copilot_otel_endpoint",
        "copilot_otel_protocol",
        "copilot_otel_headers",
        "copilot_otel_service_name",
        "copilot_otel_export_interval",
        "copilot_otel_pseudonym_key",
        "copilot_pseudonym_key",
    }
)

INTERCEPT_MODES = ("copilot", "all")
MAX_JSON_RESPONSE = 8 * 1024 * 1024
MAX_RECORDED_EVENTS = 5000
_JOIN_CACHE = 10_000


def _secret_value(value: str, option: str) -> str:
    """An option value, or the first line of the file it names with '@path'."""
    if not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.readline().strip()
    except OSError as e:
        raise exceptions.OptionsError(f"{option}: cannot read {value[1:]}: {e.strerror}") from e


def _seconds(value: str | float, option: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise exceptions.OptionsError(f"{option} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise exceptions.OptionsError(f"{option} must be a positive number of seconds")
    return seconds


def _credentials(value: str) -> tuple[str, str] | None:
    secret = _secret_value(value, "copilot_metrics_auth")
    if not secret:
        return None
    user, sep, password = secret.partition(":")
    if not sep or not user or not password:
        raise exceptions.OptionsError("copilot_metrics_auth must be user:password (or @file holding it)")
    return user, password


class _LRU(OrderedDict[str, ClientIdentity]):
    def put(self, key: str, value: ClientIdentity) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > _JOIN_CACHE:
            self.popitem(last=False)


class _Live:
    """Per-flow state while a Copilot call is in flight (kept in the addon, keyed by flow id).

    A plain slotted class: mitmproxy loads this file as a script outside sys.modules, where dataclasses
    cannot resolve their annotations.
    """

    __slots__ = (
        "body",
        "client",
        "facts",
        "first_content_at",
        "host",
        "initiator",
        "intent",
        "interaction_id",
        "kind",
        "parse_error",
        "parser",
        "path_model",
        "request_id",
        "role",
        "speculative",
        "sse",
        "started",
        "streamed",
        "user",
        "wall_start",
    )

    def __init__(
        self,
        *,
        started: float,
        host: str,
        role: HostRole,
        kind: Kind,
        path_model: str | None,
        user: str,
        client: ClientIdentity,
        request_id: str | None,
        interaction_id: str | None,
        initiator: str | None,
        intent: str | None,
        speculative: bool,
        facts: RequestFacts | None = None,
        parser: AnswerParser | None = None,
        streamed: bool = False,
        wall_start: float | None = None,
    ) -> None:
        self.started = started
        self.host = host
        self.role = role
        self.kind = kind
        self.path_model = path_model
        self.user = user
        self.client = client
        self.request_id = request_id
        self.interaction_id = interaction_id
        self.initiator = initiator
        self.intent = intent
        self.speculative = speculative
        self.facts = facts if facts is not None else RequestFacts()
        self.parser = parser
        self.body: BodyDecoder | None = None
        self.sse: SSEDecoder | None = None
        self.streamed = streamed
        self.first_content_at: float | None = None
        self.parse_error: str | None = None
        self.wall_start = wall_start  # WebSocket calls: when their response.create frame arrived


class _WsCalls:
    """The Responses-API calls in flight on one WebSocket, oldest first, and a per-socket call number."""

    __slots__ = ("calls", "seq")

    def __init__(self) -> None:
        self.calls: list[_Live] = []
        self.seq = 0


def _header(headers: Mapping[str, str], name: str, limit: int = 128) -> str | None:
    return clean(headers.get(name), limit)


def _header_map(headers: http.Headers) -> dict[str, str]:
    """Lower-cased name -> first value, built in one pass: mitmproxy's Headers.get scans every field."""
    out: dict[str, str] = {}
    for name, value in headers.fields:
        key = name.decode("ascii", "replace").lower()
        if key not in out:
            out[key] = value.decode("utf-8", "replace")
    return out


class CopilotInsight:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.hosts = HostTable()
        self.counter = Counter()
        self.flows: dict[str, _Live] = {}
        self.bounds = LabelBounds(on_overflow=self._label_overflow)
        self.prometheus = PrometheusSink(self.bounds)
        self.otel: OtelSink | None = None
        self.errors = ErrorReporter(self._exporter_error)
        self.writer = BackgroundWriter(self.errors)
        self.jsonlog: JsonLogSink | None = None
        self.daily: DailySink | None = None
        self.recorder: RecorderSink | None = None
        self._conn_users: dict[str, str] = {}
        self._conn_clients: _LRU = _LRU()
        self._interaction_clients: _LRU = _LRU()
        self._user_clients: _LRU = _LRU()
        self._ws_calls: dict[str, _WsCalls] = {}
        self._intercept_all = False
        self._capture = False
        self._log_skipped = True
        self._record_max = 1_000_000
        self._metrics_auth: tuple[str, str] | None = None
        self._pseudonym_key = ""
        self._running = False
        self.prometheus.build_info(__version__, mitmproxy_version.VERSION)

    # -- options ---------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "copilot_data_dir",
            str,
            "logs",
            "Directory for the daily summaries (metrics/), the JSON event log (events/) and "
            "recordings (usage/). Created when missing.",
        )
        loader.add_option(
            "copilot_metrics_host",
            str,
            "127.0.0.1",
            "Address the Prometheus /metrics endpoint binds to (0.0.0.0 for all interfaces).",
        )
        loader.add_option(
            "copilot_metrics_port", int, 9180, "Port of the Prometheus /metrics endpoint; 0 turns the endpoint off."
        )
        loader.add_option(
            "copilot_log_json",
            str,
            "file",
            "Where the JSON event log goes: file (events/copilot-events_<day>.jsonl under the "
            "data dir), stdout, both, or off.",
            choices=LOG_MODES,
        )
        loader.add_option(
            "copilot_log_skipped",
            bool,
            True,
            "Also log model calls that are not counted (speculative completions, agent steps, "
            "errors), with their skip reason.",
        )
        loader.add_option(
            "copilot_capture_content",
            bool,
            False,
            "Put prompts and answers in the JSON log lines. Off by default: they contain source code.",
        )
        loader.add_option(
            "copilot_record",
            bool,
            False,
            "Record each Copilot request and response (headers redacted, bodies parsed) under "
            "usage/<user>/<kind>/ in the data dir, like the original tool's prompt recording.",
        )
        loader.add_option(
            "copilot_record_telemetry", bool, False, "With copilot_record on, also record telemetry posts."
        )
        loader.add_option(
            "copilot_record_max_bytes",
            int,
            1_000_000,
            "Largest request body kept in a recording; a larger one is cut and marked.",
        )
        loader.add_option(
            "copilot_intercept",
            str,
            "copilot",
            "Which TLS connections to intercept: 'copilot' (Copilot hosts only; everything else "
            "is tunnelled untouched) or 'all'.",
            choices=INTERCEPT_MODES,
        )
        loader.add_option(
            "copilot_hosts",
            Sequence[str],
            [],
            "Extra host regexes to treat as Copilot API hosts (hosts learned from token "
            "exchanges are added automatically).",
        )
        loader.add_option(
            "copilot_max_users",
            int,
            500,
            "Most distinct user label values in /metrics; later users are counted as 'other'.",
        )
        loader.add_option(
            "copilot_max_models",
            int,
            100,
            "Most distinct model label values in /metrics; later models are counted as 'other'.",
        )
        loader.add_option(
            "copilot_max_series",
            int,
            10_000,
            "Most label sets in /metrics; past it, the user, editor, language and model values of new series are "
            "folded into 'other' (counted in copilot_label_overflows_total{label=series}).",
        )
        loader.add_option(
            "copilot_metrics_auth",
            str,
            "",
            "Require HTTP basic auth on /metrics: 'user:password', or '@/path/to/file' holding user:password "
            "(keeps the password off the command line). /healthz stays open.",
        )
        loader.add_option(
            "copilot_metrics_certfile",
            str,
            "",
            "Serve /metrics over TLS with this PEM certificate (chain); its key is copilot_metrics_keyfile, or in "
            "the same file.",
        )
        loader.add_option("copilot_metrics_keyfile", str, "", "PEM private key for copilot_metrics_certfile.")
        loader.add_option(
            "copilot_pseudonym_key",
            str,
            "",
            "When set, users appear everywhere (metrics, logs, summaries, recordings) as u-<keyed hash> instead "
            "of their names; '@/path/to/file' reads the key from a file. Keep the key to map ids back.",
        )
        loader.add_option(
            "copilot_otel",
            bool,
            False,
            "Export OpenTelemetry metrics and one span per Copilot model call over OTLP (needs the 'otel' "
            "extra). Also on when copilot_otel_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT is set; "
            "OTEL_SDK_DISABLED=true turns it off. See docs/opentelemetry.md.",
        )
        loader.add_option(
            "copilot_otel_endpoint",
            str,
            "",
            "OTLP collector base URL, e.g. http://collector:4318 (/v1/traces and /v1/metrics are appended for "
            "http/protobuf). Empty: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.",
        )
        loader.add_option(
            "copilot_otel_protocol",
            str,
            "",
            "OTLP protocol: http/protobuf or grpc (grpc needs the 'otel-grpc' extra). "
            "Empty: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.",
            choices=OTEL_PROTOCOLS,
        )
        loader.add_option(
            "copilot_otel_headers",
            str,
            "",
            "OTLP request headers as key=value,key2=value2 (values URL-encoded), e.g. an API key; "
            "'@/path/to/file' reads them from a file. Empty: OTEL_EXPORTER_OTLP_HEADERS.",
        )
        loader.add_option(
            "copilot_otel_service_name",
            str,
            "",
            "service.name of the exported telemetry. Empty: OTEL_SERVICE_NAME or service.name in "
            "OTEL_RESOURCE_ATTRIBUTES, else copilot-proxy-insight.",
        )
        loader.add_option(
            "copilot_otel_export_interval",
            str,
            "",
            "Seconds between OTLP metric exports. Empty: OTEL_METRIC_EXPORT_INTERVAL (milliseconds), else 60.",
        )
        loader.add_option(
            "copilot_otel_pseudonym_key",
            str,
            "",
            "Pseudonymous users towards the OTLP collector only: when set, metrics and spans carry "
            "enduser.pseudo.id (the keyed hash copilot_pseudonym_key would give) instead of enduser.id, while "
            "local outputs keep names; '@/path/to/file' reads the key from a file.",
        )
        # A string: mitmproxy's --set cannot parse float options; configure() parses and checks it.
        loader.add_option(
            "copilot_flush_interval",
            str,
            "5",
            "Seconds between writes of the daily summary file (fractions allowed, e.g. 0.5).",
        )

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if "copilot_metrics_port" in updated and not 0 <= o.copilot_metrics_port <= 65535:
            raise exceptions.OptionsError(f"copilot_metrics_port must be 0..65535, not {o.copilot_metrics_port}")
        if "copilot_flush_interval" in updated:
            self.writer.set_interval(_seconds(o.copilot_flush_interval, "copilot_flush_interval"))
        for name in ("copilot_max_users", "copilot_max_models", "copilot_record_max_bytes"):
            if name in updated and getattr(o, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1")
        if "copilot_hosts" in updated:
            try:
                self.hosts = HostTable(tuple(o.copilot_hosts))
            except Exception as e:
                raise exceptions.OptionsError(f"copilot_hosts: invalid regex: {e}") from e
        if "copilot_data_dir" in updated and not o.copilot_data_dir.strip():
            raise exceptions.OptionsError("copilot_data_dir must not be empty")
        if "copilot_max_series" in updated and o.copilot_max_series < 100:
            raise exceptions.OptionsError("copilot_max_series must be at least 100")
        if updated & {"copilot_metrics_auth"}:
            self._metrics_auth = _credentials(o.copilot_metrics_auth)
        if "copilot_pseudonym_key" in updated:
            self._pseudonym_key = _secret_value(o.copilot_pseudonym_key, "copilot_pseudonym_key")
        if o.copilot_metrics_keyfile and not o.copilot_metrics_certfile:
            raise exceptions.OptionsError("copilot_metrics_keyfile needs copilot_metrics_certfile")
        self.prometheus.max_series = o.copilot_max_series
        if updated & OTEL_OPTIONS:
            self._build_otel()
        if self.otel is not None:
            self.otel.max_series = o.copilot_max_series
            self.otel.bounds.set_caps(max_users=o.copilot_max_users, max_models=o.copilot_max_models)
        self._intercept_all = o.copilot_intercept == "all"
        self._capture = o.copilot_capture_content
        self._log_skipped = o.copilot_log_skipped
        self._record_max = o.copilot_record_max_bytes
        self.bounds.set_caps(max_users=o.copilot_max_users, max_models=o.copilot_max_models)
        sink_options = {"copilot_data_dir", "copilot_log_json", "copilot_record", "copilot_record_telemetry"}
        if self.jsonlog is None or updated & sink_options:
            self._build_sinks(Path(o.copilot_data_dir))
        metrics_options = {
            "copilot_metrics_host",
            "copilot_metrics_port",
            "copilot_metrics_auth",
            "copilot_metrics_certfile",
            "copilot_metrics_keyfile",
        }
        if self._running and updated & metrics_options:
            self._start_metrics_server()

    def _build_otel(self) -> None:
        """(Re)builds the OpenTelemetry sink from the options and the OTEL_* environment (None: off)."""
        o = ctx.options
        interval = o.copilot_otel_export_interval.strip()
        try:
            from exporter.sinks.otel import OtelConfigError, otel_sink_from_options
        except ImportError as e:
            if o.copilot_otel or o.copilot_otel_endpoint:
                raise exceptions.OptionsError(
                    f"copilot_otel needs the OpenTelemetry packages: pip install 'copilot-proxy-insight[otel]' ({e})"
                ) from e
            return
        try:
            sink = otel_sink_from_options(
                o.copilot_otel,
                o.copilot_otel_endpoint,
                o.copilot_otel_protocol,
                _secret_value(o.copilot_otel_headers, "copilot_otel_headers"),
                o.copilot_otel_service_name,
                _seconds(interval, "copilot_otel_export_interval") if interval else 0.0,
                _secret_value(o.copilot_otel_pseudonym_key, "copilot_otel_pseudonym_key"),
                self._otel_export_failed,
                pseudonymous_users=bool(self._pseudonym_key),
                max_users=o.copilot_max_users,
                max_models=o.copilot_max_models,
                max_series=o.copilot_max_series,
            )
        except OtelConfigError as e:
            raise exceptions.OptionsError(f"OpenTelemetry: {e}") from e
        old, self.otel = self.otel, sink
        if old is not None:  # its last export may wait on the collector: not on the event loop
            threading.Thread(target=old.close, name="copilot-proxy-insight-otel-close", daemon=True).start()
        if sink is not None and sink.settings is not None:
            log.info("copilot-proxy-insight: OpenTelemetry on: %s", sink.settings.describe())

    def _otel_export_failed(self, component: str) -> None:
        """Called from the SDK's export threads when an OTLP export fails."""
        self.errors.failed(component, "OTLP export failed (collector unreachable, refusing or too slow)")

    def _exporter_error(self, component: str) -> None:
        self.prometheus.exporter_error(component)
        if self.otel is not None:
            self.otel.exporter_error(component)

    def _auth_failure(self) -> None:
        self.prometheus.auth_failure()
        if self.otel is not None:
            self.otel.auth_failure()

    def _build_sinks(self, data_dir: Path) -> None:
        o = ctx.options
        self.writer.flush()
        if self.jsonlog is not None:
            old = self.jsonlog
            self.writer.submit("jsonlog", old.close)
            self.writer.flush()
        self.jsonlog = JsonLogSink(data_dir, o.copilot_log_json, self.writer)
        self.daily = DailySink(data_dir, self.writer)
        self.recorder = RecorderSink(data_dir, self.writer, o.copilot_record_telemetry) if o.copilot_record else None

    def running(self) -> None:
        self.writer.start()
        self._start_metrics_server()
        self._running = True
        proxyserver = ctx.master.addons.get("proxyserver")
        bound = proxyserver.listen_addrs() if proxyserver is not None else ()
        facts = facts_from_options(ctx.options, __version__, self.prometheus.server_port, bound)
        for line in startup_lines(facts):
            log.log(line.level, "copilot-proxy-insight: %s", line.text)

    def done(self) -> None:
        self._running = False
        self.prometheus.stop_server()
        if self.otel is not None:
            self.otel.close()  # exports what is pending; returns within 5 s even when the collector is away
            self.otel = None
        self.writer.stop()
        if self.jsonlog is not None:
            self.jsonlog.close()

    def _start_metrics_server(self) -> None:
        o = ctx.options
        self.prometheus.stop_server()
        if o.copilot_metrics_port == 0:
            return
        try:
            self.prometheus.start_server(
                o.copilot_metrics_host,
                o.copilot_metrics_port,
                basic_auth=self._metrics_auth,
                certfile=o.copilot_metrics_certfile or None,
                keyfile=o.copilot_metrics_keyfile or None,
            )
        except OSError as e:
            # WARNING, not ERROR: mitmdump exits when an error is logged during start-up, and the proxy
            # must keep passing Copilot traffic without its metrics endpoint.
            self.errors.failed(
                "metrics_server",
                f"cannot serve /metrics on {o.copilot_metrics_host}:{o.copilot_metrics_port}: {e}",
                level=logging.WARNING,
            )
        else:
            if self._running:  # a restart after a change of options; at start the summary says where it is
                log.info(
                    "copilot-proxy-insight: /metrics on %s://%s:%s/metrics",
                    "https" if o.copilot_metrics_certfile else "http",
                    o.copilot_metrics_host,
                    self.prometheus.server_port,
                )

    def _label_overflow(self, label: str) -> None:
        self.prometheus.label_overflow(label)

    # -- connections and identity ---------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.status_code == 407:
            self._auth_failure()
            return
        self._conn_users[flow.client_conn.id] = self._flow_user(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        self._conn_users.pop(client.id, None)
        self._conn_clients.pop(client.id, None)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self._intercept_all:
            return
        host = data.client_hello.sni
        if not host and data.context.server.address:
            host = data.context.server.address[0]
        if not host or not self.hosts.is_copilot(host):
            data.ignore_connection = True

    def _flow_user(self, flow: http.HTTPFlow, headers: Mapping[str, str] | None = None) -> str:
        auth = flow.metadata.get("proxyauth")
        authenticated = auth[0] if isinstance(auth, tuple) and auth else None
        if authenticated is None:
            known = self._conn_users.get(flow.client_conn.id)
            if known is not None:
                return known
        h = headers if headers is not None else flow.request.headers
        user = proxy_user(authenticated, h.get("proxy-authorization"))
        return pseudonym(user, self._pseudonym_key) if self._pseudonym_key else user

    def _client(
        self, flow: http.HTTPFlow, user: str, interaction_id: str | None, headers: Mapping[str, str]
    ) -> ClientIdentity:
        """The editor of a request; requests without Editor-Version borrow it from their connection,
        their interaction, or the user's last identified request of the same editor."""
        found = identify(headers)
        conn = flow.client_conn.id
        if found is not None and found.header_editor_version:
            self._conn_clients.put(conn, found)
            if interaction_id:
                self._interaction_clients.put(interaction_id, found)
            self._user_clients.put(user, found)
            self.prometheus.client_seen(user, found.editor, found.editor_version, found.plugin, found.plugin_version)
            return found
        for joined in (
            self._conn_clients.get(conn),
            self._interaction_clients.get(interaction_id) if interaction_id else None,
            # The user's last identified client only when this request names at least its editor.
            self._user_clients.get(user) if found is not None else None,
        ):
            if joined is not None and (found is None or found.editor in (joined.editor, "unknown")):
                return joined
        return found or UNKNOWN_CLIENT

    # -- requests -------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._requestheaders(flow)
        except Exception as e:
            self.errors.failed("addon", e)

    def _requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            if flow.response.status_code == 407:
                self._auth_failure()
            return
        host = flow.request.pretty_host
        role = self.hosts.role(host)
        if role is None:
            return
        req = flow.request
        r = route(role, req.method, req.path)
        h = _header_map(req.headers)
        user = self._flow_user(flow, h)
        interaction_id = _header(h, "x-interaction-id")
        initiator = (h.get("x-initiator") or "").strip().lower() or None
        kind = r.kind
        if kind is Kind.CHAT:
            kind = chat_mode(h.get("openai-intent"), h.get("x-interaction-type"))
        self.flows[flow.id] = _Live(
            started=self.clock(),
            host=host,
            role=role,
            kind=kind,
            path_model=r.path_model,
            user=user,
            client=self._client(flow, user, interaction_id, h),
            request_id=_header(h, "x-request-id"),
            interaction_id=interaction_id,
            initiator=initiator if initiator in ("user", "agent") else None,
            intent=_header(h, "openai-intent", 64) or _header(h, "x-interaction-type", 64),
            speculative=(h.get("x-copilot-speculative") or "").strip().lower() == "true",
        )

    def request(self, flow: http.HTTPFlow) -> None:
        live = self.flows.get(flow.id)
        if live is None or live.kind not in MODEL_CALL_KINDS:
            return
        try:
            body = flow.request.get_content(strict=False)
            keep = self.recorder is not None and (body is None or len(body) <= self._record_max)
            live.facts = parse_request(body, shape_for_path(flow.request.path), keep_parsed=keep)
            if live.kind is Kind.PROXY_CHAT_OTHER:
                live.kind = refine_proxy_chat(live.facts.model)
        except Exception as e:
            self.errors.failed("parser", e)

    # -- responses ------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        live = self.flows.get(flow.id)
        if live is None or flow.response is None:
            return
        ctype = flow.response.headers.get("content-type", "").lower()
        if "text/event-stream" not in ctype:
            return
        try:
            live.parser = AnswerParser(shape_for_path(flow.request.path), self._keep_events())
            live.body = BodyDecoder(flow.response.headers.get("content-encoding"))
            live.sse = SSEDecoder()
            live.streamed = True
            flow.response.stream = self._tee(live)
        except Exception as e:  # e.g. an unknown content-encoding: pass the stream untouched, unparsed
            live.parse_error = str(e)[:200]
            live.parser = None
            flow.response.stream = True
            self.errors.failed("parser", e)

    def _keep_events(self) -> int:
        return MAX_RECORDED_EVENTS if self.recorder is not None else 0

    def _tee(self, live: _Live) -> Callable[[bytes], bytes]:
        """The stream callback: passes every chunk on unchanged and feeds a copy to the decoder."""

        def tee(chunk: bytes) -> bytes:
            if live.parse_error is None and live.parser is not None:
                try:
                    self._feed(live, chunk)
                except Exception as e:  # never let parsing touch the stream
                    live.parse_error = f"{type(e).__name__}: {e}"[:200]
                    self.errors.failed("parser", e)
            return chunk

        return tee

    def _feed(self, live: _Live, chunk: bytes) -> None:
        assert live.parser is not None and live.body is not None and live.sse is not None
        events = live.sse.feed(live.body.feed(chunk)) if chunk else live.sse.close()
        for ev in events:
            if live.parser.feed_event(ev) and live.first_content_at is None:
                live.first_content_at = time.time()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        live = self.flows.pop(flow.id, None)
        if live is None:
            return
        try:
            if flow.websocket is not None:
                # A WebSocket upgrade (/responses over ws): its frames are the calls, see websocket_message.
                self._ws_calls[flow.id] = _WsCalls()
                return
            self._read_buffered(flow, live)
            event, recording = self._event(flow, live)
            self._emit(event, recording)
        except Exception as e:
            self.errors.failed("addon", e)

    def _read_buffered(self, flow: http.HTTPFlow, live: _Live) -> None:
        """Non-streamed bodies: JSON answers, buffered event streams, token exchanges (host learning)."""
        resp = flow.response
        if resp is None or live.streamed or live.kind not in MODEL_CALL_KINDS | {Kind.TOKEN_EXCHANGE, Kind.USER_INFO}:
            return
        raw = resp.raw_content
        if not raw or len(raw) > MAX_JSON_RESPONSE:
            return
        try:
            body = resp.get_content(strict=True) or b""
        except ValueError as e:
            live.parse_error = f"content-encoding: {e}"[:200]
            return
        if len(body) > MAX_JSON_RESPONSE:
            return
        if live.kind in (Kind.TOKEN_EXCHANGE, Kind.USER_INFO):
            if resp.status_code == 200:
                try:
                    doc = json.loads(body)
                except ValueError:
                    return
                if isinstance(doc, dict):
                    for host in self.hosts.learn(doc.get("endpoints")):
                        log.info("copilot-proxy-insight: learned Copilot host %s", host)
            return
        parser = AnswerParser(shape_for_path(flow.request.path), self._keep_events())
        live.parser = parser
        stripped = body.lstrip()
        if stripped.startswith((b"data:", b"event:", b":")):
            sse = SSEDecoder()
            for ev in [*sse.feed(body), *sse.close()]:
                parser.feed_event(ev)
            return
        try:
            parser.feed_json(json.loads(body))
        except ValueError:
            parser.answer.malformed_events += 1
        except RecursionError:
            parser.answer.malformed_events += 1

    def _event(self, flow: http.HTTPFlow, live: _Live) -> tuple[UsageEvent, Recording | None]:
        resp = flow.response
        status = resp.status_code if resp is not None else None
        answer = live.parser.answer if live.parser is not None else None
        client_aborted = flow.error is not None
        facts = live.facts
        decision = self.counter.decide(
            Call(
                kind=live.kind,
                status=status,
                request_id=live.request_id,
                interaction_id=live.interaction_id,
                initiator=live.initiator or facts.initiator,
                intent=live.intent,
                speculative=live.speculative,
                user_last=facts.user_last,
                client_aborted=client_aborted,
            ),
            answer,
            live.started,
        )
        if live.wall_start is not None:
            start, end = live.wall_start, time.time()
        else:
            start = flow.request.timestamp_start
            end = resp.timestamp_end if resp is not None and resp.timestamp_end else time.time()
        ttft = live.first_content_at - start if live.first_content_at is not None else None
        finish = answer.finish_reason if answer is not None else None
        if client_aborted and finish is None:
            finish = "cancelled"
        model = live.path_model or facts.model
        error = flow.error.msg[:200] if flow.error is not None else (live.parse_error or facts.error)
        if answer is not None and answer.error and not error:
            error = answer.error
        language = self.bounds.language(facts.language) if live.kind is Kind.COMPLETION else "unknown"
        client = live.client
        event = UsageEvent(
            timestamp=datetime.fromtimestamp(live.started, UTC),
            user=live.user,
            editor=self.bounds.editor(client.editor),
            editor_version=client.header_editor_version
            or (f"{client.editor}/{client.editor_version}" if client.editor_version else None),
            summary_key=client.summary_key,
            plugin=client.plugin,
            plugin_version=client.plugin_version,
            language=language,
            kind=live.kind.value,
            model=model,
            resolved_model=answer.resolved_model if answer is not None else None,
            initiator=decision.initiator,
            initiator_source=decision.initiator_source,
            interaction_id=live.interaction_id,
            request_id=live.request_id,
            intent=live.intent,
            host=live.host,
            method=flow.request.method,
            path=clean(flow.request.path.split("?", 1)[0], 256) or "/",
            status=status,
            duration_s=max(0.0, end - start),
            ttft_s=max(0.0, ttft) if ttft is not None else None,
            streamed=live.streamed,
            speculative=live.speculative,
            finish_reason=finish,
            input_tokens=answer.input_tokens if answer is not None else None,
            output_tokens=answer.output_tokens if answer is not None else None,
            cached_tokens=answer.cached_tokens if answer is not None else None,
            reasoning_tokens=answer.reasoning_tokens if answer is not None else None,
            nano_aiu=answer.nano_aiu if answer is not None else None,
            tool_calls=tuple(answer.tool_calls) if answer is not None else (),
            counted=decision.counted,
            skip_reason=decision.skip.value if decision.skip is not None else None,
            model_call=live.kind in MODEL_CALL_KINDS,
            error=error,
            prompt=facts.prompt if self._capture else None,
            completion=(answer.text or None) if self._capture and answer is not None else None,
        )
        recording = None
        if self.recorder is not None and self.recorder.wants(event.kind):
            recording = self._recording(flow, live)
        return event, recording

    def _recording(self, flow: http.HTTPFlow, live: _Live) -> Recording:
        req = flow.request
        content: Any = live.facts.parsed
        if content is None and req.raw_content:
            raw = req.get_content(strict=False) or b""
            cut = len(raw) > self._record_max
            content = (
                {"truncated": cut, "text": raw[: self._record_max].decode("utf-8", "replace")}
                if cut
                else (raw.decode("utf-8", "replace"))
            )
        response_content: Any = live.parser.kept if live.parser is not None else None
        resp = flow.response
        return Recording(
            url=req.pretty_url,
            method=req.method,
            request_headers=list(req.headers.items(multi=True)),
            request_content=content,
            response_headers=list(resp.headers.items(multi=True)) if resp is not None else [],
            response_content=response_content,
        )

    def _emit(self, event: UsageEvent, recording: Recording | None) -> None:
        """Fan the event out; a failing sink is counted and logged, the others still get it."""
        sinks: list[tuple[str, Any]] = [("prometheus", self.prometheus), ("otel", self.otel)]
        if event.counted or (self._log_skipped and (event.model_call or (event.status or 0) >= 400)):
            sinks.append(("jsonlog", self.jsonlog))
        sinks.append(("daily", self.daily))
        if recording is not None:
            sinks.append(("recorder", self.recorder))
        for name, sink in sinks:
            if sink is None:
                continue
            try:
                sink.handle(event, recording)
            except Exception as e:
                self.errors.failed(name, e)

    # -- WebSocket: Responses API over ws (/responses GET upgrade) --------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = self._ws_calls.get(flow.id)
        if ws is None or flow.websocket is None:
            return
        try:
            self._websocket_message(flow, ws)
        except Exception as e:
            self.errors.failed("parser", e)

    def _websocket_message(self, flow: http.HTTPFlow, ws: _WsCalls) -> None:
        assert flow.websocket is not None
        msg = flow.websocket.messages[-1]
        if not msg.is_text or len(msg.content) > MAX_JSON_RESPONSE:
            return
        calls = ws.calls
        if msg.from_client:
            facts = parse_request(msg.content, Shape.RESPONSES, keep_parsed=self.recorder is not None)
            if facts.frame_type != "response.create":
                return
            h = _header_map(flow.request.headers)
            user = self._flow_user(flow, h)
            interaction_id = _header(h, "x-interaction-id")
            ws.seq += 1  # only grows: each call on the socket gets its own request id
            calls.append(
                _Live(
                    started=self.clock(),
                    host=flow.request.pretty_host,
                    role=HostRole.API,
                    kind=Kind.CHAT_WS,
                    path_model=None,
                    user=user,
                    client=self._client(flow, user, interaction_id, h),
                    request_id=f"{_header(h, 'x-request-id') or flow.id}#{ws.seq}",
                    interaction_id=interaction_id,
                    initiator=facts.initiator,
                    intent=_header(h, "openai-intent", 64),
                    speculative=False,
                    facts=facts,
                    parser=AnswerParser(Shape.RESPONSES, self._keep_events()),
                    streamed=True,
                    wall_start=time.time(),
                )
            )
            return
        if not calls:
            return
        live = calls[0]
        assert live.parser is not None
        if live.parser.feed_event(SSEEvent(None, msg.text)) and live.first_content_at is None:
            live.first_content_at = time.time()
        if live.parser.answer.complete or live.parser.answer.error:
            calls.pop(0)
            self._emit_ws(flow, live)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        ws = self._ws_calls.pop(flow.id, None)
        for live in ws.calls if ws is not None else ():
            self._emit_ws(flow, live)

    def _emit_ws(self, flow: http.HTTPFlow, live: _Live) -> None:
        try:
            event, recording = self._event(flow, live)
            self._emit(event, recording)
        except Exception as e:
            self.errors.failed("addon", e)


addons = [CopilotInsight()]
