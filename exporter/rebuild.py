"""`copilot-proxy-insight-rebuild`: rebuild a day's summaries (original and extended) from its JSON event logs.

Several replicas sharing a data dir each write their own event log (`copilot-events_<day>.<instance>.jsonl`);
the rebuild merges every log of the day it finds into one summary, equal to the sum. A call counted by two
replicas (a retry with the same request id, a chat turn whose calls reached two replicas) counts once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.classify import CHAT_KINDS
from exporter.insight import insight_from_records, insight_path
from exporter.sinks.daily import parse_log_lines, summary_from_records, summary_path, write_atomically
from exporter.sinks.jsonlog import log_path

_CHAT = frozenset(k.value for k in CHAT_KINDS)


def event_logs(data_dir: Path, day: str) -> list[Path]:
    """The day's event logs in the data dir: a single proxy's, then every replica's (by instance id)."""
    plain = log_path(data_dir, day)
    replicas = sorted((data_dir / "events").glob(f"copilot-events_{day}.*.jsonl"))
    return ([plain] if plain.is_file() else []) + [p for p in replicas if p.is_file()]


def merge_logs(logs: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The records of several replicas' logs in time order; a call counted in one log and counted again in
    ANOTHER (same request id, or the same chat turn's interaction id) is not counted the second time.
    Within one log the proxy's own counting stands, so one proxy's rebuild equals its live summary."""
    tagged = sorted(
        ((str(rec.get("timestamp", "")), source, rec) for source, records in enumerate(logs) for rec in records),
        key=lambda item: (item[0], item[1]),
    )
    first: dict[tuple[str, str], int] = {}  # ("request"|"turn", id) -> the log that counted it
    out: list[dict[str, Any]] = []
    for _, source, rec in tagged:
        if rec.get("counted") is True:
            rec = _once(rec, source, first)
        out.append(rec)
    return out


def _once(rec: dict[str, Any], source: int, first: dict[tuple[str, str], int]) -> dict[str, Any]:
    keys = []
    if rec.get("request_id"):
        keys.append((("request", str(rec["request_id"])), "retry_duplicate"))
    if rec.get("kind") in _CHAT and rec.get("interaction_id"):
        keys.append((("turn", str(rec["interaction_id"])), "turn_followup"))
    for key, reason in keys:
        seen = first.get(key)
        if seen is not None and seen != source:
            return {**rec, "counted": False, "skip_reason": reason}
    for key, _ in keys:
        first.setdefault(key, source)
    return rec


def rebuild_both(data_dir: Path, day: str, write: bool = True, output_dir: Path | None = None) -> tuple[str, str, int]:
    """The rebuilt original and extended summaries (JSON) of every event log of the day, and the count of
    unreadable log lines; with `write`, both files are written atomically under `output_dir` (default: the
    data dir). Raises FileNotFoundError when the day has no event log."""
    sources = event_logs(data_dir, day)
    if not sources:
        raise FileNotFoundError(str(log_path(data_dir, day)))
    logs: list[list[dict[str, Any]]] = []
    bad = 0
    for source in sources:
        with open(source, encoding="utf-8", errors="replace") as f:
            records, unreadable = parse_log_lines(f)
        logs.append(records)
        bad += unreadable
    records = merge_logs(logs) if len(logs) > 1 else logs[0]
    text = summary_from_records(day, records).to_json()
    extended = insight_from_records(day, records).to_json()
    if write:
        out = output_dir if output_dir is not None else data_dir
        write_atomically(summary_path(out, day), text)
        write_atomically(insight_path(out, day), extended)
    return text, extended, bad


def rebuild(data_dir: Path, day: str, write: bool = True) -> tuple[str, int]:
    """Returns the rebuilt original-schema summary JSON and the count of unreadable log lines (writes both)."""
    text, _, bad = rebuild_both(data_dir, day, write)
    return text, bad


def prometheus_insight_path(out: Path, day: str) -> Path:
    return out / "metrics" / f"copilot-insight_{day}.from-prometheus.json"


def _from_prometheus(url: str, days: list[str], out: Path, stdout: bool) -> int:
    from exporter.fleet import insight_from_prometheus, prometheus_fetch

    fetch = prometheus_fetch(url)
    for day in days:
        try:
            text = insight_from_prometheus(fetch, day).to_json()
        except (OSError, ValueError) as e:
            print(f"{day}: cannot read Prometheus at {url}: {e}", file=sys.stderr)
            return 1
        if stdout:
            print(text)
        else:
            write_atomically(prometheus_insight_path(out, day), text)
            print(f"{day}: wrote {prometheus_insight_path(out, day)} from {url}", file=sys.stderr)
    return 0


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
        "Every event log of the day is merged (copilot-events_<day>.<instance>.jsonl of replicas sharing the data "
        "dir, and copilot-events_<day>.jsonl): the summary is the sum, a call counted by two replicas counts once. "
        "A single proxy: stop it first, or it may overwrite the files.",
    )
    parser.add_argument("days", nargs="*", type=_day, help="UTC days, YYYY-MM-DD (default: today)")
    parser.add_argument("--data-dir", default="logs", type=Path, help="the proxy's copilot_data_dir (default: logs)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="write the summaries under this directory's metrics/ instead of the data dir's",
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        default="",
        help="build the extended summary from Prometheus at URL instead (exact increases from the raw samples; "
        "written as metrics/copilot-insight_<day>.from-prometheus.json)",
    )
    parser.add_argument("--stdout", action="store_true", help="print the summary instead of writing the files")
    parser.add_argument(
        "--extended", action="store_true", help="with --stdout: print the extended summary instead of the original"
    )
    args = parser.parse_args(argv)
    days = args.days or [datetime.now(UTC).strftime("%Y-%m-%d")]
    if args.prometheus:
        return _from_prometheus(args.prometheus, days, args.output_dir or args.data_dir, args.stdout)
    status = 0
    for day in days:
        try:
            text, extended, bad = rebuild_both(args.data_dir, day, write=not args.stdout, output_dir=args.output_dir)
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
            out = args.output_dir if args.output_dir is not None else args.data_dir
            merged = len(event_logs(args.data_dir, day))
            written = f"{summary_path(out, day)} and {insight_path(out, day)}"
            print(f"{day}: wrote {written} from {merged} event log(s)", file=sys.stderr)
        if bad:
            print(f"{day}: skipped {bad} unreadable line(s) (cut by a crash)", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
