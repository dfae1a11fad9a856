"""End to end with a real Prometheus: the acceptance dashboard and the acceptance ratio rule return the
expected values for known telemetry traffic.

The same set-up as tests/e2e/test_prometheus_e2e.py (whose helpers this reuses): mitmdump with the addon in
front of the fake backend, Prometheus scraping it every second with the shipped rules. The traffic runs
twice with fresh ids; phase A creates every series, the dashboard's instant queries are then evaluated over
exactly phase B (`$__range` from the scrape closing phase A to the last scrape: no extrapolation).

Per label set, each phase is one telemetry post, so every scrape sees accepted and shown in the same
proportion: the 1h recording rule (which `increase()` extrapolates over the series' start) then has the
exact ratio too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests import samples as S
from tests import telemetry_samples as ts
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import free_port, proxy_client, send
from tests.e2e.test_e2e import JETBRAINS, NEOVIM, VSCODE, Call, scrape, variant, write_htpasswd
from tests.e2e.test_prometheus_e2e import (
    ALL,
    Answer,
    Prometheus,
    exporter_totals,
    last_scrape_after,
    rules_evaluated,
    run_dashboard_queries,
    start_team_proxy,
    variable_options,
)
from tests.test_alerts import RULES_FILE

pytestmark = pytest.mark.e2e

FILE = "copilot-acceptance.json"
PASSWORDS = {"alice": "alice-Pw-7f3kQ9xLm2", "bob": "bob-Pw-2m8xZ4vRt6", "carol": "carol-Pw-9q2Lk4Tz8w"}
RULE = "copilot:suggestions:acceptance_ratio_rate1h"
TEAMS = "copilot-teams.json"
TEAM_RULE = "copilot:team_completions:acceptance_ratio_rate1h"
NES = "next_edit"


def _alice(phase: str) -> list[dict[str, Any]]:
    """VS Code: 4 completions shown, 2 accepted (one partial then full: 20 chars, 2 lines; one 8 chars, 1 line),
    2 rejected; 4 next edits shown, 1 accepted, 2 rejected; survival checks; 3 chat edit decisions; one
    enhanced-store envelope. 20 standard events, 1 enhanced."""
    r = [f"{phase}-a{i}" for i in range(4)]
    n = [f"{phase}-n{i}" for i in range(4)]
    return [
        *(ts.ghost("shown", rid) for rid in r),
        ts.ghost("accepted", r[0], chars=5, lines=1, comp_type="partial"),
        ts.ghost("accepted", r[0], chars=20, lines=2, comp_type="full"),
        ts.ghost("accepted", r[1], chars=8, lines=1, comp_type="full"),
        ts.ghost("rejected", r[2]),
        ts.ghost("rejected", r[3]),
        ts.still_in_code(r[0], 30, True),
        ts.still_in_code(r[1], 30, True),
        ts.still_in_code(r[0], 300, True),
        ts.still_in_code(r[1], 300, False),
        ts.next_edit(n[0], True, "accepted"),
        ts.next_edit(n[1], True, "rejected"),
        ts.next_edit(n[2], True, "rejected"),
        ts.next_edit(n[3], True, "notAccepted"),
        ts.chat_edit("accepted"),
        ts.chat_edit("saved"),
        ts.inline_done(False),
        ts.captured(r[0]),
    ]


def _bob_neovim(phase: str) -> list[Any]:
    """Neovim: 5 shown, 3 accepted (10 chars, 1 line each); one junk envelope (skipped). 8 events."""
    kw: dict[str, Any] = {"prefix": "agent/", "language": "lua", "editor": ts.NEOVIM_EDITOR, "plugin": ts.NEOVIM_PLUGIN}
    r = [f"{phase}-b{i}" for i in range(5)]
    accepted = [ts.ghost("accepted", rid, chars=10, lines=1, **kw) for rid in r[:3]]
    return [*(ts.ghost("shown", rid, **kw) for rid in r), *accepted, 1]


def _bob_jetbrains(phase: str) -> list[dict[str, Any]]:
    """JetBrains: 2 shown, both rejected (a 0 ratio, not an absent one). 4 events."""
    kw: dict[str, Any] = {"prefix": "agent/", "language": "java", "editor": "JetBrains-IU/243.22562.218"}
    r = [f"{phase}-j{i}" for i in range(2)]
    return [*(ts.ghost("shown", rid, **kw) for rid in r), *(ts.ghost("rejected", rid, **kw) for rid in r)]


def phase_calls(phase: str) -> list[Call]:
    def post(user: str, client: str, body: bytes, headers: dict[str, str]) -> Call:
        return Call(user, client, ts.telemetry_exchange(body, headers, rid=f"tele-{phase}-{user}-{client}"))

    return [
        Call("alice", VSCODE, variant(S.VSCODE_COMPLETION)),
        post("alice", VSCODE, ts.ndjson(_alice(phase)), ts.vscode_headers()),
        Call("bob", NEOVIM, variant(S.NEOVIM_COMPLETION)),
        post("bob", NEOVIM, ts.array(_bob_neovim(phase)), ts.ls_headers()),  # type: ignore[arg-type]
        Call("bob", JETBRAINS, variant(S.JETBRAINS_COMPLETION)),
        post("bob", JETBRAINS, ts.array(_bob_jetbrains(phase)), ts.ls_headers()),
        Call("carol", NEOVIM, variant(S.NEOVIM_COMPLETION)),
        Call("carol", NEOVIM, variant(S.NEOVIM_COMPLETION)),
    ]


EVENTS_PER_PHASE = 21 + 12  # telemetry events (alice 20 standard + 1 enhanced, bob 12)


@dataclass
class Run:
    window_ms: int
    answers: dict[tuple[str, str], Answer]
    rule: list[dict[str, Any]]
    options: dict[str, set[str]]
    team_rule: list[dict[str, Any]]


def _send_all(backend: FakeCopilotBackend, port: int, ca: str, calls: list[Call]) -> None:
    for call in calls:
        backend.script_exchange(call.exchange)
    for call in calls:
        with proxy_client(port, call.user, PASSWORDS[call.user], ca, http2=call.client == VSCODE) as client:
            assert send(client, call.exchange).status == 200


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("acceptance-prometheus")
    metrics_port = free_port()
    prom = Prometheus(tmp / "prometheus", [f"127.0.0.1:{metrics_port}"], [RULES_FILE]).start()
    try:
        with FakeCopilotBackend() as backend:
            htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
            # alice in `backend`, bob in `frontend` (each of the minimum size), carol in no team.
            proxy = start_team_proxy(backend, tmp, htpasswd, metrics_port, ("dave", "erin", "frank", "gina"))
            try:
                prom.wait_ready()
                for n, phase in enumerate(("a", "b"), start=1):
                    calls = phase_calls(phase)
                    _send_all(backend, proxy.port, str(proxy.ca_cert_path), calls)
                    want = {
                        "copilot_responses_total": 8.0 * n,
                        "copilot_telemetry_events_total": EVENTS_PER_PHASE * n,
                        "copilot_user_team_info": 2.0,  # alice's and bob's, a writer batch after their counters
                    }
                    proxy.wait_for(
                        lambda want=want: all(
                            exporter_totals(scrape(proxy.metrics_url)).get(k) == v for k, v in want.items()
                        ),
                        30.0,
                        f"/metrics to reach {want}",
                    )
                    if phase == "a":
                        start_ms = last_scrape_after(prom, time.time())
                at_ms = last_scrape_after(prom, time.time())
                seen = time.time()
                prom.wait(lambda: rules_evaluated(prom, seen), "every rule group to evaluate the last scrape")
                answers = run_dashboard_queries(prom, at_ms, at_ms - start_ms, ALL, {FILE, TEAMS})
                rule = prom.query(RULE)
                team_rule = prom.query(TEAM_RULE)
                options = variable_options(prom, FILE, ALL, at_ms, at_ms - start_ms)
            finally:
                proxy.stop()
    finally:
        prom.stop()
    yield Run(at_ms - start_ms, answers, rule, options, team_rule)


def _answer(run: Run, where: str, file: str = FILE) -> Answer:
    found = run.answers.get((file, where))
    assert found is not None, f"no query {where}"
    assert found.error is None and found.range_error is None, found.error or found.range_error
    return found


def values(run: Run, where: str, *labels: str, file: str = FILE) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for sample in _answer(run, where, file).result or []:
        key = tuple(sample["metric"].get(label, "") for label in labels)
        out[key[0] if len(labels) == 1 else key] = float(sample["value"][1])
    return out


def close(got: dict[Any, float], want: dict[Any, float], what: str) -> None:
    assert set(got) == set(want), f"{what}: {got} != {want}"
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), f"{what} {key}: {got[key]} != {value}"


def per_second(run: Run, counts: dict[Any, float]) -> dict[Any, float]:
    return {k: v * 1000 / run.window_ms for k, v in counts.items()}


def test_every_acceptance_query_evaluates(run: Run) -> None:
    assert len(run.answers) > 20
    empty = sorted(where for (f, where), a in run.answers.items() if not a.result and f == FILE)
    # Nothing fires within a test of seconds (the alerts' `for:` are minutes to hours).
    assert empty == ["annotation 'Copilot alerts'"], empty
    # Team All still means every user, carol (in no team, completions without telemetry) included.
    assert run.options["team"] == {"backend", "frontend"}
    assert run.options["team_users"] == run.options["user"] | {"carol"} == {"alice", "bob", "carol"}


def test_acceptance_by_team_through_the_info_join(run: Run) -> None:
    """Completions only: alice's 2 of 4 (backend); bob's 3 of 5 in Neovim and 0 of 2 in JetBrains (frontend)."""
    want = {"backend": 2 / 4, "frontend": 3 / 7}
    close(values(run, "panel 'Completion acceptance by team' A", "team", file=TEAMS), want, "team panel")
    close({s["metric"]["team"]: float(s["value"][1]) for s in run.team_rule}, want, TEAM_RULE)


def test_overview_stats_equal_phase_b(run: Run) -> None:
    close(values(run, "panel 'Acceptance rate' A"), {(): 5 / 11}, "acceptance rate (completions)")
    close(values(run, "panel 'Suggestions shown' A"), {(): 15}, "shown")
    close(values(run, "panel 'Accepted lines' A"), {(): 6}, "lines")
    close(values(run, "panel 'Accepted characters' A"), {(): 58}, "chars")
    close(values(run, "panel 'Users with telemetry' A"), {(): 2}, "users with telemetry")


def test_acceptance_rates_over_time_by_kind_and_user(run: Run) -> None:
    close(values(run, "panel 'Acceptance rate over time' A", "kind"), {"completion": 5 / 11, NES: 1 / 4}, "by kind")
    close(
        values(run, "panel 'Acceptance rate by user' A", "user"),
        {"alice": 2 / 4, "bob": 3 / 7},
        "by user (completions)",
    )


def test_the_recording_rule_and_its_panel(run: Run) -> None:
    want = {
        ("alice", "vscode", "python", "completion"): 0.5,
        ("alice", "vscode", "python", NES): 0.25,
        ("bob", "neovim", "lua", "completion"): 0.6,
        ("bob", "jetbrains-iu", "java", "completion"): 0.0,  # shown, none accepted: 0, not absent
    }
    keys = ("user", "editor", "language", "kind")
    rule = {tuple(s["metric"][k] for k in keys): float(s["value"][1]) for s in run.rule}
    close(rule, want, RULE)
    close(values(run, "panel 'Recorded acceptance ratio (1h)' A", *keys), want, "recorded ratio panel")


def test_by_editor_and_language_tables(run: Run) -> None:
    close(
        values(run, "panel 'Acceptance by editor' A", "editor"), {"vscode": 4, "neovim": 5, "jetbrains-iu": 2}, "shown"
    )
    close(values(run, "panel 'Acceptance by editor' B", "editor"), {"vscode": 2, "neovim": 3}, "accepted")
    ratio = {"vscode": 2 / 4, "neovim": 3 / 5, "jetbrains-iu": 0.0}  # completions: next edits are apart
    close(values(run, "panel 'Acceptance by editor' C", "editor"), ratio, "editor ratio")
    ratio = {"python": 2 / 4, "lua": 3 / 5, "java": 0.0}
    close(values(run, "panel 'Acceptance by language' C", "language"), ratio, "language ratio")


def test_volume_survival_and_chat_edits(run: Run) -> None:
    shown = values(run, "panel 'Shown, accepted and rejected' A", "kind")
    close(shown, per_second(run, {"completion": 11, NES: 4}), "shown rate")
    close(
        values(run, "panel 'Shown, accepted and rejected' C", "kind"),
        per_second(run, {"completion": 4, NES: 2}),
        "rejected",
    )
    close(values(run, "panel 'Accepted lines by user' A", "user"), {"alice": 3, "bob": 3}, "lines by user")
    survival = values(run, "panel 'Code still in file' A", "after", "still_in_code")
    close(survival, {("30s", "true"): 1.0, ("5m", "true"): 0.5, ("5m", "false"): 0.5}, "survival")
    decisions = values(run, "panel 'Chat and agent edit decisions' A", "outcome")
    close(decisions, per_second(run, {"accepted": 1, "saved": 1, "rejected": 1}), "chat edits")


def test_telemetry_coverage(run: Run) -> None:
    close(
        values(run, "panel 'Users with completions but no telemetry' A", "user"),
        {"alice": 1, "bob": 2, "carol": 2},
        "A",
    )
    # B is 0 exactly for the user whose telemetry never arrived (the table keeps those rows).
    close(
        values(run, "panel 'Users with completions but no telemetry' B", "user"),
        {"alice": 21, "bob": 12, "carol": 0},
        "B",
    )
    stores = values(run, "panel 'Telemetry events by store' A", "store")
    close(stores, per_second(run, {"standard": 32, "enhanced": 1}), "stores")
    close(values(run, "panel 'Telemetry events by store' B", "reason"), per_second(run, {"bad_envelope": 1}), "skipped")
