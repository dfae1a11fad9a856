"""Teams: the map parsers, the index with its minimum size, reload on change, LDAP groups, and every output."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap3
import pytest
from prometheus_client import generate_latest

from exporter.identity import pseudonym
from exporter.insight import InsightDay
from exporter.options import BY_NAME
from exporter.rebuild import rebuild_both
from exporter.settings import SettingsError, TeamOptions, settings_from
from exporter.teams import (
    OTHER_TEAM,
    TeamDirectory,
    TeamMapError,
    build_index,
    fetch_ldap_groups,
    groups_from_entries,
    parse_csv,
    parse_map,
    parse_yaml,
)
from tests import samples
from tests.conftest import Harness
from tests.e2e.harness import wait_for
from tests.factories import chat, event

BACKEND = ["alice", "bob", "carol", "dave", "erin"]  # five: exactly the default minimum size
TINY = "secret-project"  # two members: must never appear by name


def _yaml_map(path: Path, extra: str = "") -> Path:
    path.write_text(f"backend: [{', '.join(BACKEND)}]\n{TINY}: [alice, frank]\n{extra}", encoding="utf-8")
    return path


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user,team\nalice,backend\nbob,backend\nalice,web\n", {"backend": {"alice", "bob"}, "web": {"alice"}}),
        ("alice,backend\n# a comment\n\n bob , backend \n", {"backend": {"alice", "bob"}}),
        ('"Smith, Jane",platform\n', {"platform": {"Smith, Jane"}}),
        ("", {}),
    ],
)
def test_csv_rows_are_memberships(text: str, expected: dict[str, set[str]]) -> None:
    assert parse_csv(text, "teams.csv") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice,backend\nbob\n", "teams.csv: line 2: expected user,team (got 1 fields)"),
        ("alice,backend,extra\n", "teams.csv: line 1: expected user,team (got 3 fields)"),
        ("alice,\n", "teams.csv: line 1: expected a user and a team name"),
    ],
)
def test_bad_csv_names_the_line(text: str, message: str) -> None:
    with pytest.raises(TeamMapError) as e:
        parse_csv(text, "teams.csv")
    assert str(e.value) == message


def test_yaml_maps_teams_to_users() -> None:
    text = "backend:\n  - alice\n  - bob\nweb: [alice]\nempty: []\n"
    assert parse_yaml(text, "t.yaml") == {"backend": {"alice", "bob"}, "web": {"alice"}, "empty": set()}
    assert parse_yaml("", "t.yaml") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- alice\n- bob\n", "t.yaml: expected a mapping of team names to lists of users"),
        ("backend: alice\n", "t.yaml: team 'backend': expected a list of users"),
        ("backend: [alice\n", "t.yaml: not valid YAML"),
        ("backend: [~]\n", "t.yaml: team 'backend': expected a user and a team name"),
    ],
)
def test_bad_yaml_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(TeamMapError) as e:
        parse_yaml(text, "t.yaml")
    assert str(e.value).startswith(message)


def test_the_suffix_picks_the_format() -> None:
    assert parse_map("alice,web\n", "/etc/teams.CSV") == {"web": {"alice"}}
    assert parse_map("web: [alice]\n", "teams.yml") == {"web": {"alice"}}
    with pytest.raises(TeamMapError, match=r"expected a \.csv, \.yaml or \.yml file"):
        parse_map("x", "teams.json")


# -- the index: minimum size, several teams, pseudonyms -----------------------------------------------


def test_teams_under_the_minimum_size_are_other_and_multi_team_users_keep_both() -> None:
    index = build_index([{"backend": set(BACKEND), TINY: {"alice", "frank"}}], min_size=5)
    assert index.users["alice"] == ("backend", OTHER_TEAM)
    assert index.users["bob"] == ("backend",)
    assert index.users["frank"] == (OTHER_TEAM,)
    assert index.sizes == {"backend": 5, TINY: 2}
    assert index.shown() == {"backend", OTHER_TEAM}
    assert TINY not in {t for teams in index.users.values() for t in teams}


def test_the_minimum_counts_members_over_every_source_and_can_be_lowered() -> None:
    file_groups = {TINY: {"alice", "frank"}}
    ldap_groups = {TINY: {"alice", "gina", "hank"}}
    assert build_index([file_groups, ldap_groups], min_size=5).users["gina"] == (OTHER_TEAM,)
    assert build_index([file_groups, ldap_groups], min_size=4).users["gina"] == (TINY,)  # 4 distinct members
    assert build_index([file_groups], min_size=1).users["frank"] == (TINY,)


def test_with_a_pseudonym_key_the_index_holds_pseudonyms_only() -> None:
    index = build_index([{"backend": set(BACKEND)}], min_size=5, pseudonym_key="k1")
    assert set(index.users) == {pseudonym(u, "k1") for u in BACKEND}
    assert "alice" not in index.users


# -- the directory: reload on change, bad files -------------------------------------------------------


class Errors:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []
        self.ok: list[str] = []

    def on_error(self, component: str, message: str) -> None:
        self.failed.append((component, message))


def test_a_changed_map_file_is_picked_up_by_poll_and_a_broken_one_keeps_the_last_good(tmp_path: Path) -> None:
    path = _yaml_map(tmp_path / "teams.yaml")
    errors = Errors()
    directory = TeamDirectory(errors.on_error, errors.ok.append)
    directory.configure(TeamOptions(map_path=str(path)), "")
    assert directory.of("bob") == ("backend",)
    assert directory.poll() is False  # unchanged: not re-read
    version = directory.version
    path.write_text(f"web: [{', '.join(BACKEND)}]\n", encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even on coarse clocks
    assert directory.poll() is True
    assert directory.of("bob") == ("web",)
    assert directory.version == version + 1
    path.write_text("web: [bob\n", encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert directory.poll() is False
    assert directory.of("bob") == ("web",)  # the last good map is kept
    assert errors.failed[-1][0] == "team_map"
    assert "not valid YAML" in errors.failed[-1][1] and "keeping the last good team map" in errors.failed[-1][1]


def test_a_missing_map_file_is_reported_and_the_proxy_goes_on_without_teams(tmp_path: Path) -> None:
    errors = Errors()
    directory = TeamDirectory(errors.on_error)
    directory.configure(TeamOptions(map_path=str(tmp_path / "absent.csv")), "")
    assert directory.of("alice") == ()
    assert errors.failed == [
        (
            "team_map",
            f"{tmp_path / 'absent.csv'}: cannot read: No such file or directory (keeping the last good team map)",
        )
    ]


# -- LDAP, with ldap3's offline mock server --------------------------------------------------------------

BASE = "ou=groups,dc=example,dc=org"
READER = "cn=reader,dc=example,dc=org"


def _mock_directory(groups: dict[str, list[str]], posix: dict[str, list[str]] | None = None) -> Any:
    server = ldap3.Server("mock-directory")

    def connect(options: TeamOptions) -> Any:
        conn = ldap3.Connection(
            server, user=options.ldap_bind_dn, password=options.ldap_password, client_strategy=ldap3.MOCK_SYNC
        )
        conn.strategy.add_entry(READER, {"objectClass": "person", "userPassword": "reader-pw"})
        conn.strategy.add_entry(
            "cn=outside,ou=other,dc=example,dc=org",
            {"objectClass": "groupOfNames", "cn": "outside", "member": [READER]},
        )
        for cn, uids in groups.items():
            members = [f"uid={u},ou=people,dc=example,dc=org" for u in uids]
            conn.strategy.add_entry(f"cn={cn},{BASE}", {"objectClass": "groupOfNames", "cn": cn, "member": members})
        for cn, uids in (posix or {}).items():
            conn.strategy.add_entry(f"cn={cn},{BASE}", {"objectClass": "posixGroup", "cn": cn, "memberUid": uids})
        if not conn.bind():
            raise ldap3.core.exceptions.LDAPBindError("invalid credentials")
        return conn

    return connect


LDAP = TeamOptions(
    ldap_url="ldap://mock-directory",
    ldap_bind_dn=READER,
    ldap_password="reader-pw",
    ldap_base=BASE,
    ldap_filter="(|(objectClass=groupOfNames)(objectClass=posixGroup))",
    ldap_refresh_s=0.05,
)


def test_ldap_groups_under_the_base_are_teams_of_their_members() -> None:
    connect = _mock_directory({"backend": BACKEND}, posix={"ops": ["carol", "zoe"]})
    groups = fetch_ldap_groups(LDAP, connect)
    assert groups == {"backend": set(BACKEND), "ops": {"carol", "zoe"}}  # not the group outside the base


def test_ldap_with_a_wrong_password_fails_clearly() -> None:
    from dataclasses import replace

    with pytest.raises(ldap3.core.exceptions.LDAPBindError):
        fetch_ldap_groups(replace(LDAP, ldap_password="wrong"), _mock_directory({"backend": BACKEND}))


def test_member_dns_name_their_user_by_the_first_rdn() -> None:
    entries = [
        {
            "cn": ["web"],
            "member": [
                "uid=alice,ou=people,dc=x",
                "cn=Jane\\, Smith,ou=people,dc=x",
                "uid=ren\\c3\\a9e,dc=x",
                "garbage",
            ],
        }
    ]
    assert groups_from_entries(entries) == {"web": {"alice", "Jane, Smith", "renée"}}


def test_the_ldap_thread_fills_the_index_off_the_request_path_and_keeps_groups_when_ldap_fails() -> None:
    connect = _mock_directory({"backend": BACKEND})
    calls: list[int] = []
    fail = threading.Event()

    def fetch(options: TeamOptions) -> dict[str, set[str]]:
        calls.append(1)
        if fail.is_set():
            raise OSError("connection refused")
        return fetch_ldap_groups(options, connect)

    errors = Errors()
    directory = TeamDirectory(errors.on_error, errors.ok.append, ldap_fetch=fetch)
    try:
        directory.configure(LDAP, "")
        thread = directory._ldap_thread
        assert thread is not None and thread.is_alive()
        wait_for(lambda: directory.of("erin") == ("backend",), 10.0, "the LDAP groups in the index")
        fail.set()
        wait_for(lambda: any(c == "team_ldap" for c, _ in errors.failed), 10.0, "the LDAP failure reported")
        assert "LDAP group lookup at ldap://mock-directory failed: connection refused" in errors.failed[-1][1]
        assert directory.of("erin") == ("backend",)  # the last good groups are kept
    finally:
        directory.stop()
    assert not thread.is_alive()  # stop() joined it: no lookup after the directory is stopped


# -- options ------------------------------------------------------------------------------------------


def _get(**overrides: Any) -> Callable[[str], Any]:
    values = {name: o.default for name, o in BY_NAME.items()} | overrides
    return lambda name: values[name]


def test_team_options_parse_and_the_password_never_shows() -> None:
    s = settings_from(
        _get(
            copilot_team_map="/etc/teams.yaml",
            copilot_team_min_size=3,
            copilot_team_ldap_url="ldaps://dc:636",
            copilot_team_ldap_base=BASE,
            copilot_team_ldap_password="hunter2",
            copilot_team_ldap_refresh="60",
        )
    )
    assert s.teams == TeamOptions(
        "/etc/teams.yaml", 3, "ldaps://dc:636", "", "hunter2", BASE, "(objectClass=groupOfNames)", 60.0
    )
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"copilot_team_map": "teams.json"}, "copilot_team_map='teams.json': expected a .csv, .yaml or .yml file"),
        ({"copilot_team_min_size": 0}, "copilot_team_min_size=0: expected at least 1"),
        ({"copilot_team_ldap_url": "dc:389"}, "copilot_team_ldap_url='dc:389': expected ldap://host[:port]"),
        ({"copilot_team_ldap_url": "ldap://dc"}, "copilot_team_ldap_base='': expected the DN"),
        ({"copilot_team_ldap_filter": "cn=*"}, "copilot_team_ldap_filter='cn=*': expected an LDAP filter"),
        ({"copilot_team_ldap_refresh": "0"}, "copilot_team_ldap_refresh='0': expected a positive number"),
        ({"copilot_instance_id": "a/b"}, "copilot_instance_id='a/b': expected up to 63 letters"),
    ],
)
def test_bad_team_options_name_the_option(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        settings_from(_get(**overrides))
    assert str(e.value).startswith(message)


# -- the extended summary -------------------------------------------------------------------------------


def test_team_rollups_sum_their_users_and_survive_merge_and_rebuild_from_log_lines() -> None:
    day = InsightDay("2026-12-02")
    day.add_event(chat(user="alice", teams=("backend", OTHER_TEAM)))
    day.add_event(chat(user="bob", teams=("backend",), input_tokens=7, output_tokens=3))
    day.add_event(event(user="zoe"))  # no team
    doc = day.to_doc()
    assert doc["users"]["alice"]["teams"] == ["backend", OTHER_TEAM]
    assert "teams" not in doc["users"]["zoe"]
    backend = doc["teams"]["backend"]
    assert backend["active_users"] == 2
    assert (
        backend["totals"]["interactions"] == 2
        and backend["totals"]["input_tokens"] == 7 + 2 * 0 + (doc["users"]["alice"]["totals"]["input_tokens"])
    )
    assert doc["teams"][OTHER_TEAM]["active_users"] == 1
    merged = InsightDay("2026-12-02")
    merged.merge(json.loads(json.dumps(doc)))
    assert merged.to_doc() == doc
    rebuilt = InsightDay("2026-12-02")
    for e in (
        chat(user="alice", teams=("backend", OTHER_TEAM)),
        chat(user="bob", teams=("backend",), input_tokens=7, output_tokens=3),
        event(user="zoe"),
    ):
        rebuilt.add(json.loads(json.dumps(e.log_fields())))
    assert rebuilt.to_doc() == doc


def test_no_teams_configured_leaves_the_document_as_before() -> None:
    day = InsightDay("2026-12-02")
    day.add_event(chat(user="alice"))
    assert "teams" not in day.to_doc() and "teams" not in day.to_doc()["users"]["alice"]


# -- the addon: every output ------------------------------------------------------------------------------


def _outputs_text(h: Harness) -> str:
    h.flush()
    files = [p.read_text(encoding="utf-8") for p in h.data_dir.rglob("*.json*")]
    return generate_latest(h.addon.prometheus.registry).decode() + "\n".join(files)


def test_teams_reach_the_event_the_log_the_summary_and_the_info_metric(harness: Harness, tmp_path: Path) -> None:
    team_map = _yaml_map(tmp_path / "teams.yaml")
    harness.tctx.configure(harness.addon, copilot_team_map=str(team_map))
    harness.flow(samples.VSCODE_AGENT_TURN, user="alice")
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    assert harness.events[0].teams == ("backend", OTHER_TEAM)
    harness.flush()
    day = harness.events[0].day
    log_lines = [json.loads(line) for line in (tmp_path / "events" / f"copilot-events_{day}.jsonl").open()]
    assert [line["teams"] for line in log_lines] == [["backend", OTHER_TEAM], ["backend"]]
    doc = json.loads((tmp_path / "metrics" / f"copilot-insight_{day}.json").read_text())
    assert doc["teams"]["backend"]["active_users"] == 2
    assert doc["teams"]["backend"]["totals"]["interactions"] == 2
    assert doc["teams"][OTHER_TEAM]["totals"]["interactions"] == 1
    s = harness.sample
    assert s("copilot_user_team_info", user="alice", team="backend") == 1
    assert s("copilot_user_team_info", user="alice", team=OTHER_TEAM) == 1
    assert s("copilot_user_team_info", user="bob", team="backend") == 1
    text = _outputs_text(harness)
    assert TINY not in text
    _, extended, _ = rebuild_both(tmp_path, day, write=False)
    assert json.loads(extended)["teams"] == doc["teams"]


def test_a_team_allowance_in_the_budget_file_reaches_its_members_gauge(harness: Harness, tmp_path: Path) -> None:
    """copilot_budget_file's teams entry, through the running team directory: alice (backend) gets it, zoe
    (in no team) the default."""
    team_map = _yaml_map(tmp_path / "teams.yaml")
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps({"teams": {"backend": 3000}}))
    harness.tctx.configure(harness.addon, copilot_team_map=str(team_map), copilot_budget_file=str(budgets))
    harness.flow(samples.VSCODE_AGENT_TURN, user="alice")
    harness.flow(samples.VSCODE_AGENT_TURN, user="zoe", request_id="zoe-1")
    assert harness.sample("copilot_budget_allowance_credits", user="alice") == 3000
    assert harness.sample("copilot_budget_allowance_credits", user="zoe") == 1900


def test_a_new_users_team_series_comes_with_the_next_batch_not_the_next_flush_interval(
    harness: Harness, tmp_path: Path
) -> None:
    """The join `* on (user) group_left (team) copilot_user_team_info` must not miss a new user's first
    scrapes: the info series is published by the writer's batch round (0.1 s), not only every flush interval."""
    harness.tctx.configure(harness.addon, copilot_team_map=str(_yaml_map(tmp_path / "teams.yaml")))
    harness.flush()
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    assert harness.sample("copilot_user_team_info", user="bob", team="backend") == 0
    harness.addon.writer._batch_round()  # what the writer thread runs every batch_seconds
    assert harness.sample("copilot_user_team_info", user="bob", team="backend") == 1


def test_a_map_change_moves_the_info_metric_and_new_calls_within_one_flush(harness: Harness, tmp_path: Path) -> None:
    team_map = _yaml_map(tmp_path / "teams.yaml")
    harness.tctx.configure(harness.addon, copilot_team_map=str(team_map))
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    harness.flush()
    assert harness.sample("copilot_user_team_info", user="bob", team="backend") == 1
    team_map.write_text(f"platform: [{', '.join(BACKEND)}]\n", encoding="utf-8")
    os.utime(team_map, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    harness.flush()  # one writer round: the file poll and the info metric refresh
    assert harness.sample("copilot_user_team_info", user="bob", team="platform") == 1
    assert harness.sample("copilot_user_team_info", user="bob", team="backend") == 0
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    assert harness.last().teams == ("platform",)


def test_pseudonymous_users_keep_their_teams_and_no_real_name_is_written(harness: Harness, tmp_path: Path) -> None:
    team_map = _yaml_map(tmp_path / "teams.yaml")
    harness.tctx.configure(harness.addon, copilot_team_map=str(team_map), copilot_pseudonym_key="k1")
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    bob = pseudonym("bob", "k1")
    assert harness.last().user == bob and harness.last().teams == ("backend",)
    harness.flush()
    assert harness.sample("copilot_user_team_info", user=bob, team="backend") == 1
    text = _outputs_text(harness)
    assert '"bob"' not in text and 'user="bob"' not in text and TINY not in text


def test_a_broken_map_at_start_is_counted_and_traffic_still_counts(harness: Harness, tmp_path: Path) -> None:
    bad = tmp_path / "teams.csv"
    bad.write_text("alice\n", encoding="utf-8")
    harness.tctx.configure(harness.addon, copilot_team_map=str(bad))
    harness.flow(samples.VSCODE_COMPLETION, user="bob")
    assert harness.last().counted and harness.last().teams == ()
    assert harness.sample("copilot_exporter_errors_total", component="team_map") >= 1
