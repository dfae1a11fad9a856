"""End to end: completions, then their telemetry, from two users and three editors through a real mitmdump.

/metrics, the event log, the extended daily summary and a rebuild from the log must agree with the expected
shown / accepted / rejected / accepted lines per user, editor and language; the telemetry bytes the backend
receives are the bytes the client sent; the enhanced store's code reaches no output.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.rebuild import rebuild_both
from tests import samples as S
from tests import telemetry_samples as ts
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, proxy_client, send_timed
from tests.e2e.test_e2e import (
    HTTP2_CLIENTS,
    JETBRAINS,
    NEOVIM,
    VSCODE,
    Call,
    metric,
    parse_metrics,
    read_extended,
    read_log,
    scrape,
    start_proxy,
    variant,
    wait_until_counted,
    write_htpasswd,
)

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-Pw-7f3kQ9xLm2", "bob": "bob-Pw-2m8xZ4vRt6", "carol": "carol-Pw-9q2Lk4Tz8w"}
COMPLETIONS = {VSCODE: S.VSCODE_COMPLETION, JETBRAINS: S.JETBRAINS_COMPLETION, NEOVIM: S.NEOVIM_COMPLETION}
# (user, editor client, completions): two users with telemetry in three editors; carol sends none.
PLAN = (
    ("alice", VSCODE, 3),
    ("alice", JETBRAINS, 1),
    ("alice", NEOVIM, 2),
    ("bob", VSCODE, 1),
    ("bob", JETBRAINS, 3),
    ("bob", NEOVIM, 1),
    ("carol", NEOVIM, 2),
)
Key = tuple[str, str, str]  # user, editor label, language
FIELDS = ("shown", "accepted", "rejected", "chars", "lines")


@dataclass
class Expected:
    counts: dict[str, Counter[Key]]

    def add(self, key: Key, **n: int) -> None:
        for name, value in n.items():
            self.counts[name][key] += value


def _header(ex: S.Exchange, name: str) -> str:
    value = ex.header(name)
    assert value is not None, name
    return value


def _telemetry_for(user: str, client: str, completions: list[S.Exchange], expected: Expected) -> list[Call]:
    """Two posts per editor: shown (and some partial accepts) first, then the full accepts and rejections.

    Per completion i: i % 3 == 0 shown, partial accept (5 chars) then full (20 chars, 2 lines); i % 3 == 1
    shown then rejected; i % 3 == 2 shown and accepted (11 chars, 1 line), the accept sent again in the
    second post (a retried batch)."""
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    prefix = "copilot/" if client == VSCODE else "agent/"
    for i, ex in enumerate(completions):
        editor, plugin = _header(ex, "editor-version"), _header(ex, "editor-plugin-version")
        lang = ex.expected["language"]
        kw: dict[str, Any] = {"prefix": prefix, "language": lang, "editor": editor, "plugin": plugin}
        rid = ex.request_id
        assert rid is not None
        key = (user, ex.expected["editor"], lang)
        first.append(ts.ghost("shown", rid, **kw))
        if i % 3 == 0:
            first.append(ts.ghost("accepted", rid, chars=5, lines=1, comp_type="partial", **kw))
            second.append(ts.ghost("accepted", rid, chars=20, lines=2, comp_type="full", **kw))
            expected.add(key, shown=1, accepted=1, chars=20, lines=2)
        elif i % 3 == 1:
            second.append(ts.ghost("rejected", rid, chars=30, comp_type="full", **kw))
            expected.add(key, shown=1, rejected=1)
        else:
            accept = ts.ghost("accepted", rid, chars=11, lines=1, comp_type="full", **kw)
            first.append(accept)
            second.append(accept)
            expected.add(key, shown=1, accepted=1, chars=11, lines=1)
    if client == VSCODE:
        first.append(ts.captured(completions[0].request_id or ""))  # enhanced store: code, never in an output
        bodies, headers = [ts.ndjson(first), ts.ndjson(second)], ts.vscode_headers()
    else:
        bodies, headers = [ts.array(first), ts.array(second)], ts.ls_headers()
    return [
        Call(user, client, ts.telemetry_exchange(body, headers, rid=f"tele-{user}-{client}-{n}"))
        for n, body in enumerate(bodies)
    ]


def _run_users(backend: FakeCopilotBackend, proxy: Mitmdump, calls: list[Call]) -> dict[str, int]:
    """Each user's calls in order (one client per editor, VS Code over HTTP/2), users concurrently."""
    for call in calls:
        backend.script_exchange(call.exchange)

    def one_user(user: str) -> dict[str, int]:
        clients = {}
        try:
            out = {}
            for call in (c for c in calls if c.user == user):
                if call.client not in clients:
                    clients[call.client] = proxy_client(
                        proxy.port, user, PASSWORDS[user], proxy.ca_cert_path, http2=call.client in HTTP2_CLIENTS
                    )
                out[call.rid] = send_timed(clients[call.client], call.exchange).status
            return out
        finally:
            for client in clients.values():
                client.close()

    statuses: dict[str, int] = {}
    with ThreadPoolExecutor(len(PASSWORDS)) as pool:
        for part in pool.map(one_user, PASSWORDS):
            statuses.update(part)
    return statuses


@dataclass
class Run:
    calls: list[Call]
    expected: Expected
    backend: FakeCopilotBackend
    metrics_text: str
    log: list[dict[str, Any]]
    extended: list[dict[str, Any]]
    data_dir: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("acceptance")
    data_dir = tmp / "data"
    expected = Expected({name: Counter() for name in FIELDS})
    calls: list[Call] = []
    for user, client, n in PLAN:
        completions = [variant(COMPLETIONS[client]) for _ in range(n)]
        calls += [Call(user, client, ex) for ex in completions]
        if user != "carol":
            calls += _telemetry_for(user, client, completions, expected)
    with FakeCopilotBackend() as backend:
        proxy = start_proxy(backend, tmp / "mitmdump", data_dir, write_htpasswd(tmp / "htpasswd", PASSWORDS))
        try:
            statuses = _run_users(backend, proxy, calls)
            assert set(statuses.values()) == {200} and len(statuses) == len(calls)
            wait_until_counted(proxy, len(calls))
            metrics_text = scrape(proxy.metrics_url)
        finally:
            proxy.stop()
        yield Run(calls, expected, backend, metrics_text, read_log(data_dir), read_extended(data_dir), data_dir)


def test_the_backend_receives_the_telemetry_bytes_as_sent(run: Run) -> None:
    posts = [c for c in run.calls if c.exchange.path == "/telemetry"]
    assert len(posts) == 12  # two posts per user and editor
    for call in posts:
        (received,) = run.backend.requests_for(call.rid)
        assert received.body == call.exchange.request_body, call.rid
        assert received.header("content-encoding") == call.exchange.header("content-encoding")
        assert received.header("content-type") == call.exchange.header("content-type")


METRICS = {
    "shown": "copilot_suggestions_shown_total",
    "accepted": "copilot_suggestions_accepted_total",
    "rejected": "copilot_suggestions_rejected_total",
    "chars": "copilot_suggestion_accepted_chars_total",
    "lines": "copilot_suggestion_accepted_lines_total",
}


def test_metrics_agree_with_the_plan(run: Run) -> None:
    parsed = parse_metrics(run.metrics_text)
    for name, metric_name in METRICS.items():
        keys = (
            ("user", "editor", "language", "kind") if "suggestions_" in metric_name else ("user", "editor", "language")
        )
        got = metric(parsed, metric_name, keys)
        if len(keys) == 4:
            assert {k[3] for k in got} == {"completion"}
            got = Counter({k[:3]: v for k, v in got.items()})
        assert got == +run.expected.counts[name], name
    # Three editors, two users; carol has completions and no telemetry events at all.
    assert {k[1] for k in run.expected.counts["shown"]} == {"vscode", "jetbrains-iu", "neovim"}
    events = metric(parsed, "copilot_telemetry_events_total", ("user", "store", "event"))
    assert {u for u, _, _ in events} == {"alice", "bob"}
    assert events[("alice", "enhanced", "ghostText.capturedAfterAccepted")] == 1
    assert ts.SECRET_CODE not in run.metrics_text


def _from_log(log: list[dict[str, Any]]) -> dict[str, Counter[Key]]:
    out: dict[str, Counter[Key]] = {name: Counter() for name in FIELDS}
    for rec in log:
        for s in rec.get("telemetry", {}).get("suggestions", []):
            key = (rec["user"], s["editor"], s["language"])
            if s["signal"] in ("shown", "accepted", "rejected"):
                out[s["signal"]][key] += s["n"]
            if s["signal"] == "accepted":
                out["chars"][key] += s.get("chars", 0)
                out["lines"][key] += s.get("lines", 0)
    return {k: +v for k, v in out.items()}


def test_the_event_log_names_each_completion_and_adds_up(run: Run) -> None:
    text = json.dumps(run.log)
    assert ts.SECRET_CODE not in text and "capturedCodeJson" not in text
    completions = {r["request_id"]: r for r in run.log if r["event"] == "copilot.request" and r["kind"] == "completion"}
    telemetry = [r for r in run.log if r["event"] == "copilot.telemetry"]
    assert len(telemetry) == 12 and all(r["kind"] == "telemetry" for r in telemetry)
    for rec in telemetry:
        for s in rec["telemetry"]["suggestions"]:
            joined = completions[s["request_id"]]  # the join: the suggestion's completion call
            assert (joined["user"], joined["editor"], joined["language"]) == (rec["user"], s["editor"], s["language"])
    assert _from_log(run.log) == {k: +v for k, v in run.expected.counts.items()}


def _summary(run: Run) -> dict[str, Any]:
    (doc,) = run.extended
    return doc


def test_the_extended_summary_has_acceptance_per_user_editor_and_language(run: Run) -> None:
    users = _summary(run)["users"]
    assert users["carol"]["acceptance"] is None  # completions, no telemetry: unknown, not 0 %
    assert users["carol"]["interactions"]["completion"]["neovim"]["lua"] == 2
    exp = run.expected.counts
    for user in ("alice", "bob"):
        acc = users[user]["acceptance"]
        mine = {name: Counter({k: v for k, v in c.items() if k[0] == user}) for name, c in exp.items()}
        shown, accepted = sum(mine["shown"].values()), sum(mine["accepted"].values())
        assert (acc["shown"], acc["accepted"], acc["rejected"]) == (shown, accepted, sum(mine["rejected"].values()))
        assert (acc["accepted_chars"], acc["accepted_lines"]) == (
            sum(mine["chars"].values()),
            sum(mine["lines"].values()),
        )
        assert acc["ratio"] == round(accepted / shown, 4)
        for level, by in ((1, "by_editor"), (2, "by_language")):
            for value, counts in acc[by].items():
                part = {name: sum(v for k, v in c.items() if k[level] == value) for name, c in mine.items()}
                assert (counts["shown"], counts["accepted"], counts["accepted_lines"]) == (
                    part["shown"],
                    part["accepted"],
                    part["lines"],
                ), (user, by, value)
        assert set(acc["by_editor"]) == {k[1] for k in mine["shown"]}


def test_a_rebuild_from_the_event_log_reproduces_the_summary(run: Run) -> None:
    doc = _summary(run)
    _, extended, bad = rebuild_both(run.data_dir, doc["day"], write=False)
    assert bad == 0
    assert json.loads(extended) == doc
