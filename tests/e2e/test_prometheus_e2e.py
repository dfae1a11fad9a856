"""End-to-end: a real Prometheus scrapes the real proxy; every dashboard query and the alert rules run on known traffic.

mitmdump with the addon sits in front of the fake Copilot backend and serves /metrics on a free port.
A Prometheus 2.x server (scrape and evaluation interval 1s, the shipped alerts/copilot-rules.yaml)
scrapes it as job `copilot-proxy-insight`. The traffic runs twice: phase A stands for "the proxy has
been running" (it creates every series, so that `increase()` sees phase B whole: a series' first
sample is never counted as an increase), phase B is what the dashboards are checked against. Both
phases are the same plan with fresh request ids: two users, three editors plus one unrecognised
editor (folded into `other`), completions including a speculative and an empty one, agent turns with
a tool step and the follow-up suggestions, a next edit, a token exchange, telemetry, and failures:
alice is rate limited twice (429) and refused once for quota (402),
bob gets a 503. Phase B adds one wrong proxy password (407).

Every panel, annotation and variable query of dashboards/*.json is evaluated through
/api/v1/query at the timestamp of the last scrape, with `$__range` and `$__rate_interval` set to
exactly the span from the scrape that closed phase A to that last scrape. Range selectors of
Prometheus 2.x include both ends, so the first and last samples sit on the window's edges, nothing
is extrapolated, and `increase()` / `rate()` give exact numbers to compare with what was sent
(Prometheus 3 made range selectors left-open: there the window would need to start 1 ms earlier).
Queries of recording rules and ALERTS are evaluated once every rule group has evaluated the last
scrape, at the current time. The rules must load and evaluate without error, and the per-user 429/402
alerts (and the per-kind ones) must be pending for alice; their `for:` is minutes, so none fires.
"""

from __future__ import annotations

import calendar
import contextlib
import math
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.cli import RUNBOOK_BASE
from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, ProcessDied, free_port, proxy_client, send, wait_for
from tests.e2e.test_e2e import (
    NEOVIM,
    PASSWORDS,
    VSCODE,
    WRONG_PASSWORD,
    Call,
    expected_initiator,
    expected_model_calls,
    expected_requests,
    expected_skipped,
    expected_tokens,
    parse_metrics,
    run_traffic,
    scrape,
    start_proxy,
    user_plan,
    variant,
    write_htpasswd,
)
from tests.test_alerts import RULES_FILE, load_rules, metric_names, recording_rules
from tests.test_dashboards import dashboards, promql_queries, variable_query

pytestmark = pytest.mark.e2e

S = samples
JOB = "copilot-proxy-insight"
KAKOUNE = "kakoune"  # a client whose editor is outside the bounded set: counted as editor="other"
CHAT_KINDS = frozenset({"chat", "chat_agent", "chat_panel", "chat_edits", "chat_inline"})
USAGE, PERF, HEALTH = "copilot-usage.json", "copilot-performance.json", "copilot-exporter-health.json"
DEADLINE = 30.0  # seconds for any one condition (the machine may be busy with other tests)

_NO_GOVERNANCE_TRAFFIC = (
    "the usage traffic plants no credentials, skips no scan and uses no MCP server (the governance panels are "
    "checked in tests/e2e/test_governance_e2e.py and, against catalogue series, in tests/test_dashboards.py)"
)
# Panels (file, where) that may legitimately return nothing for this traffic, with the reason.
ALLOWED_EMPTY: dict[tuple[str, str], str] = {
    (
        "copilot-cost.json",
        "panel 'Rate-limit window left' A",
    ): "no sample answer carries x-usage-ratelimit-* headers (tests/test_quota.py and the cost e2e cover them)",
    (
        "copilot-exporter-health.json",
        "panel 'Firing Copilot alerts' A",
    ): "no alert can fire within a test of seconds (the shortest `for:` is 5m); the same query with "
    'alertstate="pending" is required to return the per-user alerts',
    (
        "copilot-performance.json",
        "annotation 'Copilot alerts'",
    ): "same as the exporter-health table: nothing fires before its `for:`",
    (
        "copilot-exporter-health.json",
        "annotation 'Copilot alerts'",
    ): "same as the exporter-health table: nothing fires before its `for:`",
    (
        "copilot-exporter-health.json",
        "panel 'Exporter errors by component' A",
    ): "the traffic causes no internal failure; copilot_exporter_errors_total is required to have no non-zero series",
    ("copilot-acceptance.json", "annotation 'Copilot alerts'"): "same as the exporter-health table",
    **{
        ("copilot-acceptance.json", f"panel {panel}"): "this traffic's one telemetry sample has no rejection, survival "
        "check, chat edit or bad envelope, and repeats its suggestion ids in phase B (deduplicated, so the 1h ratio "
        "has nothing new); tests/e2e/test_acceptance_prometheus_e2e.py checks these panels with traffic that has them"
        for panel in (
            "'Chat and agent edit decisions' A",
            "'Code still in file' A",
            "'Recorded acceptance ratio (1h)' A",
            "'Shown, accepted and rejected' C",
            "'Telemetry events by store' B",
        )
    },
    ("copilot-teams.json", "panel 'Completion acceptance by team' A"): "phase B repeats phase A's suggestion ids "
    "(deduplicated: nothing shown in the range); tests/e2e/test_acceptance_prometheus_e2e.py checks this panel",
    ("copilot-governance.json", "panel 'MCP requests per user' A"): _NO_GOVERNANCE_TRAFFIC,
    ("copilot-governance.json", "panel 'MCP tool calls by server' A"): _NO_GOVERNANCE_TRAFFIC,
    ("copilot-governance.json", "panel 'Secret scans skipped' A"): _NO_GOVERNANCE_TRAFFIC,
    ("copilot-governance.json", "panel 'Secrets by user and type' A"): _NO_GOVERNANCE_TRAFFIC,
    ("copilot-governance.json", "panel 'Secrets detected by type' A"): _NO_GOVERNANCE_TRAFFIC,
}

FAILURES: dict[int, tuple[tuple[tuple[str, str], ...], bytes]] = {
    429: (
        (("Content-Type", "application/json"), ("Retry-After", "60")),
        b'{"error":{"message":"Sorry, you have been rate-limited. Please wait a moment before trying again.",'
        b'"code":"rate_limited"}}',
    ),
    402: (
        (("Content-Type", "application/json"),),
        b'{"error":{"message":"You have exceeded your premium request allowance.","code":"quota_exceeded"}}',
    ),
    503: (
        (("Content-Type", "application/json"),),
        b'{"error":{"message":"The service is temporarily unavailable.","code":"service_unavailable"}}',
    ),
}


# ---------------------------------------------------------------------------------------------------
# Traffic


def failed(call: Call, status: int) -> Call:
    """The call answered with an error status: never counted, no tokens, still a model call."""
    headers, body = FAILURES[status]
    ex = call.exchange
    expected = dict(
        ex.expected,
        counted=False,
        skip_reason="http_error",
        input_tokens=None,
        output_tokens=None,
        streamed=False,
        status=status,
    )
    return replace(
        call, exchange=replace(ex, status=status, response_headers=headers, response_body=body, expected=expected)
    )


def unrecognised_editor(call: Call) -> Call:
    """A Neovim-style language-server client whose Editor-Version names an editor outside the bounded set."""
    ex = call.exchange
    rename = {"editor-version": "Kakoune/2024.05.18", "editor-plugin-version": "kak-copilot/0.4.0"}
    headers = tuple((k, rename.get(k.lower(), v)) for k, v in ex.request_headers)
    expected = dict(ex.expected, editor="other", editor_version="Kakoune/2024.05.18", plugin="kak-copilot/0.4.0")
    return replace(call, client=KAKOUNE, exchange=replace(ex, request_headers=headers, expected=expected))


def phase_calls() -> list[Call]:
    """One phase of traffic (fresh request and interaction ids every time)."""
    alice = user_plan("alice", vscode=2, jetbrains=1, neovim=1, turns=1)
    alice += [
        failed(Call("alice", VSCODE, variant(S.VSCODE_AGENT_TURN, str(uuid.uuid4()))), code) for code in (429, 429, 402)
    ]
    bob = user_plan("bob", vscode=1, jetbrains=2, neovim=1, turns=2)
    bob += [
        failed(Call("bob", NEOVIM, variant(S.NEOVIM_COMPLETION)), 503),
        unrecognised_editor(Call("bob", NEOVIM, variant(S.NEOVIM_COMPLETION))),
    ]
    return alice + bob


def status(call: Call) -> int:
    return int(call.expected.get("status", 200))


@dataclass(frozen=True)
class Expected:
    """What one phase of calls must show on the dashboards (counts, not rates)."""

    calls: list[Call]

    @property
    def requests(self) -> Counter[tuple[str, str, str, str]]:  # (user, editor, language, kind)
        return expected_requests(self.calls)

    def requests_by(self, *keys: str, where: Callable[[dict[str, str]], bool] = lambda _: True) -> Counter[Any]:
        out: Counter[Any] = Counter()
        for (user, editor, language, kind), n in self.requests.items():
            labels = {"user": user, "editor": editor, "language": language, "kind": kind}
            if where(labels):
                out[tuple(labels[k] for k in keys) if len(keys) != 1 else labels[keys[0]]] += n
        return out

    @property
    def model_calls(self) -> Counter[tuple[str, str, str, str]]:  # (user, kind, model, initiator)
        return expected_model_calls(self.calls)

    @property
    def tokens(self) -> Counter[tuple[str, str, str, str]]:  # (user, kind, model, type)
        return expected_tokens(self.calls)

    @property
    def skipped(self) -> Counter[tuple[str, str]]:  # (kind, reason)
        return expected_skipped(self.calls)

    @property
    def responses(self) -> Counter[tuple[str, str]]:  # (kind, code)
        return Counter((c.expected["kind"], str(status(c))) for c in self.calls)

    @property
    def user_errors(self) -> Counter[tuple[str, str, str]]:  # (user, kind, code)
        return Counter((c.user, c.expected["kind"], str(status(c))) for c in self.calls if status(c) >= 400)


def project(counter: Mapping[Any, int], *positions: int) -> Counter[Any]:
    """Sum a counter keyed by label tuples onto some of the positions (one position: plain keys)."""
    out: Counter[Any] = Counter()
    for key, n in counter.items():
        out[key[positions[0]] if len(positions) == 1 else tuple(key[p] for p in positions)] += n
    return out


def exporter_totals(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, _labels, value in parse_metrics(text):
        totals[name] = totals.get(name, 0.0) + value
    return totals


def wait_exporter(proxy: Mitmdump, want: Mapping[str, float]) -> None:
    """Until /metrics shows every total in `want` (each call's counters are updated one after another)."""

    def done() -> bool:
        totals = exporter_totals(scrape(proxy.metrics_url))
        return all(totals.get(name, 0.0) == value for name, value in want.items())

    proxy.wait_for(done, DEADLINE, f"/metrics to reach {dict(want)}")


def totals_after(phases: Sequence[Expected], auth_failures: int) -> dict[str, float]:
    calls = [c for p in phases for c in p.calls]
    e = Expected(calls)
    return {
        "copilot_responses_total": float(len(calls)),
        "copilot_requests_total": float(sum(e.requests.values())),
        "copilot_model_calls_total": float(sum(e.model_calls.values())),
        "copilot_tokens_total": float(sum(e.tokens.values())),
        "copilot_user_errors_total": float(sum(e.user_errors.values())),
        "copilot_proxy_auth_failures_total": float(auth_failures),
    }


# ---------------------------------------------------------------------------------------------------
# Prometheus


class PromQLError(AssertionError):
    """The Prometheus HTTP API answered with an error."""


class Prometheus:
    """A `prometheus` server on 127.0.0.1 (free port, storage in `tmp_dir`) scraping `targets` as job
    `copilot-proxy-insight` every `interval`, evaluating `rule_files` at the same interval."""

    def __init__(self, tmp_dir: Path, targets: Sequence[str], rule_files: Sequence[Path], interval: str = "1s") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not on PATH: this test must run a real Prometheus server")
        self.binary = binary
        self.tmp_dir = tmp_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_dir / "prometheus.yml"
        self.log_path = tmp_dir / "prometheus.log"
        self.config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
            ],
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._log: Any = None
        self._client = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    def start(self) -> Prometheus:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.tmp_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp_dir,
        )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ProcessDied(f"prometheus exited; log:\n{self.log_text()[-4000:]}")

    def wait_ready(self) -> None:
        def ready() -> bool:
            self._alive()
            return self._client.get("/-/ready").status_code == 200

        wait_for(ready, DEADLINE, f"prometheus to be ready on {self.url}", interval=0.1)

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        def check() -> Any:
            self._alive()
            return condition()

        return wait_for(check, DEADLINE, what, interval=0.1)

    def api(self, path: str, **params: Any) -> Any:
        """POST to /api/v1/<path>; the `data` of a successful answer, PromQLError otherwise."""
        r = self._client.post(f"/api/v1/{path}", data=params)
        body = r.json()
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {r.status_code} {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def get(self, path: str, **params: Any) -> Any:
        r = self._client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {r.status_code} {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result as a list of {metric, value} (scalars become one unlabelled sample)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for a clean shutdown (SIGKILL after `timeout`)."""
        proc = self.proc
        if proc is not None and self.returncode is None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            self.returncode = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self._client.close()
        return self.returncode


def last_scrape_after(prom: Prometheus, after: float) -> int:
    """Milliseconds timestamp of a successful scrape that started after `after` (a time.time())."""

    def scraped() -> int | None:
        # timestamp() of a plain selector is the sample's own timestamp (of anything else: the query time).
        result = prom.query(f'timestamp(up{{job="{JOB}"}})')
        if len(result) != 1:
            return None
        at = float(result[0]["value"][1])
        up = prom.query(f'up{{job="{JOB}"}}', at)
        if at <= after or [float(s["value"][1]) for s in up] != [1.0]:
            return None
        return round(at * 1000)

    found: int = prom.wait(scraped, "a scrape of the exporter after the traffic")
    return found


# ---------------------------------------------------------------------------------------------------
# Dashboards: Grafana variable substitution


_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")
_PLAIN = re.compile(r"[\w.-]+")


def grafana_globals(window_ms: int) -> dict[str, str]:
    """Grafana's global variables for a time range of `window_ms` ending at the query time."""
    return {
        "__rate_interval": f"{window_ms}ms",
        "__range": f"{window_ms}ms",
        "__interval": "1s",
        "__auto": "1s",
        "__range_s": str(window_ms // 1000),
        "__range_ms": str(window_ms),
        "__interval_ms": "1000",
    }


def substitute(expr: str, selected: Mapping[str, Sequence[str] | None], window_ms: int) -> str:
    """Grafana's interpolation for Prometheus: None selects All (allValue `.*`); one value as is; several as
    `(a|b)`. Values are plain words here, so the regex escaping Grafana applies changes nothing."""
    globals_ = grafana_globals(window_ms)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        if name in globals_:
            return globals_[name]
        assert name in selected, f"undefined variable ${name} in {expr!r}"
        values = selected[name]
        if values is None:
            return ".*"
        assert all(_PLAIN.fullmatch(v) for v in values), values
        return values[0] if len(values) == 1 else "(" + "|".join(values) + ")"

    return _VARIABLE.sub(value, expr)


ALL: dict[str, Sequence[str] | None] = {
    "user": None,
    "editor": None,
    "language": None,
    "kind": None,
    "instance": None,
    "job": None,
    "team": None,
    "team_users": None,
}
# Dashboards with a per-user view, filtered by team through $team and the hidden $team_users.
TEAM_FILTERED = ("copilot-usage.json", "copilot-acceptance.json", "copilot-cost.json", "copilot-governance.json")
FRONTEND: dict[str, Sequence[str] | None] = {**ALL, "team": ["frontend"]}
# A concrete selection on the usage dashboard: bob's Neovim Lua completions.
BOB_NEOVIM_LUA: dict[str, Sequence[str] | None] = {
    "team": None,
    "team_users": None,
    "user": ["bob"],
    "editor": ["neovim"],
    "language": ["lua"],
    "kind": ["completion"],
}


@dataclass
class Answer:
    """One dashboard query as evaluated: the PromQL sent, and its result or error."""

    file: str
    where: str
    expr: str
    instant: bool
    result: list[dict[str, Any]] | None = None
    error: str | None = None
    range_error: str | None = None


def reads_rule_output(expr: str) -> bool:
    """True for queries of recording rules or ALERTS: series the rule evaluations write, not the scrapes."""
    return bool(metric_names(expr) & (set(recording_rules()) | {"ALERTS"}))


def run_dashboard_queries(
    prom: Prometheus, at_ms: int, window_ms: int, selected: Mapping[str, Sequence[str] | None], files: set[str]
) -> dict[tuple[str, str], Answer]:
    """Every query of `files` at the last scrape (`at_ms`); those reading rule output at the current time,
    when the rules have evaluated the last scrape (a rule evaluation is not aligned with the scrapes)."""
    answers: dict[tuple[str, str], Answer] = {}
    at = at_ms / 1000
    for file, where, template, instant in promql_queries():
        if file not in files:
            continue
        expr = substitute(template, selected, window_ms)
        answer = Answer(file, where, expr, instant)
        try:
            answer.result = prom.query(expr, None if reads_rule_output(expr) else at)
        except PromQLError as e:
            answer.error = str(e)
        if not instant and not where.startswith("variable"):
            # Grafana runs time series panels as range queries: over the whole window, one step a second.
            try:
                prom.api("query_range", query=expr, start=f"{at - window_ms / 1000:.3f}", end=f"{at:.3f}", step="1")
            except PromQLError as e:
                answer.range_error = str(e)
        answers[(file, where)] = answer
    return answers


def variable_options(
    prom: Prometheus, file: str, selected: Mapping[str, Sequence[str] | None], at_ms: int, window_ms: int
) -> dict[str, set[str]]:
    """What Grafana offers for each query variable of `file`: `label_values(<selector>, <label>)` becomes
    /api/v1/label/<label>/values?match[]=<selector> over the dashboard's range, earlier variables substituted."""
    options: dict[str, set[str]] = {}
    at = at_ms / 1000
    for var in dashboards()[file]["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query(var).strip())
        assert match, var
        selector = substitute(match.group(1), selected, window_ms)
        found = prom.get(
            f"label/{match.group(2)}/values",
            **{"match[]": selector, "start": f"{at - window_ms / 1000:.3f}", "end": f"{at:.3f}"},
        )
        options[var["name"]] = set(found)
    return options


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    phase_a: Expected
    phase_b: Expected
    window_ms: int
    at_ms: int
    answers: dict[tuple[str, str], Answer]
    bob_answers: dict[tuple[str, str], Answer]
    team_users: dict[str, set[str]]
    team_answers: dict[tuple[str, str], Answer]
    variable_values: dict[tuple[str, str], dict[str, set[str]]]
    pending_panel: list[dict[str, Any]]
    raw: dict[str, list[dict[str, Any]]]
    rules: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    alert_exprs: dict[str, list[dict[str, Any]]]
    mitmdump_returncode: int | None
    mitmdump_log: str
    prometheus_returncode: int | None
    prometheus_log: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


PER_USER_ALERTS = {"CopilotUserRateLimited": "429", "CopilotUserQuotaExhausted": "402"}
# Per-kind alerts whose expressions the traffic makes true (alice's 429s and 402 are 3 of 9 chat_agent calls).
PER_KIND_ALERTS = {"CopilotRateLimited": "429", "CopilotQuotaExhausted": "402"}


def active_alerts(prom: Prometheus) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = prom.get("alerts")["alerts"]
    return alerts


def expected_alerts_active(alerts: list[dict[str, Any]]) -> bool:
    seen = {(a["labels"]["alertname"], a["labels"].get("user"), a["labels"].get("kind")) for a in alerts}
    per_user = all((name, "alice", None) in seen for name in PER_USER_ALERTS)
    per_kind = all((name, None, "chat_agent") in seen for name in PER_KIND_ALERTS)
    return per_user and per_kind


def rules_evaluated(prom: Prometheus, after: float) -> list[dict[str, Any]] | None:
    """The rule groups, once every group has started an evaluation after `after` (a time.time())."""
    groups: list[dict[str, Any]] = prom.get("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    if len(rules) != len(load_rules()) or any(r.get("health") == "unknown" for r in rules):
        return None
    for group in groups:
        # RFC 3339 with nanoseconds, UTC: compare as seconds since the epoch.
        stamp = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", group["lastEvaluation"])
        assert stamp, group["lastEvaluation"]
        seconds = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%dT%H:%M:%S")) + float(
            f"0.{stamp.group(2) or 0}"
        )
        if seconds <= after:
            return None
    return groups


def start_team_proxy(
    backend: FakeCopilotBackend, tmp: Path, htpasswd: Path, metrics_port: int, others: Sequence[str]
) -> Any:
    """The proxy with a team map: alice in `backend`, bob in `frontend`, each with four members who send
    nothing (the minimum size); `others` are alice's team mates, bob's are `others` with a `2` suffix."""
    team_map = tmp / "teams.csv"
    members = {"backend": ("alice", *others), "frontend": ("bob", *(f"{u}2" for u in others))}
    team_map.write_text("".join(f"{u},{team}\n" for team, users in members.items() for u in users))
    return start_proxy(
        backend, tmp / "mitmdump", tmp / "data", htpasswd, copilot_metrics_port=metrics_port, copilot_team_map=team_map
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    started = time.monotonic()
    timings: dict[str, float] = {}
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
    metrics_port = free_port()
    phase_a, phase_b = Expected(phase_calls()), Expected(phase_calls())
    prom = Prometheus(tmp / "prometheus", [f"127.0.0.1:{metrics_port}"], [RULES_FILE]).start()
    try:
        with FakeCopilotBackend() as backend:
            # Teams for the Copilot / Teams dashboard and the $team filters: alice in `backend`, bob in
            # `frontend`, each of the minimum size (the other members send nothing); carol sends nothing.
            proxy = start_team_proxy(backend, tmp, htpasswd, metrics_port, ("carol", "dave", "erin", "frank"))
            try:
                prom.wait_ready()
                timings["started"] = time.monotonic() - started

                # Phase A: every series comes into existence; Prometheus scrapes the result.
                run_traffic(backend, proxy, phase_a.calls)
                # ... and alice's and bob's team series, which the writer publishes a batch after their counters.
                wait_exporter(proxy, {**totals_after([phase_a], auth_failures=0), "copilot_user_team_info": 2.0})
                start_ms = last_scrape_after(prom, time.time())
                timings["phase_a"] = time.monotonic() - started

                # Phase B, plus one wrong proxy password (407, never reaches the backend).
                with (
                    proxy_client(proxy.port, "alice", WRONG_PASSWORD, proxy.ca_cert_path) as client,
                    pytest.raises(httpx.ProxyError, match=r"^407 "),
                ):
                    send(client, variant(S.VSCODE_TOKEN_EXCHANGE))
                run_traffic(backend, proxy, phase_b.calls)
                wait_exporter(proxy, totals_after([phase_a, phase_b], auth_failures=1))
                at_ms = last_scrape_after(prom, time.time())
                seen = time.time()  # the last scrape is in the TSDB now
                window_ms = at_ms - start_ms
                timings["phase_b"] = time.monotonic() - started

                # Every rule evaluated after the last scrape; the 429/402 alerts active (pending: `for:` is minutes).
                groups = prom.wait(lambda: rules_evaluated(prom, seen), "every rule group to evaluate the last scrape")
                with contextlib.suppress(TimeoutError):
                    prom.wait(lambda: expected_alerts_active(active_alerts(prom)), "the 429/402 alerts")
                alerts = active_alerts(prom)
                timings["alerts"] = time.monotonic() - started

                files = set(dashboards())
                answers = run_dashboard_queries(prom, at_ms, window_ms, ALL, files)
                bob_answers = run_dashboard_queries(prom, at_ms, window_ms, BOB_NEOVIM_LUA, {"copilot-usage.json"})
                # Team frontend: what Grafana would ask, $team_users expanded to the users it offers.
                team_users = {
                    file: variable_options(prom, file, FRONTEND, at_ms, window_ms)["team_users"]
                    for file in TEAM_FILTERED
                }
                team_answers: dict[tuple[str, str], Answer] = {}
                for file, users in team_users.items():
                    selected = {**FRONTEND, "team_users": sorted(users)}
                    team_answers |= run_dashboard_queries(prom, at_ms, window_ms, selected, {file})
                variable_values = {
                    (file, selection): variable_options(prom, file, selected, at_ms, window_ms)
                    for file, selection, selected in (
                        (USAGE, "all", ALL),
                        (USAGE, "bob", BOB_NEOVIM_LUA),
                        (USAGE, "frontend", FRONTEND),
                        (HEALTH, "all", ALL),
                        (PERF, "all", ALL),
                    )
                }
                # The "Firing Copilot alerts" table, asking for pending alerts instead.
                (firing,) = (
                    a.expr for (f, w), a in answers.items() if (f, w) == (HEALTH, "panel 'Firing Copilot alerts' A")
                )
                assert 'alertstate="firing"' in firing
                pending_panel = prom.query(firing.replace('alertstate="firing"', 'alertstate="pending"'))
                at = at_ms / 1000
                raw = {
                    name: prom.query(name, at)
                    for name in (
                        "copilot_exporter_errors_total",
                        "copilot_user_errors_total",
                        "copilot_requests_total",
                        "copilot_nano_aiu_total",
                    )
                }
                rules = {r["alert"]: r["expr"] for r in load_rules() if "alert" in r}
                alert_exprs = {name: prom.query(rules[name]) for name in (*PER_USER_ALERTS, *PER_KIND_ALERTS)}
                timings["queries"] = time.monotonic() - started
            finally:
                mitmdump_returncode = proxy.stop()
    finally:
        prometheus_returncode = prom.stop()
    yield Run(
        phase_a=phase_a,
        phase_b=phase_b,
        window_ms=window_ms,
        at_ms=at_ms,
        answers=answers,
        bob_answers=bob_answers,
        team_users=team_users,
        team_answers=team_answers,
        variable_values=variable_values,
        pending_panel=pending_panel,
        raw=raw,
        rules=groups,
        alerts=alerts,
        alert_exprs=alert_exprs,
        mitmdump_returncode=mitmdump_returncode,
        mitmdump_log=proxy.log_text(),
        prometheus_returncode=prometheus_returncode,
        prometheus_log=prom.log_text(),
        seconds=time.monotonic() - started,
        timings=timings,
    )


# ---------------------------------------------------------------------------------------------------
# Reading answers


def answer(run: Run, file: str, where: str, bob: bool = False) -> Answer:
    found = (run.bob_answers if bob else run.answers).get((file, where))
    assert found is not None, f"no query {where} in {file}"
    assert found.error is None, found.error
    return found


def vector(run: Run, file: str, where: str, *labels: str, bob: bool = False) -> dict[Any, float]:
    """A query's result as label value(s) -> value ('' when a label is absent)."""
    out: dict[Any, float] = {}
    for sample in answer(run, file, where, bob).result or []:
        key = tuple(sample["metric"].get(label, "") for label in labels)
        out[key[0] if len(labels) == 1 else key] = float(sample["value"][1])
    return out


def scalar(run: Run, file: str, where: str, bob: bool = False) -> float:
    result = answer(run, file, where, bob).result or []
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def per_minute(run: Run, counts: Mapping[Any, float]) -> dict[Any, float]:
    return {key: n * 60_000 / run.window_ms for key, n in counts.items() if n}


def per_second(run: Run, counts: Mapping[Any, float]) -> dict[Any, float]:
    return {key: n * 1000 / run.window_ms for key, n in counts.items() if n}


def assert_close(got: Mapping[Any, float], want: Mapping[Any, float], what: str) -> None:
    """Rates and ratios: floating point only (no extrapolation happens with the window on two samples)."""
    assert set(got) == set(want), f"{what}: {got} != {want}"
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), f"{what} {key}: {got[key]} != {value}"


# ---------------------------------------------------------------------------------------------------
# Tests


def test_stack_ran_and_stopped_cleanly(run: Run) -> None:
    assert run.mitmdump_returncode == 0, run.mitmdump_log[-3000:]
    for bad in ("Addon error", "Traceback", " failed: "):
        assert bad not in run.mitmdump_log, run.mitmdump_log[-3000:]
    assert run.prometheus_returncode == 0, run.prometheus_log[-3000:]
    # The window spans several scrapes (1s apart): rate() and increase() have samples to work with.
    assert run.window_ms >= 900, run.window_ms
    assert run.seconds < 60, run.timings


def test_the_traffic_is_what_the_issue_asks_for(run: Run) -> None:
    calls = run.phase_b.calls
    assert {c.user for c in calls} == {"alice", "bob"}
    assert {c.client for c in calls} == {"vscode", "jetbrains", "neovim", KAKOUNE}
    names = {c.exchange.name for c in calls}
    assert {
        "vscode_completion_speculative",
        "vscode_completion_empty",
        "vscode_agent_turn",
        "vscode_agent_step",
        "vscode_agent_suggestions",
        "vscode_next_edit",
        "telemetry",
    } <= names
    assert run.phase_b.user_errors == {
        ("alice", "chat_agent", "429"): 2,
        ("alice", "chat_agent", "402"): 1,
        ("bob", "completion", "503"): 1,
    }


def test_every_rule_loads_and_evaluates_without_error(run: Run) -> None:
    doc = yaml.safe_load(RULES_FILE.read_text())
    assert sorted(g["name"] for g in run.rules) == sorted(g["name"] for g in doc["groups"])
    for group in run.rules:
        assert not group.get("lastError"), group
        assert group["file"] == str(RULES_FILE)
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule.get("name"), rule.get("lastError"))
            assert not rule.get("lastError"), rule


def test_per_user_alerts_are_active_for_the_right_user(run: Run) -> None:
    for name, code in PER_USER_ALERTS.items():
        # The alert expression names alice, and only her (bob's 503 is neither a 429 nor a 402).
        assert [s["metric"] for s in run.alert_exprs[name]] == [{"user": "alice", "code": code}], name
        active = [a for a in run.alerts if a["labels"]["alertname"] == name]
        assert len(active) == 1, (name, run.alerts)
        alert = active[0]
        # `for: 15m` cannot elapse in a test: pending, with the user, severity and rendered description.
        assert alert["state"] in ("pending", "firing"), alert
        assert alert["labels"] == {"alertname": name, "user": "alice", "code": code, "severity": "warning"}
        assert alert["annotations"]["description"].startswith(f"alice has been answered {code} ")
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
    for name, code in PER_KIND_ALERTS.items():
        assert {s["metric"]["kind"] for s in run.alert_exprs[name]} == {"chat_agent"}, name
        active = [a for a in run.alerts if a["labels"]["alertname"] == name]
        assert [(a["labels"]["kind"], a["labels"]["code"]) for a in active] == [("chat_agent", code)], run.alerts
    # The exporter-health "Firing Copilot alerts" query, with pending instead of firing, lists them.
    pending = {(s["metric"]["alertname"], s["metric"].get("user", "")) for s in run.pending_panel}
    assert {("CopilotUserRateLimited", "alice"), ("CopilotUserQuotaExhausted", "alice")} <= pending


def test_every_dashboard_query_evaluates_and_returns_data(run: Run) -> None:
    queries = list(promql_queries())
    assert len(run.answers) == len(queries) > 40
    errors = [
        f"{a.file} {a.where}: {a.error or a.range_error}" for a in run.answers.values() if a.error or a.range_error
    ]
    assert not errors, "\n".join(errors)
    empty = sorted(key for key, a in run.answers.items() if not a.result)
    assert empty == sorted(ALLOWED_EMPTY), f"empty: {empty}\nallowed: {sorted(ALLOWED_EMPTY)}\n" + "\n".join(
        f"{k}: {run.answers[k].expr}" for k in empty if k not in ALLOWED_EMPTY
    )
    # The exporter really had no internal failure (so an empty errors panel is the right answer).
    assert all(float(s["value"][1]) == 0 for s in run.raw["copilot_exporter_errors_total"])
    # Histogram quantiles: NaN only where a kind had no observation in a bucket range; each has numbers.
    for (file, where), a in run.answers.items():
        if "histogram_quantile" in a.expr:
            values = [float(s["value"][1]) for s in a.result or []]
            assert any(math.isfinite(v) and v > 0 for v in values), (file, where, a.result)


def test_variables_offer_the_traffic_labels(run: Run) -> None:
    """The chained variables, as Grafana asks Prometheus for their options (All, then bob's Neovim Lua)."""
    editors = {"vscode", "jetbrains-iu", "neovim", "other"}
    assert run.variable_values[(USAGE, "all")] == {
        "team": {"backend", "frontend"},
        "user": {"alice", "bob"},
        "team_users": {"alice", "bob"},
        "editor": editors,
        "language": {"python", "java", "lua", "unknown"},
        "kind": {"completion", "chat_agent", "next_edit"},
    }
    assert run.variable_values[(USAGE, "bob")] == {
        "team": {"backend", "frontend"},
        "user": {"alice", "bob"},
        "team_users": {"alice", "bob"},
        "editor": editors,  # bob uses all four
        "language": {"lua"},  # of bob's Neovim requests
        "kind": {"completion"},
    }
    frontend = run.variable_values[(USAGE, "frontend")]
    assert (frontend["team"], frontend["user"], frontend["team_users"]) == ({"backend", "frontend"}, {"bob"}, {"bob"})
    (instance,) = run.variable_values[(HEALTH, "all")]["instance"]
    assert instance.startswith("127.0.0.1:")
    assert run.variable_values[(PERF, "all")]["kind"] == set(project(run.phase_b.responses, 0))


def test_concrete_variable_values_evaluate_and_filter(run: Run) -> None:
    """user=bob, editor=neovim, language=lua, kind=completion on the usage dashboard."""
    errors = [f"{a.where}: {a.error or a.range_error}" for a in run.bob_answers.values() if a.error or a.range_error]
    assert not errors, "\n".join(errors)
    b = run.phase_b
    selected = {"user": "bob", "editor": "neovim", "language": "lua", "kind": "completion"}
    assert b.requests_by("user", where=lambda x: x == selected) == {"bob": 1}
    assert scalar(run, USAGE, "panel 'Completions' A", bob=True) == 1
    assert scalar(run, USAGE, "panel 'Chat turns' A", bob=True) == 0  # `or vector(0)`: nothing selected
    assert scalar(run, USAGE, "panel 'Active users' A", bob=True) == 1
    assert vector(run, USAGE, "panel 'Per-user summary' B", "user", bob=True) == {"bob": 1}
    assert vector(run, USAGE, "panel 'Per-user summary' A", "user", bob=True) == {}
    # Model calls, tokens and failed calls carry no editor or language: only user and kind filter them.
    bob_completion = project(b.model_calls, 0, 1)[("bob", "completion")]
    assert bob_completion == 8  # VS Code 3 (one speculative, one empty), JetBrains 2, Neovim 1, Kakoune 1, the 503
    assert vector(run, USAGE, "panel 'Per-user summary' C", "user", bob=True) == {"bob": bob_completion}
    assert vector(run, USAGE, "panel 'Failed calls by user, kind and code' A", "user", "kind", "code", bob=True) == {
        ("bob", "completion", "503"): 1
    }
    assert vector(run, USAGE, "panel 'Per-user summary' F", "user", bob=True) == {}  # bob was never rate limited


def test_team_panels_equal_the_traffic_through_the_info_join(run: Run) -> None:
    """alice is in `backend`, bob in `frontend` (copilot_user_team_info): each team panel is its member's."""
    b = run.phase_b
    teams = "copilot-teams.json"
    team_of = {"alice": "backend", "bob": "frontend"}

    def by_team(counts: Counter[tuple[str, str, str, str]]) -> dict[str, int]:
        return {team_of[user]: n for user, n in project(counts, 0).items()}

    assert vector(run, teams, "panel 'Interactions by team' A", "team") == by_team(b.requests)
    assert vector(run, teams, "panel 'Active users by team' A", "team") == {"backend": 1, "frontend": 1}
    assert vector(run, teams, "panel 'Model calls by team' A", "team") == by_team(b.model_calls)
    assert vector(run, teams, "panel 'Tokens by team' A", "team") == by_team(b.tokens)
    credits = {team_of[user]: n for user, n in vector(run, COST, "panel 'Top spenders' A", "user").items()}
    assert set(credits) == {"backend", "frontend"}
    assert_close(vector(run, teams, "panel 'AI credits by team' A", "team"), credits, "credits by team")


def _series(sample: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(sample["metric"].items()))


def test_team_filter_of_the_per_user_dashboards_keeps_only_the_teams_users(run: Run) -> None:
    """Team frontend on the usage, acceptance, cost and governance dashboards: $team_users is bob alone, and
    every per-user series of every panel is bob's, with the value it has with Team All."""
    assert run.team_users == {file: {"bob"} for file in TEAM_FILTERED}
    compared = 0
    for key, team in run.team_answers.items():
        assert team.error is None and team.range_error is None, (key, team.error or team.range_error)
        everyone = run.answers[key]
        per_user = [s for s in everyone.result or [] if "user" in s["metric"]]
        if not per_user or key[1].startswith("variable"):
            continue
        assert {s["metric"]["user"] for s in team.result or []} <= {"bob"}, key
        bobs = {_series(s): s["value"][1] for s in per_user if s["metric"]["user"] == "bob"}
        assert {_series(s): s["value"][1] for s in team.result or []} == bobs, key
        compared += 1
    assert compared >= 20  # per-user panels on all four dashboards
    b = run.phase_b
    usage = {k[1]: a for k, a in run.team_answers.items() if k[0] == USAGE}
    (completions,) = usage["panel 'Completions' A"].result or []
    assert float(completions["value"][1]) == b.requests_by("kind", where=lambda x: x["user"] == "bob")["completion"]


def test_usage_overview_and_per_user_numbers_equal_the_traffic(run: Run) -> None:
    b = run.phase_b
    completions = sum(b.requests_by("kind", where=lambda x: x["kind"] == "completion").values())
    chat_turns = sum(b.requests_by("kind", where=lambda x: x["kind"] in CHAT_KINDS).values())
    next_edits = sum(b.requests_by("kind", where=lambda x: x["kind"] == "next_edit").values())
    assert (completions, chat_turns, next_edits) == (9, 3, 2)  # spelled out once; the plan gives the same
    assert scalar(run, USAGE, "panel 'Active users' A") == 2
    assert scalar(run, USAGE, "panel 'Completions' A") == completions
    assert scalar(run, USAGE, "panel 'Chat turns' A") == chat_turns
    assert scalar(run, USAGE, "panel 'Next-edit suggestions' A") == next_edits
    assert scalar(run, USAGE, "panel 'Model calls' A") == sum(b.model_calls.values())
    assert scalar(run, USAGE, "panel 'Tokens' A") == sum(b.tokens.values())
    assert vector(run, USAGE, "panel 'Top users' A", "user") == b.requests_by("user")

    # The per-user summary, column by column.
    summary = "panel 'Per-user summary' {}"
    chat = b.requests_by("user", where=lambda x: x["kind"] in CHAT_KINDS)
    assert vector(run, USAGE, summary.format("A"), "user") == chat == {"alice": 1, "bob": 2}
    assert vector(run, USAGE, summary.format("B"), "user") == b.requests_by(
        "user", where=lambda x: x["kind"] == "completion"
    )
    assert vector(run, USAGE, summary.format("C"), "user") == project(b.model_calls, 0)
    assert vector(run, USAGE, summary.format("D"), "user") == project(b.tokens, 0)
    assert vector(run, USAGE, summary.format("E"), "user") == project(b.user_errors, 0) == {"alice": 3, "bob": 1}
    assert vector(run, USAGE, summary.format("F"), "user") == {"alice": 2}
    assert vector(run, USAGE, summary.format("G"), "user") == {"alice": 1}
    assert vector(run, USAGE, "panel 'Failed calls by user, kind and code' A", "user", "kind", "code") == b.user_errors
    tokens_by_user_model = {
        typ: {k: n for k, n in project(b.tokens, 0, 2, 3).items() if k[2] == typ} for typ in ("input", "output")
    }
    for ref, typ in (("A", "input"), ("B", "output")):
        got = vector(run, USAGE, f"panel 'Tokens by user and model' {ref}", "user", "model")
        assert got == {(u, m): n for (u, m, _t), n in tokens_by_user_model[typ].items()}, typ

    # Raw counters at the last scrape hold both phases: exactly twice phase B (the same plan twice).
    raw: dict[tuple[str, str], float] = {}
    for sample in run.raw["copilot_requests_total"]:
        key = (sample["metric"]["user"], sample["metric"]["kind"])
        raw[key] = raw.get(key, 0.0) + float(sample["value"][1])
    assert raw == {k: 2 * n for k, n in b.requests_by("user", "kind").items()}
    raw_errors = {
        (x["metric"]["user"], x["metric"]["kind"], x["metric"]["code"]): float(x["value"][1])
        for x in run.raw["copilot_user_errors_total"]
    }
    assert raw_errors == {k: 2 * n for k, n in b.user_errors.items()}


def test_usage_rates_equal_the_traffic(run: Run) -> None:
    b = run.phase_b
    completions = sum(b.requests_by("kind", where=lambda x: x["kind"] == "completion").values())
    chat = sum(b.requests_by("kind", where=lambda x: x["kind"] in CHAT_KINDS).values())
    assert_close(
        {
            "A": scalar(run, USAGE, "panel 'Completions and chat turns' A"),
            "B": scalar(run, USAGE, "panel 'Completions and chat turns' B"),
        },
        per_minute(run, {"A": completions, "B": chat}),
        "completions and chat turns",
    )
    assert scalar(run, USAGE, "panel 'Active users over time' A") == 2
    assert_close(
        vector(run, USAGE, "panel 'Interactions by kind' A", "kind"), per_minute(run, b.requests_by("kind")), "by kind"
    )
    assert_close(
        vector(run, USAGE, "panel 'Interactions by editor' A", "editor"),
        per_minute(run, b.requests_by("editor")),
        "by editor",
    )
    assert set(b.requests_by("editor")) == {"vscode", "jetbrains-iu", "neovim", "other"}
    assert_close(
        vector(run, USAGE, "panel 'Completions by language' A", "language"),
        per_minute(run, b.requests_by("language", where=lambda x: x["kind"] == "completion")),
        "completions by language",
    )
    assert_close(
        vector(run, USAGE, "panel 'Model calls by model' A", "model"),
        per_minute(run, project(b.model_calls, 2)),
        "by model",
    )
    assert_close(
        vector(run, USAGE, "panel 'Model calls by initiator' A", "initiator"),
        per_minute(run, project(b.model_calls, 3)),
        "by initiator",
    )
    assert set(project(b.model_calls, 3)) == {"user", "agent"}
    assert_close(
        vector(run, USAGE, "panel 'Tokens by model' A", "model", "type"),
        per_minute(run, project(b.tokens, 2, 3)),
        "tokens",
    )
    assert vector(run, USAGE, "panel 'Top users by tokens' A", "user") == project(b.tokens, 0)
    assert_close(
        vector(run, USAGE, "panel 'Failed calls by user and code' A", "user", "code"),
        per_minute(run, project(b.user_errors, 0, 2)),
        "failed calls by user and code",
    )


def test_performance_panels_equal_the_traffic(run: Run) -> None:
    b = run.phase_b
    by_kind = project(b.responses, 0)
    by_code = project(b.responses, 1)
    total = sum(by_code.values())
    assert_close(vector(run, PERF, "panel 'Requests by kind' A", "kind"), per_second(run, by_kind), "requests by kind")
    assert_close(
        vector(run, PERF, "panel 'Responses by code' A", "code"), per_second(run, by_code), "responses by code"
    )
    assert_close(
        vector(run, PERF, "panel 'Rate-limited (429) and quota-refused (402) by kind' A", "kind", "code"),
        per_second(run, {("chat_agent", "429"): 2, ("chat_agent", "402"): 1}),
        "429 and 402 by kind",
    )
    assert_close(
        vector(run, PERF, "panel 'Error ratio by code' A", "code"),
        {"429": 2 / total, "402": 1 / total, "5xx": 1 / total},
        "error ratio by code",
    )
    assert_close(
        vector(run, PERF, "panel '5xx ratio by kind' A", "kind"), {"completion": 1 / by_kind["completion"]}, "5xx ratio"
    )
    assert_close(
        vector(run, PERF, "panel 'Skipped requests by reason' A", "reason"),
        per_second(run, project(b.skipped, 1)),
        "skipped by reason",
    )
    assert set(project(b.skipped, 1)) == {
        "speculative",
        "empty_completion",
        "agent_step",
        "turn_followup",
        "not_interaction",
        "http_error",
    }
    assert_close(
        vector(run, PERF, "panel 'Skipped requests by kind' A", "kind"),
        per_second(run, project(b.skipped, 0)),
        "by kind",
    )
    for where in ("panel 'Average request duration by kind' A", "panel 'Request duration distribution' A"):
        assert vector(run, PERF, where, "kind", "le"), where
    # The recording rules the alerts read (5m windows: the whole test), per kind.
    ratios = vector(run, PERF, "panel 'Alert inputs by kind (last 5 minutes)' B", "kind")
    assert ratios["chat_agent"] > 0.02 and all(0 <= v <= 1 for v in ratios.values()), ratios
    assert set(vector(run, PERF, "panel 'Alert inputs by kind (last 5 minutes)' C", "kind")) == {"chat_agent"}
    assert set(vector(run, PERF, "panel 'Alert inputs by kind (last 5 minutes)' A", "kind")) == set(by_kind)


def test_exporter_health_panels(run: Run) -> None:
    assert vector(run, HEALTH, "panel 'Up' A", "job") == {JOB: 1}
    build = answer(run, HEALTH, "panel 'Build info' A").result or []
    assert len(build) == 1 and build[0]["metric"]["version"] and build[0]["metric"]["mitmproxy_version"]
    assert scalar(run, HEALTH, "panel 'Proxy auth failures' A") == pytest.approx(1000 / run.window_ms, rel=1e-9)
    assert scalar(run, HEALTH, "panel 'Proxy auth failures' B") >= 0
    overflows = vector(run, HEALTH, "panel 'Label overflows by label' A", "label")
    assert overflows.get("editor", 0) > 0, overflows  # the Kakoune client
    assert scalar(run, HEALTH, "panel 'Samples per scrape' A") > 100
    assert vector(run, HEALTH, "panel 'Users by editor' A", "editor") == {
        "vscode": 2,
        "jetbrains-iu": 2,
        "neovim": 2,
        "other": 1,
    }
    clients = set(vector(run, HEALTH, "panel 'Clients per user' A", "user", "editor"))
    assert clients == {(u, e) for u in ("alice", "bob") for e in ("vscode", "jetbrains-iu", "neovim")} | {
        ("bob", "other")
    }
    versions = vector(run, HEALTH, "panel 'Client versions in use' A", "editor", "editor_version")
    assert versions == {
        ("vscode", "1.111.0"): 2,
        ("jetbrains-iu", "243.22562.218"): 2,
        ("neovim", "0.11.2"): 2,
        ("other", "2024.05.18"): 1,  # Kakoune: the editor is folded, its version is kept
    }


def test_model_calls_include_failed_calls_and_agent_steps(run: Run) -> None:
    """The expectations above rely on these facts of the plan; spelled out so a changed sample is noticed."""
    b = run.phase_b
    failed_calls = [c for c in b.calls if status(c) >= 400]
    assert all(expected_initiator(c) == "user" for c in failed_calls)
    assert project(b.model_calls, 0, 1)[("alice", "chat_agent")] == 5  # a turn, its tool step, two 429s, a 402


COST = "copilot-cost.json"


def test_cost_panels_equal_the_scraped_credit_counters(run: Run) -> None:
    """Both phases are the same plan, so phase B spent half of what the counters hold at the end."""
    total: Counter[str] = Counter()
    server: Counter[str] = Counter()
    for sample in run.raw["copilot_nano_aiu_total"]:
        labels, value = sample["metric"], float(sample["value"][1])
        total[labels["user"]] += value
        if labels["source"] == "server":
            server[labels["user"]] += value
    assert set(total) == {"alice", "bob"} and all(total.values()) and sum(server.values())
    phase_b = {user: n / 2 / 1e9 for user, n in total.items()}
    assert_close(vector(run, COST, "panel 'Top spenders' A", "user"), phase_b, "top spenders")
    assert math.isclose(scalar(run, COST, "panel 'AI credits in range' A"), sum(phase_b.values()), rel_tol=1e-9)
    share = sum(server.values()) / sum(total.values())
    assert math.isclose(scalar(run, COST, "panel 'Server share' A"), share, rel_tol=1e-9)
    burn = {user: n * 3600 / (run.window_ms / 1000) for user, n in phase_b.items()}
    assert_close(vector(run, COST, "panel 'Burn rate by user' A", "user"), burn, "credits per hour")
    month = {user: n / 1e9 / 1900 for user, n in total.items()}  # month to date: both phases, Business allowance
    assert_close(vector(run, COST, "panel 'Month to date against allowance' A", "user"), month, "month to date")
