"""The exporter's outputs and their lifecycle: the sinks behind one dispatcher, the writer thread, /metrics.

`apply(old, new)` compares sub-settings and rebuilds only what changed: the file sinks when `files` changed,
the OpenTelemetry sink when `otel` changed, the metrics server when `metrics` changed (once running).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.budgets import CostSink
from exporter.datalock import DataDirInUse, DataDirLock
from exporter.dispatch import Dispatcher, ExporterError, Health, LabelEvicted, LabelOverflow, Observed, Sink
from exporter.events import UsageEvent
from exporter.labels import OTHER, LabelPolicy
from exporter.metrics_server import MetricsServer, serve_metrics
from exporter.observe import scan_skipped, secret_found
from exporter.scanner import SECRET_EVENT, Scanner, SecretFinding
from exporter.secrets import install_key
from exporter.settings import Files, MetricsEndpoint, OtelOptions, Settings, SettingsError
from exporter.sinks.daily import DailySink
from exporter.sinks.jsonlog import JsonLogSink
from exporter.sinks.prometheus import PrometheusSink
from exporter.sinks.recorder import RecorderSink
from exporter.teams import TeamDirectory
from exporter.writer import BackgroundWriter, ErrorReporter

log = logging.getLogger("copilot_proxy_insight")


def data_dir_problem(data_dir: Path) -> str | None:
    """Why nothing can be written under `data_dir` (None: it is writable). Start-up only: it touches the disk."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".copilot-write-test-"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


class Outputs:
    """Owns the dispatcher and every sink; the addon hands it events, health signals and settings."""

    def __init__(self, mitmproxy_version: str, extra_sinks: Iterable[Sink] = ()) -> None:
        self.policy = LabelPolicy(on_overflow=self._overflow, on_evict=self._evicted)
        self.errors = ErrorReporter(self._failed)
        self.writer = BackgroundWriter(self.errors)
        self.prometheus = PrometheusSink()
        self.prometheus.build_info(__version__, mitmproxy_version)
        self.cost = CostSink(self.policy)
        self.prometheus.registry.register(self.cost.quota)
        self.prometheus.registry.register(self.cost.budget)
        self.dispatcher = Dispatcher(self.errors, self.policy, [self.prometheus, self.cost, *extra_sinks])
        self.teams = TeamDirectory(self._team_error, self.errors.recovered)
        self.cost.budget.teams_of = self.teams.of  # team allowances of copilot_budget_file
        # Users seen with teams (insertion-ordered, capped like the user label): the info metric's users, by
        # their user label (a user folded into `other` has no team series; an evicted user's go).
        self._team_users: dict[str, None] = {}
        self._max_team_users = 500
        self._team_changes = 0  # bumped on every change of _team_users (the event loop's), read by the writer
        self._team_state: tuple[int, int] = (-1, -1)
        self._team_lock = threading.Lock()  # the writer's two threads both publish
        self.writer.every_interval("teams", self._refresh_teams)
        # A new user's team series within a batch (0.1 s) of their first counters, not a flush interval later.
        self.writer.every_batch("teams", self._publish_teams)
        self.server: MetricsServer | None = None
        self.running = False
        self.lock = DataDirLock()  # held while running: one process per data dir and instance id
        self.scanner = Scanner(self._scanned)

    def _failed(self, component: str) -> None:
        self.dispatcher.health(ExporterError(component))

    def _overflow(self, label: str) -> None:
        self.dispatcher.health(LabelOverflow(label))

    def _evicted(self, user: str) -> None:
        if self._team_users.pop(user, 0) is None:
            self._team_changes += 1
        self.dispatcher.health(LabelEvicted("user", user))

    def _team_error(self, component: str, message: str) -> None:
        # WARNING: mitmdump exits on an ERROR logged while it starts, and the proxy must run without teams.
        self.errors.failed(component, message, level=logging.WARNING)

    def emit(self, event: UsageEvent, recording: Any = None) -> None:
        self.dispatcher.emit(event, recording)
        if event.teams:
            self._track_teams(event)

    def _track_teams(self, event: UsageEvent) -> None:
        """Keeps the event's user for copilot_user_team_info, by the user label the dispatcher just gave it."""
        label = self.policy.user(event.user, False, event.timestamp.timestamp(), {"user"})  # no 2nd overflow count
        if label != OTHER and label not in self._team_users and len(self._team_users) < self._max_team_users:
            self._team_users[label] = None
            self._team_changes += 1

    def _refresh_teams(self) -> None:
        """Periodic thread: re-reads a changed team map, then brings copilot_user_team_info up to date."""
        self.teams.poll()
        self._publish_teams()

    def _publish_teams(self) -> bool:
        """Writer threads: copilot_user_team_info for the users seen and the current map; False when neither
        changed since the last time."""
        with self._team_lock:
            changes = self._team_changes
            users = tuple(self._team_users)  # one C-level copy: the event loop may add users meanwhile
            state = (self.teams.version, changes)
            if state == self._team_state:
                return False
            of = self.teams.of
            self.prometheus.team_info({(user, team) for user in users for team in of(user)})
            self._team_state = state
            return True

    def health(self, signal: Health) -> None:
        self.dispatcher.health(signal)

    def _scanned(self, findings: list[SecretFinding], skipped: list[str]) -> None:
        """Event loop (posted by the scanner thread): each finding as a counter and a copilot.secret_detected
        log line, each skipped body as a counter."""
        for f in findings:
            self.dispatcher.health(Observed(secret_found(f.user, f.kind, f.secret_type), SECRET_EVENT, f.log_fields()))
        for reason in skipped:
            self.dispatcher.health(Observed(scan_skipped(reason)))

    def sink(self, name: str) -> Any:
        return self.dispatcher.get(name)

    # -- settings ------------------------------------------------------------------------------

    def apply(self, old: Settings | None, new: Settings) -> None:
        """Rebuilds what changed between two settings; raises SettingsError for unusable OTel settings."""
        self.writer.set_interval(new.flush_interval_s)
        if old is None or new.caps != old.caps:
            self.policy.set_caps(new.caps.max_users, new.caps.max_models, new.caps.max_series)
            self._max_team_users = new.caps.max_users
        if old is None or new.teams != old.teams or new.pseudonym_key != old.pseudonym_key:
            self.teams.configure(new.teams, new.pseudonym_key)
        if old is None or new.otel != old.otel:
            self._build_otel(new.otel)
        if self.running and old is not None and _place(new.files) != _place(old.files):
            try:
                self.lock.acquire(new.files.data_dir, new.files.instance_id)
            except DataDirInUse as e:
                raise SettingsError(f"copilot_data_dir: {e}") from None
        if old is None or new.files != old.files:
            self._build_files(new.files)
        if old is None or new.cost != old.cost or new.files.data_dir != old.files.data_dir:
            # Month-to-date use is read back from the summaries only for a new data dir (live counts stay).
            moved = old is None or new.files.data_dir != old.files.data_dir
            self.cost.configure(new.cost.budgets, new.cost.quota_ttl_s, new.files.data_dir if moved else None)
        if self.running and (old is None or new.metrics != old.metrics):
            self.start_metrics_server(new.metrics)
        if old is None or (new.secret_scan, new.pseudonym_key, new.files.data_dir) != (
            old.secret_scan,
            old.pseudonym_key,
            old.files.data_dir,
        ):
            scan = new.secret_scan
            key = install_key(new.pseudonym_key, new.files.data_dir) if scan.enabled else b""
            self.scanner.configure(scan.enabled, scan.max_bytes, scan.queue_size, key)

    def _build_files(self, files: Files) -> None:
        self.writer.flush()
        old = self.dispatcher.get("jsonlog")
        if isinstance(old, JsonLogSink):
            self.writer.submit("jsonlog", old.close)
            self.writer.flush()
        jsonlog = JsonLogSink(
            files.data_dir, files.log_json, self.writer, log_skipped=files.log_skipped, instance=files.instance_id
        )
        self.dispatcher.replace("jsonlog", jsonlog)
        self.dispatcher.replace("daily", DailySink(files.data_dir, self.writer, files.instance_id))
        recorder = RecorderSink(files.data_dir, self.writer, files.record_telemetry) if files.record else None
        self.dispatcher.replace("recorder", recorder)

    def _build_otel(self, options: OtelOptions) -> None:
        try:
            from exporter.otel_pipeline import OtelConfigError, build_otel_sink
        except ImportError as e:  # a broken install: the OpenTelemetry packages are dependencies
            if options.enabled or options.endpoint:
                raise SettingsError(f"copilot_otel: the OpenTelemetry packages cannot be imported ({e})") from None
            return
        try:
            sink = build_otel_sink(options, self._otel_export_failed)
        except OtelConfigError as e:
            raise SettingsError(f"OpenTelemetry: {e}") from None
        old = self.dispatcher.replace("otel", sink)
        if old is not None:  # its last export may wait on the collector: not on the event loop
            threading.Thread(target=old.close, name="copilot-proxy-insight-otel-close", daemon=True).start()
        if sink is not None and sink.settings is not None:
            log.info("copilot-proxy-insight: OpenTelemetry on: %s", sink.settings.describe())

    def _otel_export_failed(self, component: str) -> None:
        """Called from the SDK's export threads when an OTLP export fails."""
        self.errors.failed(component, "OTLP export failed (collector unreachable, refusing or too slow)")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, settings: Settings) -> None:
        self.running = True
        try:
            self.lock.acquire(settings.files.data_dir, settings.files.instance_id)
        except DataDirInUse as e:
            # ERROR: mitmdump exits when an error is logged during start-up. Nothing may touch the files
            # of the process that holds the data dir meanwhile, so the file sinks go first.
            for name in ("jsonlog", "daily", "recorder"):
                self.dispatcher.replace(name, None)
            log.error("copilot-proxy-insight: %s", e)
            return
        self.writer.start()
        self.scanner.post = _loop_post()
        problem = data_dir_problem(settings.files.data_dir)
        if problem is not None and settings.files.log_json in ("file", "both"):
            # WARNING, not ERROR: mitmdump exits when an error is logged during start-up, and the proxy must
            # keep passing Copilot traffic (and counting in /metrics) until the disk is fixed.
            self.errors.failed(
                "data_dir",
                f"cannot write to the data dir {os.path.abspath(settings.files.data_dir)}: {problem}",
                level=logging.WARNING,
            )
        self.start_metrics_server(settings.metrics, announce=False)  # the start-up summary says where it is

    def start_metrics_server(self, endpoint: MetricsEndpoint, announce: bool = True) -> None:
        self.stop_metrics_server()
        if endpoint.port == 0:
            return
        try:
            self.server = serve_metrics(
                self.prometheus.registry,
                endpoint.host,
                endpoint.port,
                basic_auth=endpoint.auth,
                certfile=endpoint.certfile or None,
                keyfile=endpoint.keyfile or None,
            )
        except OSError as e:
            # WARNING, not ERROR: mitmdump exits when an error is logged during start-up, and the proxy
            # must keep passing Copilot traffic without its metrics endpoint.
            self.errors.failed(
                "metrics_server",
                f"cannot serve /metrics on {endpoint.host}:{endpoint.port}: {e}",
                level=logging.WARNING,
            )
        else:
            if announce:
                auth = " (basic auth)" if self.server.auth else ""
                log.info("copilot-proxy-insight: /metrics on %s%s", self.server.url, auth)

    def stop_metrics_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def stop(self) -> None:
        """Stops the metrics server, exports what OTel holds (bounded), drains the writer, closes the sinks."""
        self.running = False
        self.stop_metrics_server()
        # The loop is busy stopping: the scanner reports what it still holds directly, then ends.
        self.scanner.post = _call
        self.scanner.stop()
        otel = self.dispatcher.replace("otel", None)
        if otel is not None:
            otel.close()  # returns within its close timeout even when the collector is away
        self.teams.stop()
        if self.writer.stop():
            self.dispatcher.close()
        # else: a write never returned (a hung mount): closing the file it holds would hang the stop too
        self.lock.release()


def _place(files: Files) -> tuple[Path, str]:
    return files.data_dir, files.instance_id


def _call(fn: Callable[[], None]) -> None:
    fn()


def _loop_post() -> Callable[[Callable[[], None]], None]:
    """How the scanner thread hands results to the event loop: call_soon_threadsafe on the running loop
    (sinks run on the loop only); without a running loop (tests driving the hooks), a direct call."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _call

    def post(fn: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop closed under the scanner (shutdown)
            return

    return post
