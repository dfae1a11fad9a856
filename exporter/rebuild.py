"""`copilot-proxy-insight-rebuild`: rebuild a day's summaries (original and extended) from its JSON event log."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from exporter.insight import insight_from_records, insight_path
from exporter.sinks.daily import parse_log_lines, summary_from_records, summary_path, write_atomically
from exporter.sinks.jsonlog import log_path


def rebuild_both(data_dir: Path, day: str, write: bool = True) -> tuple[str, str, int]:
    """The rebuilt original and extended summaries (JSON) and the count of unreadable log lines; with
    `write`, both files are written atomically."""
    source = log_path(data_dir, day)
    with open(source, encoding="utf-8", errors="replace") as f:
        records, bad = parse_log_lines(f)
    text = summary_from_records(day, records).to_json()
    extended = insight_from_records(day, records).to_json()
    if write:
        write_atomically(summary_path(data_dir, day), text)
        write_atomically(insight_path(data_dir, day), extended)
    return text, extended, bad


def rebuild(data_dir: Path, day: str, write: bool = True) -> tuple[str, int]:
    """Returns the rebuilt original-schema summary JSON and the count of unreadable log lines (writes both)."""
    text, _, bad = rebuild_both(data_dir, day, write)
    return text, bad


def _day(value: str) -> str:
    try:
        return datetime.strptime(value, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {value!r}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="copilot-proxy-insight-rebuild",
        description="Rebuild daily summaries (metrics/copilot-usage_<day>.json and the extended "
        "metrics/copilot-insight_<day>.json) from the JSON event log (events/copilot-events_<day>.jsonl). "
        "Stop the proxy first, or it may overwrite the files.",
    )
    parser.add_argument("days", nargs="*", type=_day, help="UTC days, YYYY-MM-DD (default: today)")
    parser.add_argument("--data-dir", default="logs", type=Path, help="the proxy's copilot_data_dir (default: logs)")
    parser.add_argument("--stdout", action="store_true", help="print the summary instead of writing the files")
    parser.add_argument(
        "--extended", action="store_true", help="with --stdout: print the extended summary instead of the original"
    )
    args = parser.parse_args(argv)
    days = args.days or [datetime.now(UTC).strftime("%Y-%m-%d")]
    status = 0
    for day in days:
        try:
            text, extended, bad = rebuild_both(args.data_dir, day, write=not args.stdout)
        except FileNotFoundError:
            print(f"{day}: no event log at {log_path(args.data_dir, day)}", file=sys.stderr)
            status = 1
            continue
        except OSError as e:
            print(f"{day}: cannot rebuild: {e}", file=sys.stderr)
            status = 1
            continue
        if args.stdout:
            print(extended if args.extended else text)
        else:
            written = f"{summary_path(args.data_dir, day)} and {insight_path(args.data_dir, day)}"
            print(f"{day}: wrote {written}", file=sys.stderr)
        if bad:
            print(f"{day}: skipped {bad} unreadable line(s) (cut by a crash)", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
