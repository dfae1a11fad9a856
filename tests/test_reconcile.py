"""Reconcile: GitHub's users-1-day report beside the proxy's summaries, field by field, with a status for each."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter import reconcile
from exporter.reconcile_compare import Context, agrees, is_final, status_both
from exporter.reconcile_github import parse_lines

DATA = Path(__file__).parent / "data" / "report"
GITHUB = DATA / "github-users-1-day.ndjson"
ROOT = Path(__file__).resolve().parents[1]
TODAY = "2026-11-28"  # 2026-11-24 and before are final, 2026-11-25 and after are not


def run(capsys: pytest.CaptureFixture[str], *args: str, github: Path = GITHUB) -> tuple[int, str, str]:
    code = reconcile.main(["--data-dir", str(DATA), "--github", str(github), "--today", TODAY, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows_of(capsys: pytest.CaptureFixture[str], *args: str, github: Path = GITHUB) -> dict[tuple[str, str, str], Any]:
    code, out, err = run(capsys, "--format", "json", "--logins", str(DATA / "logins.csv"), *args, github=github)
    assert code == 0, err
    doc = json.loads(out)
    return {(r["day"], r["github_login"], r["field"]): r for r in doc["rows"]}


# Every (day, GitHub login, field) of the fixture and the status it must get, with the reason in a word.
EXPECTED = {
    # 2026-11-23: the proxy has only the original file (a rebuilt day): no acceptance figures to compare.
    ("2026-11-23", "alice-gh", "chat_turns"): ("match", 4, 4),
    ("2026-11-23", "alice-gh", "completions"): ("match", 7, 7),
    ("2026-11-23", "bob", "completions"): ("differs", 6, 20),  # GitHub counts cached completions too
    ("2026-11-23", "dave", "chat_turns"): ("not_via_proxy", None, 9),  # a user missing on the proxy side
    # 2026-11-24: extended data with acceptance, credits, teams.
    ("2026-11-24", "alice-gh", "completions"): ("match", 14, 15),  # within the 15 % tolerance
    ("2026-11-24", "alice-gh", "accepted"): ("match", 6, 6),
    ("2026-11-24", "alice-gh", "accepted_lines"): ("differs", 15, 30),
    ("2026-11-24", "alice-gh", "ai_credits"): ("differs", 2.5, 3.75),
    ("2026-11-24", "bob", "chat_turns"): ("telemetry_off", 2, 0),  # the proxy saw no telemetry from bob
    ("2026-11-24", "bob", "completions"): ("telemetry_off", 11, 0),
    ("2026-11-24", "bob", "accepted"): ("telemetry_off", None, 0),
    ("2026-11-24", "bob", "ai_credits"): ("match", 0.4, 0.4),  # billing is not telemetry
    ("2026-11-24", "carol-c", "cli_prompts"): ("match", 4, 4),  # CLI turns, apart from the IDE figures
    ("2026-11-24", "carol-c", "chat_turns"): ("match", 0, 0),
    ("2026-11-24", "carol-c", "ai_credits"): ("match", 1.2, 1.2),
    ("2026-11-24", "erin", "completions"): ("not_via_proxy", None, 8),
    ("2026-11-24", "u-3f9a1c2b", "completions"): ("not_in_github_report", 5, None),  # missing on GitHub's side
    ("2026-11-24", "u-3f9a1c2b", "accepted"): ("not_in_github_report", 2, None),
    ("2026-11-25", "frank", "completions"): ("not_via_proxy", None, 4),  # no proxy summary that day
    ("2026-11-26", "alice-gh", "chat_turns"): ("not_final", 2, 1),
    ("2026-11-26", "alice-gh", "completions"): ("match", 3, 3),
}


def test_every_status_where_it_belongs(capsys: pytest.CaptureFixture[str]) -> None:
    rows = rows_of(capsys)
    for key, (status, proxy, github) in EXPECTED.items():
        row = rows[key]
        assert (row["status"], row["proxy"], row["github"]) == (status, proxy, github), key
    assert {r["status"] for r in rows.values()} == set(reconcile.STATUSES)
    # No figure the files cannot give: the rebuilt day has no acceptance, carol has no acceptance key,
    # the not-yet-final day has neither credits nor acceptance on the proxy side.
    for absent in (
        ("2026-11-23", "alice-gh", "accepted"),
        ("2026-11-24", "carol-c", "accepted"),
        ("2026-11-26", "alice-gh", "ai_credits"),
        ("2026-11-23", "bob", "ai_credits"),
    ):
        assert absent not in rows
    assert rows[("2026-11-24", "carol-c", "cli_prompts")]["user"] == "carol"
    assert rows[("2026-11-24", "bob", "chat_turns")]["user"] == "bob"  # "Bob" on GitHub: logins ignore case


def test_a_telemetry_off_user_missing_from_github(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    github = tmp_path / "report.ndjson"
    lines = GITHUB.read_text().splitlines(keepends=True)
    github.write_text("".join(line for line in lines if not ('"Bob"' in line and "2026-11-24" in line)))
    rows = rows_of(capsys, github=github)
    assert rows[("2026-11-24", "bob", "chat_turns")]["status"] == "telemetry_off"
    assert rows[("2026-11-24", "bob", "completions")]["status"] == "telemetry_off"
    assert rows[("2026-11-24", "bob", "accepted")]["status"] == "telemetry_off"
    assert rows[("2026-11-24", "bob", "ai_credits")]["status"] == "not_in_github_report"  # credits: not telemetry


def test_days_become_final_after_three_full_utc_days(capsys: pytest.CaptureFixture[str]) -> None:
    assert not is_final("2026-11-24", "2026-11-27") and is_final("2026-11-24", "2026-11-28")
    rows = rows_of(capsys, "--today", "2026-11-27")  # the later --today wins in argparse
    assert rows[("2026-11-24", "alice-gh", "accepted_lines")]["status"] == "not_final"
    assert rows[("2026-11-24", "u-3f9a1c2b", "completions")]["status"] == "not_final"
    assert rows[("2026-11-24", "alice-gh", "accepted")]["status"] == "match"  # agreeing figures stay a match
    rows = rows_of(capsys, "--today", "2026-12-30")
    assert rows[("2026-11-26", "alice-gh", "chat_turns")]["status"] == "differs"


@pytest.mark.parametrize(
    ("proxy", "github", "tolerance", "same"),
    [
        (100, 115, 0.15, True),
        (100, 118, 0.15, False),
        (0, 0, 0.0, True),
        (2.5, 2.5000000001, 0.0, True),
        (3, 4, 0, False),
    ],
)
def test_tolerance_is_relative_to_the_larger_figure(proxy: float, github: float, tolerance: float, same: bool) -> None:
    assert agrees(proxy, github, tolerance) is same


def test_github_lower_without_telemetry_evidence_differs() -> None:
    ctx = Context(final=True, telemetry_off=False, tolerance=0.0)
    assert status_both("completions", 10, 4, ctx) == ("differs", "GitHub lower")
    off = Context(final=True, telemetry_off=True, tolerance=0.0)
    assert status_both("completions", 10, 4, off)[0] == "telemetry_off"
    assert status_both("cli_prompts", 10, 4, off)[0] == "differs"  # CLI is not IDE telemetry


def test_yaml_map_gives_the_same_join(capsys: pytest.CaptureFixture[str]) -> None:
    via_csv = rows_of(capsys)
    via_yaml = rows_of(capsys, "--logins", str(DATA / "logins.yaml"))
    assert via_yaml == via_csv
    code, out, _ = run(capsys, "--format", "json")  # no map: alice is "alice" on both sides, so unmatched
    assert code == 0
    rows = {(r["day"], r["github_login"], r["field"]): r for r in json.loads(out)["rows"]}
    assert rows[("2026-11-24", "alice", "completions")]["status"] == "not_in_github_report"
    assert rows[("2026-11-24", "alice-gh", "completions")]["status"] == "not_via_proxy"


MALFORMED = [
    "{not json",
    "[1, 2]",
    '{"day": "2026-11-24"}',
    '{"day": "2026-13-01", "user_login": "x"}',
    "",
    '{"day": "2026-11-24", "user_login": "ALICE-GH"}',  # a second row for a login (case-insensitive)
]


def test_malformed_lines_are_reported_by_number_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    github = tmp_path / "report.ndjson"
    good = GITHUB.read_text()
    github.write_text(good + "\n".join(MALFORMED) + "\n")
    n = len(good.splitlines())
    code, out, err = run(capsys, "--format", "json", "--logins", str(DATA / "logins.csv"), github=github)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("reconcile: warning: skipped")]
    assert warnings == [
        f"reconcile: warning: skipped {github}:{n + 1}: not JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        f"reconcile: warning: skipped {github}:{n + 2}: not a JSON object",
        f"reconcile: warning: skipped {github}:{n + 3}: no user_login",
        f"reconcile: warning: skipped {github}:{n + 4}: no valid day (YYYY-MM-DD): '2026-13-01'",
        f"reconcile: warning: skipped {github}:{n + 6}: a second row for alice-gh on 2026-11-24: skipped",
    ]
    doc = json.loads(out)
    assert [p["line"] for p in doc["skipped_lines"]] == [n + 1, n + 2, n + 3, n + 4, n + 6]
    assert {(r["day"], r["github_login"], r["field"]): r["status"] for r in doc["rows"]} == {
        k: r["status"] for k, r in rows_of(capsys).items()
    }


def test_parse_lines_reads_the_documented_record() -> None:
    rows, problems = parse_lines("x", GITHUB.read_text().splitlines())
    assert problems == []
    line, alice = rows[3]
    assert line == 4 and (alice.login, alice.day) == ("alice-gh", "2026-11-24")
    assert (alice.chat_turns, alice.completions, alice.accepted, alice.accepted_lines) == (5, 15, 6, 30)
    assert alice.ai_credits == 3.75 and alice.cli_prompts == 0
    _, carol = rows[5]
    assert carol.cli_prompts == 4 and carol.chat_turns == 0
    _, older = parse_lines("x", ['{"day": "2026-01-02", "user_login": "z", "user_initiated_interaction_count": 7}'])[0][
        0
    ]
    assert older.chat_turns == 7 and older.ai_credits is None  # no totals_by_feature yet, no credits field


def test_table_and_csv_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--logins", str(DATA / "logins.csv"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["day", "user", "github_login", "field", "proxy", "github", "status", "note"]
    assert any(
        line.split()[:7] == ["2026-11-24", "bob", "bob", "completions", "11", "0", "telemetry_off"] for line in lines
    )
    assert lines[-1].startswith("match: ") and "not_via_proxy: " in lines[-1]
    code, out, _ = run(capsys, "--format", "csv", "--logins", str(DATA / "logins.csv"))
    table = list(csv.DictReader(io.StringIO(out)))
    row = next(r for r in table if (r["day"], r["github_login"], r["field"]) == ("2026-11-24", "erin", "ai_credits"))
    assert row["user"] == "" and row["proxy"] == "" and row["github"] == "0.3" and row["status"] == "not_via_proxy"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("alice,alice-gh\nbob\n", ".csv", "logins.csv:2: expected two columns proxy_user,github_login"),
        ("alice,alice-gh\nalice,other\n", ".csv", "logins.csv:2: 'alice' is mapped twice"),
        ("alice,alice-gh\nbob,Alice-GH\n", ".csv", "logins.csv:2: 'alice-gh' is mapped from 'alice' and 'bob'"),
        ("- alice\n", ".yaml", "expected a mapping proxy_user: github_login"),
        ("alice: [x\n", ".yaml", "not YAML"),
    ],
)
def test_bad_login_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"logins{suffix}"
    path.write_text(content)
    code, out, err = run(capsys, "--logins", str(path))
    assert code == 1 and out == "" and message in err and err.count("\n") == 1


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_missing_or_empty_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str) -> None:
    data = tmp_path / "nope" if setup == "missing" else tmp_path
    code = reconcile.main(["--data-dir", str(data), "--github", str(GITHUB)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert ("does not exist" if setup == "missing" else "no daily summaries in") in err


def test_missing_or_empty_github_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, github=tmp_path / "none.ndjson")
    assert code == 1 and err.startswith("reconcile: cannot read GitHub report: ") and err.count("\n") == 1
    (tmp_path / "empty.ndjson").write_text("\n")
    code, _, err = run(capsys, github=tmp_path / "empty.ndjson")
    assert code == 1 and err == "reconcile: no usable rows in the GitHub report\n"


def test_an_unreadable_proxy_file_is_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(DATA / "metrics", tmp_path / "metrics")
    broken = tmp_path / "metrics" / "copilot-insight_2026-11-24.json"
    broken.write_text("{")
    code = reconcile.main(["--data-dir", str(tmp_path), "--github", str(GITHUB), "--today", TODAY, "--format", "json"])
    out = capsys.readouterr()
    assert code == 0 and f"reconcile: warning: skipped {broken}: not JSON" in out.err
    rows = {(r["day"], r["github_login"], r["field"]): r for r in json.loads(out.out)["rows"]}
    assert rows[("2026-11-24", "bob", "completions")]["proxy"] == 11  # from the original file of the day


def test_module_help_and_run() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "exporter.reconcile", "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: copilot-proxy-insight reconcile")
    assert "telemetry_off" in done.stdout and "--logins" in done.stdout
    args = ["--data-dir", str(DATA), "--github", str(GITHUB), "--today", TODAY, "--format", "csv"]
    done = subprocess.run(
        [sys.executable, "-m", "exporter.reconcile", *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0 and done.stdout.startswith("day,user,github_login,field,proxy,github,status,note")


def test_long_reports_show_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    github = tmp_path / "month.ndjson"
    github.write_text(
        "".join(json.dumps({"day": f"2026-10-{d:02d}", "user_login": "dave"}) + "\n" for d in range(1, 31))
    )
    code, out, err = run(capsys, "--format", "csv", github=github)
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("reconcile: compared ")]
    assert progress[0] == "reconcile: compared 3/30 days (2026-10-03)" and len(progress) == 10
    assert len(out.splitlines()) == 1 + 30 * 5  # five zero figures a day for dave, none of them via the proxy


def test_hostile_names_cannot_drive_a_terminal_or_a_spreadsheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    github = tmp_path / "report.ndjson"
    evil = ['=HYPERLINK("http://x","y")', "\x1b]0;owned\x07\x1b[31mred", "@SUM(A1)", "-1+1"]
    github.write_text("".join(json.dumps({"day": "2026-11-24", "user_login": e}) + "\n" for e in evil))
    code, out, _ = run(capsys, "--format", "csv", github=github)
    assert code == 0
    logins = [r["github_login"] for r in csv.DictReader(io.StringIO(out))]
    assert logins and all(login[0] not in "=+-@" for login in logins)
    assert '\'=hyperlink("http://x","y")' in logins and "'@sum(a1)" in logins and "'-1+1" in logins
    code, out, _ = run(capsys, github=github)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\\x1b]0;owned\\x07\\x1b[31mred" in out
