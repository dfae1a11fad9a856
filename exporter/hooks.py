"""The mitmproxy addons: thin hooks that read each flow once and hand plain values to the call tracker.

Three small addons, as mitmproxy composes its own: `Interception` (which TLS connections to intercept),
`ConnectionUsers` (the proxy user of each client connection) and `CopilotInsight` (the Copilot calls:
hooks → `CallTracker` → `Outputs`). `CopilotInsight` nests the other two (mitmproxy walks `addons`).
With `exporter.flows`, `exporter.addon` and the `cli` launcher, the only modules that import mitmproxy.
"""

from __future__ import annotations

import gc
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy import version as mitmproxy_version

from exporter import __version__
from exporter.calls import CallTracker, Clock, Finished, TrackerOptions
from exporter.classify import HostTable
from exporter.credits import shipped_table
from exporter.dispatch import AuthFailure, Observed, Sink
from exporter.flows import (
    header,
    header_map,
    last_frame,
    request_host,
    request_meta,
    response_head,
    response_meta,
    tee,
)
from exporter.identity import proxy_user, pseudonym
from exporter.observe import mcp_request
from exporter.options import BY_NAME, INTERCEPTION_OPTIONS, OPTIONS, parse_error
from exporter.outputs import Outputs
from exporter.settings import Settings, SettingsError, settings_from
from exporter.startup import facts_from_options, startup_lines
from exporter.tools import mcp_server

log = logging.getLogger("copilot_proxy_insight")


def declare(loader: Any, names: Iterable[str]) -> None:
    """Adds the options, then checks their deferred `--set` values: mitmproxy would drop the whole addon
    without a word on a value it cannot parse, so a bad one is reported here as one line (an ERROR during
    start-up makes mitmdump exit) and left out."""
    names = list(names)
    for name in names:
        o = BY_NAME[name]
        loader.add_option(o.name, o.type, o.default, o.help, choices=o.choices)
    deferred: MutableMapping[str, Any] = getattr(getattr(loader.master, "options", None), "deferred", {})
    for name in names:
        values = getattr(deferred.get(name), "val", None)
        if isinstance(values, list):
            problem = parse_error(BY_NAME[name], values)
            if problem is not None:
                del deferred[name]
                log.error("copilot-proxy-insight: bad option %s", problem)


_heap = {"frozen": False}


def freeze_startup_heap() -> bool:
    """Moves every object alive now into the collector's permanent generation, once per process.

    mitmproxy's and the addon's start-up objects (modules, options, certificates, tables) live as long as the
    process; without this every full collection walks them again. Returns whether this call froze the heap."""
    if _heap["frozen"]:
        return False
    _heap["frozen"] = True
    gc.collect()  # what is already garbage is freed, not frozen
    gc.freeze()
    return True


class Interception:
    """Intercepts TLS only for Copilot hosts (or every host with copilot_intercept=all)."""

    def __init__(self, hosts: HostTable) -> None:
        self.hosts = hosts
        self.intercept_all = False

    def load(self, loader: Any) -> None:
        declare(loader, INTERCEPTION_OPTIONS)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if self.intercept_all:
            return
        host = data.client_hello.sni
        if not host and data.context.server.address:
            host = data.context.server.address[0]
        if not host or not self.hosts.is_copilot(host):
            data.ignore_connection = True


class ConnectionUsers:
    """The proxy user of each client connection (kept by the connection object, forgotten with it)."""

    def __init__(self, on_auth_failure: Callable[[], None]) -> None:
        self._on_auth_failure = on_auth_failure
        self.users: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        self.pseudonym_key = ""

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.status_code == 407:
            self._on_auth_failure()
            return
        self.users[flow.client_conn] = self.user_of(flow)

    def user_of(self, flow: http.HTTPFlow, headers: Mapping[str, str] | None = None) -> str:
        """proxyauth's user of the flow, else its connection's, else a Proxy-Authorization sent anyway."""
        auth = flow.metadata.get("proxyauth")
        authenticated = auth[0] if isinstance(auth, tuple) and auth else None
        if authenticated is None:
            known = self.users.get(flow.client_conn)
            if known is not None:
                return known
        h = headers if headers is not None else flow.request.headers
        user = proxy_user(authenticated, h.get("proxy-authorization"))
        return pseudonym(user, self.pseudonym_key) if self.pseudonym_key else user


class CopilotInsight:
    """Copilot calls: requests, streams, answers and WebSocket frames go to the tracker; events to the outputs."""

    def __init__(self, clock: Clock = time.time, sinks: Sequence[Sink] = ()) -> None:
        self.outputs = Outputs(mitmproxy_version.VERSION, sinks)
        self.hosts = HostTable()
        self.tracker = CallTracker(
            self.hosts, self.outputs.policy.bounds, self.outputs.errors, clock, scanner=self.outputs.scanner
        )
        self.tracker.teams = self.outputs.teams.of
        self.interception = Interception(self.hosts)
        self.users = ConnectionUsers(lambda: self.outputs.health(AuthFailure()))
        self.addons = [self.interception, self.users]
        self.settings: Settings | None = None
        self._running = False

    # -- options and lifecycle ------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        declare(loader, [o.name for o in OPTIONS if o.name not in INTERCEPTION_OPTIONS])

    def configure(self, updated: set[str]) -> None:
        try:
            new = settings_from(lambda name: getattr(ctx.options, name))
            self._apply(new)
        except SettingsError as e:
            self._bad_option(str(e))

    def _bad_option(self, problem: str) -> None:
        """While mitmdump starts, one line (its errorcheck exits on an ERROR; an OptionsError would print a
        traceback); once running, an OptionsError, so mitmproxy rolls the change back and says why."""
        if self._running or ctx.master.addons.get("errorcheck") is None:
            raise exceptions.OptionsError(problem) from None
        log.error("copilot-proxy-insight: bad option %s", problem)

    def _apply(self, new: Settings) -> None:
        old = self.settings
        if old is None or new.hosts != old.hosts:
            self.hosts = self.tracker.hosts = self.interception.hosts = HostTable(new.hosts)
        self.interception.intercept_all = new.intercept_all
        self.users.pseudonym_key = new.pseudonym_key
        files = new.files
        self.tracker.options = TrackerOptions(new.capture, files.record, files.record_telemetry, files.record_max_bytes)
        if old is None or new.cost.price_table != old.cost.price_table:
            self.tracker.prices.table = new.cost.price_table or shipped_table()
        self.outputs.apply(old, new)
        self.settings = new

    def running(self) -> None:
        if self.settings is None:
            return  # the options were refused; mitmdump is exiting
        self._running = True
        self.outputs.start(self.settings)
        self._startup_report()
        if self.settings.gc_freeze:
            freeze_startup_heap()

    def _startup_report(self) -> None:
        """What a new admin needs to point one IDE at the proxy, logged once it is up (exporter/startup.py)."""
        proxyserver = ctx.master.addons.get("proxyserver")
        bound = proxyserver.listen_addrs() if proxyserver is not None else ()
        server = self.outputs.server
        facts = facts_from_options(ctx.options, __version__, server.port if server is not None else None, bound)
        for line in startup_lines(facts):
            log.log(line.level, "copilot-proxy-insight: %s", line.text)

    def done(self) -> None:
        self._running = False
        self.outputs.stop()
        self.settings = None  # a reload of the script configures everything afresh

    @property
    def prometheus(self) -> Any:
        return self.outputs.prometheus

    @property
    def writer(self) -> Any:
        return self.outputs.writer

    @property
    def otel(self) -> Any:
        return self.outputs.sink("otel")

    # -- requests -------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            if flow.response is not None:  # answered by the proxy itself (proxyauth's 407)
                if flow.response.status_code == 407:
                    self.outputs.health(AuthFailure())
                return
            headers = header_map(flow.request.headers)
            host = request_host(flow.request, headers)
            role = self.hosts.role(host)
            if role is None:
                self._other_host(flow, host, headers)
                return
            record = self.tracker.options.record
            meta = request_meta(flow, host, role, headers, self.users.user_of(flow, headers), record)
            self.tracker.start(flow.id, meta)
        except Exception as e:
            self.outputs.errors.failed("addon", e)

    def _other_host(self, flow: http.HTTPFlow, host: str, headers: Mapping[str, str]) -> None:
        """A request to a host that is not Copilot's (intercepted with copilot_intercept=all): MCP servers count."""
        server = mcp_server(host, flow.request.path, copilot=False)
        if server is not None:
            self.outputs.health(Observed(mcp_request(self.users.user_of(flow, headers), server)))

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.tracker.wants_body(flow.id):
            return
        try:
            raw = flow.request.raw_content
            self.tracker.request_body(flow.id, raw, header(flow.request.headers, b"content-encoding"))
        except Exception as e:
            self.outputs.errors.failed("parser", e)

    # -- responses ------------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            head = response_head(flow)
            feed = self.tracker.stream(flow.id, head) if head is not None else None
        except Exception as e:
            self.outputs.errors.failed("parser", e)
            return
        if feed is not None and flow.response is not None:
            flow.response.stream = tee(feed)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        try:
            done = self.tracker.finish(flow.id, response_meta(flow, self.tracker.options.record))
        except Exception as e:
            self.outputs.errors.failed("addon", e)
            return
        if done is not None:
            self._emit([done])

    def _emit(self, finished: Iterable[Finished]) -> None:
        for done in finished:
            self.outputs.emit(done.event, done.recording)
            if done.client_seen is not None:
                self.outputs.health(done.client_seen)

    # -- WebSocket: Responses API over ws -------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        try:
            frame = last_frame(flow)
            finished = self.tracker.ws_frame(flow.id, frame) if frame is not None else []
        except Exception as e:
            self.outputs.errors.failed("parser", e)
            return
        self._emit(finished)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        try:
            finished = self.tracker.ws_close(flow.id)
        except Exception as e:
            self.outputs.errors.failed("addon", e)
            return
        self._emit(finished)

    def client_disconnected(self, client: connection.Client) -> None:
        self.tracker.clients.forget_connection(client.id)
