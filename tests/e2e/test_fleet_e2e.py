"""End-to-end fleet: three real mitmdump replicas (one read-only CA, one data dir, one team map), a real
Prometheus scraping all three, users spread over the replicas, one chat turn across two replicas, and a
replica killed with SIGKILL mid-run.

Checked against the plan: the merged daily rebuild of every replica's event log, the team roll-ups in
Prometheus through the copilot_user_team_info join, and the extended summary built from Prometheus' raw
samples. A team under the minimum size never appears by name; a team map change reaches a running replica
within seconds; CopilotReplicaDown goes pending for the killed replica.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy.certs import CertStore

from exporter.fleet import insight_from_prometheus, prometheus_fetch
from exporter.rebuild import main as rebuild_main
from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, free_port, proxy_client, send, wait_for
from tests.e2e.test_e2e import scrape, variant, write_htpasswd
from tests.e2e.test_prometheus_e2e import Prometheus
from tests.test_alerts import RULES_FILE

pytestmark = pytest.mark.e2e

S = samples
JOB = "copilot-proxy-insight"
DEADLINE = 30.0
SMALL_TEAM = "skunkworks"  # two members: shown as "other" everywhere
PASSWORDS = {u: f"{u}-Pw-9q2Lx" for u in ("alice", "bob", "frank")}
TEAM_MAP = f"backend: [alice, bob, carol, dave, erin]\n{SMALL_TEAM}: [frank, gina]\n"


@dataclass
class Fleet:
    tmp: Path
    data_dir: Path
    ca_cert: Path
    team_map: Path
    backend: FakeCopilotBackend
    replicas: list[Mitmdump]
    prometheus: Prometheus
    day: str


def _replica(backend: FakeCopilotBackend, tmp: Path, name: str, ca_dir: Path, htpasswd: Path, **opts: Any) -> Mitmdump:
    (tmp / name).mkdir(parents=True, exist_ok=True)
    proxy = Mitmdump(
        backend,
        tmp / name,
        proxyauth=f"@{htpasswd}",
        options={
            "copilot_data_dir": tmp / "data",
            "copilot_metrics_port": free_port(),
            "copilot_instance_id": name,
            "copilot_flush_interval": "0.2",
            "connection_strategy": "lazy",
            **opts,
        },
    )
    proxy.confdir = ca_dir  # every replica reads the one CA (read-only): clients trust one certificate
    return proxy.start()


def _call(fleet: Fleet, replica: int, user: str, exchange: samples.Exchange) -> int:
    fleet.backend.script_exchange(exchange)
    proxy = fleet.replicas[replica]
    with proxy_client(proxy.port, user, PASSWORDS[user], fleet.ca_cert, http2=True) as client:
        return send(client, exchange).status


def _log_lines(fleet: Fleet, name: str) -> list[dict[str, Any]]:
    path = fleet.data_dir / "events" / f"copilot-events_{fleet.day}.{name}.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _series_value(prom: Prometheus, expr: str) -> dict[str, float]:
    return {next(iter(s["metric"].values())): float(s["value"][1]) for s in prom.query(expr)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    ca_dir = tmp / "ca"
    CertStore.from_store(ca_dir, "mitmproxy", 2048)
    for path in ca_dir.iterdir():
        path.chmod(stat.S_IRUSR)
    ca_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    team_map = tmp / "teams.yaml"
    team_map.write_text(TEAM_MAP)
    htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
    with FakeCopilotBackend() as backend:
        replicas: list[Mitmdump] = []
        prom: Prometheus | None = None
        try:
            for name in ("r1", "r2", "r3"):
                replicas.append(_replica(backend, tmp, name, ca_dir, htpasswd, copilot_team_map=team_map))
            targets = [f"127.0.0.1:{p.metrics_port}" for p in replicas]
            prom = Prometheus(tmp / "prometheus", targets, [RULES_FILE]).start()
            prom.wait_ready()
            day = time.strftime("%Y-%m-%d", time.gmtime())
            yield Fleet(tmp, tmp / "data", ca_dir / "mitmproxy-ca-cert.pem", team_map, backend, replicas, prom, day)
        finally:
            if prom is not None:
                prom.stop()
            for proxy in replicas:
                proxy.stop()
            ca_dir.chmod(stat.S_IRWXU)


@pytest.fixture(scope="module")
def ran(fleet: Fleet) -> Fleet:
    """The plan: alice 2 completions + 1 turn (the turn on r1, its suggestions on r2), bob 3 completions on r2,
    frank 2 on r3; r3 is killed; then bob 1 on r1 and frank 1 on r2."""
    turn = str(os.urandom(8).hex())
    assert _call(fleet, 0, "alice", variant(S.VSCODE_COMPLETION)) == 200
    assert _call(fleet, 1, "alice", variant(S.VSCODE_COMPLETION)) == 200
    assert _call(fleet, 0, "alice", variant(S.VSCODE_AGENT_TURN, turn)) == 200
    assert _call(fleet, 1, "alice", variant(S.VSCODE_AGENT_SUGGESTIONS, turn)) == 200
    for _ in range(3):
        assert _call(fleet, 1, "bob", variant(S.VSCODE_COMPLETION)) == 200
    for _ in range(2):
        assert _call(fleet, 2, "frank", variant(S.JETBRAINS_COMPLETION)) == 200
    killed = fleet.replicas[2]
    # Written before the kill: r3's two calls are in its event log, and Prometheus scraped its counters.
    wait_for(lambda: len(_log_lines(fleet, "r3")) == 2, DEADLINE, "r3's event log lines")
    query = f'sum(copilot_requests_total{{job="{JOB}", instance="127.0.0.1:{killed.metrics_port}"}})'
    fleet.prometheus.wait(lambda: [float(s["value"][1]) for s in fleet.prometheus.query(query)] == [2.0], "r3 scraped")
    os.kill(killed.pid, signal.SIGKILL)
    wait_for(lambda: not killed.running(), DEADLINE, "r3 to die")
    # The others keep serving.
    assert _call(fleet, 0, "bob", variant(S.VSCODE_COMPLETION)) == 200
    assert _call(fleet, 1, "frank", variant(S.JETBRAINS_COMPLETION)) == 200
    for i, name in ((0, "r1"), (1, "r2")):
        want = {"r1": 3, "r2": 6}[name]
        wait_for(lambda name=name, want=want: len(_log_lines(fleet, name)) == want, DEADLINE, f"{name}'s log lines")
        port = fleet.replicas[i].metrics_port
        q = f'sum(copilot_responses_total{{job="{JOB}", instance="127.0.0.1:{port}"}})'
        fleet.prometheus.wait(
            lambda q=q, want=want: [float(s["value"][1]) for s in fleet.prometheus.query(q)] == [float(want)],
            f"{name} scraped",
        )
    return fleet


EXPECTED_INTERACTIONS = {"alice": 3, "bob": 4, "frank": 3}
EXPECTED_TEAMS = {"backend": 7, "other": 3}


def test_the_merged_rebuild_of_every_replica_log_equals_the_plan(ran: Fleet) -> None:
    out = ran.tmp / "merged"
    assert rebuild_main(["--data-dir", str(ran.data_dir), "--output-dir", str(out), ran.day]) == 0
    usage = json.loads((out / "metrics" / f"copilot-usage_{ran.day}.json").read_text())
    got = {u: e["chat_turns"] + e["completions_count"] for u, e in usage["usage"].items()}
    assert got == EXPECTED_INTERACTIONS
    assert usage["total_chat_turns"] == 1  # the turn whose suggestions reached another replica counts once
    extended = json.loads((out / "metrics" / f"copilot-insight_{ran.day}.json").read_text())
    assert {t: r["totals"]["interactions"] for t, r in extended["teams"].items()} == EXPECTED_TEAMS
    # Nothing written before the kill is lost: r3's lines are whole and counted.
    assert [line["user"] for line in _log_lines(ran, "r3")] == ["frank", "frank"]


def test_team_rollups_in_prometheus_through_the_join_equal_the_plan(ran: Fleet) -> None:
    expr = (
        f'sum by (team) (max by (user, team) (last_over_time(copilot_user_team_info{{job="{JOB}"}}[1h]))'
        f' * on (user) group_left sum by (user) (last_over_time(copilot_requests_total{{job="{JOB}"}}[1h])))'
    )
    assert _series_value(ran.prometheus, expr) == {t: float(n) for t, n in EXPECTED_TEAMS.items()}


def test_the_summary_built_from_prometheus_equals_the_merged_rebuild(ran: Fleet) -> None:
    doc = insight_from_prometheus(prometheus_fetch(ran.prometheus.url), ran.day).to_doc()
    got = {u: e["totals"]["interactions"] for u, e in doc["users"].items()}
    assert got == EXPECTED_INTERACTIONS
    assert {t: r["totals"]["interactions"] for t, r in doc["teams"].items()} == EXPECTED_TEAMS
    merged = json.loads((ran.tmp / "merged" / "metrics" / f"copilot-insight_{ran.day}.json").read_text())
    for user, entry in doc["users"].items():
        assert entry["interactions"] == merged["users"][user]["interactions"], user


def test_a_team_below_the_minimum_never_appears_by_name(ran: Fleet) -> None:
    texts = [p.read_text(errors="replace") for p in ran.data_dir.rglob("*") if p.is_file()]
    texts += [scrape(p.metrics_url) for p in ran.replicas if p.running()]
    texts += [json.dumps(ran.prometheus.get("label/team/values"))]
    assert texts and not [t for t in texts if SMALL_TEAM in t]
    assert "other" in ran.prometheus.get("label/team/values")


def test_the_killed_replica_makes_replica_down_pending(ran: Fleet) -> None:
    def pending() -> bool:
        alerts = ran.prometheus.query('ALERTS{alertname="CopilotReplicaDown"}')
        return any(a["metric"].get("alertstate") == "pending" for a in alerts)

    ran.prometheus.wait(pending, "CopilotReplicaDown pending")


def test_a_team_map_change_reaches_a_running_replica_within_seconds(ran: Fleet) -> None:
    replica = ran.replicas[1]  # has seen frank
    ran.team_map.write_text("backend: [alice, bob, carol, dave, erin, frank]\n")
    started = time.monotonic()

    def moved() -> bool:
        text = scrape(replica.metrics_url)
        return 'copilot_user_team_info{team="backend",user="frank"} 1.0' in text and 'team="other"' not in text

    try:
        wait_for(moved, DEADLINE, "frank's new team in /metrics")
    except TimeoutError:
        info = [line for line in scrape(replica.metrics_url).splitlines() if "team" in line]
        raise AssertionError(f"copilot_user_team_info lines: {info}") from None
    assert time.monotonic() - started < 10
    with proxy_client(replica.port, "frank", PASSWORDS["frank"], ran.ca_cert, http2=True) as client:
        ex = variant(S.JETBRAINS_COMPLETION)
        ran.backend.script_exchange(ex)
        assert send(client, ex).status == 200

    def logged() -> list[str] | None:
        lines = _log_lines(ran, "r2")
        return lines[-1]["teams"] if lines and lines[-1]["request_id"] == ex.request_id else None

    assert wait_for(logged, DEADLINE, "the call's log line") == ["backend"]


def test_every_replica_presented_the_one_shared_ca(ran: Fleet) -> None:
    """The clients trust only the shared CA file: each replica's TLS handshake verified against it."""
    for proxy in ran.replicas:
        if not proxy.running():
            continue
        with proxy_client(proxy.port, "alice", PASSWORDS["alice"], ran.ca_cert) as client:
            ex = variant(S.VSCODE_TOKEN_EXCHANGE)
            ran.backend.script_exchange(ex)
            assert send(client, ex).status == 200
    other_ca = ran.tmp / "other-ca"
    CertStore.from_store(other_ca, "mitmproxy", 2048)
    with (
        proxy_client(ran.replicas[0].port, "alice", PASSWORDS["alice"], other_ca / "mitmproxy-ca-cert.pem") as client,
        pytest.raises(httpx.ConnectError),
    ):
        send(client, variant(S.VSCODE_TOKEN_EXCHANGE))
