"""`copilot-proxy-insight reconcile`: the proxy's daily figures beside GitHub's `users-1-day` report, explained."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from exporter.reconcile_compare import STATUSES, Row, compare_day
from exporter.reconcile_github import GithubDay, LineProblem, read_reports
from exporter.report import ReportError, metrics_dir, parse_day
from exporter.report_data import Day, SummaryError, load_day

COLUMNS = ("day", "user", "github_login", "field", "proxy", "github", "status", "note")


def _csv_map(path: Path, text: str) -> list[tuple[int, str, str]]:
    pairs = []
    for number, cells in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells] == ["proxy_user", "github_login"]:
            continue
        if len(cells) != 2 or not all(cells):
            raise ReportError(f"{path}:{number}: expected two columns proxy_user,github_login")
        pairs.append((number, cells[0], cells[1]))
    return pairs


def _yaml_map(path: Path, text: str) -> list[tuple[int, str, str]]:
    try:
        doc = YAML(typ="safe", pure=True).load(text)
    except YAMLError as e:
        raise ReportError(f"{path}: not YAML: {str(e).splitlines()[0]}") from e
    if doc is None:
        return []
    if not isinstance(doc, dict) or not all(isinstance(v, str | int) and str(v).strip() for v in doc.values()):
        raise ReportError(f"{path}: expected a mapping proxy_user: github_login")
    return [(0, str(k).strip(), str(v).strip()) for k, v in doc.items()]


def load_logins(path: Path | None) -> dict[str, str]:
    """proxy user -> GitHub login (lower case) from CSV (proxy_user,github_login) or YAML (proxy_user: login)."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read login map {path}: {e}") from e
    pairs = _yaml_map(path, text) if path.suffix.lower() in (".yaml", ".yml") else _csv_map(path, text)
    logins: dict[str, str] = {}
    owner: dict[str, str] = {}
    for number, user, login in pairs:
        where = f"{path}:{number}" if number else str(path)
        login = login.lower()
        if user in logins:
            raise ReportError(f"{where}: {user!r} is mapped twice")
        if login in owner:
            raise ReportError(f"{where}: {login!r} is mapped from {owner[login]!r} and {user!r}")
        logins[user], owner[login] = login, user
    return logins


def reconcile(
    data_dir: Path, reports: Sequence[Path], logins: dict[str, str], today: str, tolerance: float, err: TextIO
) -> tuple[list[Row], list[LineProblem]]:
    """Every row of every day in GitHub's report; problems are the skipped NDJSON lines."""
    metrics = metrics_dir(data_dir)
    try:
        github, problems = read_reports(reports)
    except OSError as e:
        raise ReportError(f"cannot read GitHub report: {e}") from e
    for problem in problems:
        print(f"reconcile: warning: skipped {problem}", file=err)
    by_day: dict[str, dict[str, GithubDay]] = {}
    for (login, day), row in github.items():
        by_day.setdefault(day, {})[login] = row
    if not by_day:
        raise ReportError("no usable rows in the GitHub report")
    rows: list[Row] = []
    for i, day in enumerate(sorted(by_day), 1):
        found: list[SummaryError] = []
        proxy_day: Day | None = load_day(metrics, day, found)
        for problem_file in found:
            print(f"reconcile: warning: skipped {problem_file}", file=err)
        rows.extend(compare_day(day, proxy_day, by_day[day], logins, today, tolerance))
        if len(by_day) > 15 and (i % max(1, len(by_day) // 10) == 0 or i == len(by_day)):
            print(f"reconcile: compared {i}/{len(by_day)} days ({day})", file=err)
    return rows, problems


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: object) -> str:
    """A table cell; control characters in names (terminal escape sequences) are shown, not sent."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _csv_cell(value: object) -> object:
    """A CSV cell; a name a spreadsheet would run as a formula (=, +, -, @) gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def format_table(rows: Sequence[Row]) -> str:
    cells = [list(COLUMNS)] + [[_text(getattr(r, c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in cells]
    counts = Counter(r.status for r in rows)
    lines.append("")
    lines.append(", ".join(f"{s}: {counts[s]}" for s in STATUSES if counts[s]) or "no rows")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def format_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([_csv_cell(getattr(r, c)) for c in COLUMNS])
    return out.getvalue()


def format_json(rows: Sequence[Row], problems: Sequence[LineProblem], today: str, tolerance: float) -> str:
    doc: dict[str, Any] = {
        "today": today,
        "tolerance": tolerance,
        "counts": dict(Counter(r.status for r in rows)),
        "rows": [asdict(r) for r in rows],
        "skipped_lines": [asdict(p) for p in problems],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copilot-proxy-insight reconcile",
        description="Compare the proxy's daily summaries with GitHub's per-user daily usage report "
        "(users-1-day NDJSON), per user, day and field, with a status explaining each difference: "
        + ", ".join(STATUSES)
        + ". Only the days present in the GitHub report are compared. See docs/report.md.",
    )
    parser.add_argument("--data-dir", default="logs", type=Path, help="the proxy's copilot_data_dir (default: logs)")
    parser.add_argument(
        "--github", action="append", required=True, type=Path, metavar="REPORT.ndjson", help="repeat for more files"
    )
    parser.add_argument("--logins", type=Path, metavar="MAP", help="proxy user -> GitHub login, .csv or .yaml")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--today", type=parse_day, help="UTC day deciding which days are final (default: today)")
    parser.add_argument("--tolerance", type=float, default=0.15, help="relative difference still a match (0.15)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= args.tolerance < 1:
        print("reconcile: --tolerance must be at least 0 and below 1", file=sys.stderr)
        return 2
    today = args.today or datetime.now(UTC).date().isoformat()
    try:
        logins = load_logins(args.logins)
        rows, problems = reconcile(args.data_dir, args.github, logins, today, args.tolerance, sys.stderr)
    except ReportError as e:
        print(f"reconcile: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(format_json(rows, problems, today, args.tolerance))
    elif args.format == "csv":
        sys.stdout.write(format_csv(rows))
    else:
        sys.stdout.write(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
