"""`copilot-proxy-insight report`: one self-contained HTML page from the daily summaries of a date range."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from exporter.report_data import Day, SummaryError, day_range, load_day, scan_days
from exporter.report_html import render
from exporter.report_model import Report, build_report
from exporter.values import quick_init

PROGRESS_FROM = 15  # ranges of more days than this report progress on stderr


class ReportError(Exception):
    """A problem that stops the report; main() prints it as one line and exits 1."""


def parse_day(value: str) -> str:
    """argparse type for YYYY-MM-DD (exactly: fromisoformat alone would also take 20261124)."""
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {value!r}")


def metrics_dir(data_dir: Path) -> Path:
    """The data dir's metrics/ folder; raises ReportError when it is missing or holds no summary."""
    if not data_dir.is_dir():
        raise ReportError(f"data dir {data_dir} does not exist (or is not a directory)")
    metrics = data_dir / "metrics"
    try:
        found = metrics.is_dir() and bool(scan_days(metrics))
    except OSError as e:
        raise ReportError(f"cannot list {metrics}: {e.strerror or e}") from e
    if not found:
        raise ReportError(f"no daily summaries in {metrics} (is {data_dir} the proxy's copilot_data_dir?)")
    return metrics


@quick_init
@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive UTC day range."""

    first: str
    last: str


def resolve_range(found: list[str], first: str | None, last: str | None, days: int | None, today: str) -> Range:
    """--to defaults to today with --days, else to the newest day found; --from to --to-(N-1) or the oldest."""
    if first and days:
        raise ReportError("give --from or --days, not both")
    end = last or (today if days else found[-1])
    start = (date.fromisoformat(end) - timedelta(days=days - 1)).isoformat() if days else first or found[0]
    if start > end:
        raise ReportError(f"empty range: {start} is after {end}")
    return Range(start, end)


def load_range(metrics: Path, rng: Range, err: TextIO) -> tuple[list[str], dict[str, Day], list[str]]:
    """Reads every day of the range; unusable files are skipped with a warning naming them."""
    days = day_range(rng.first, rng.last)
    loaded: dict[str, Day] = {}
    skipped: list[str] = []
    step = max(1, len(days) // 10)
    for i, day in enumerate(days, 1):
        problems: list[SummaryError] = []
        d = load_day(metrics, day, problems)
        for e in problems:
            print(f"report: warning: skipped {e}", file=err)
            skipped.append(e.path)
        if d is not None:
            loaded[day] = d
        if len(days) > PROGRESS_FROM and (i % step == 0 or i == len(days)):
            print(f"report: read {i}/{len(days)} days ({day})", file=err)
    if not loaded:
        why = "no readable summary" if skipped else "no summary"
        raise ReportError(f"{why} in {metrics} from {rng.first} to {rng.last}")
    return days, loaded, skipped


def make_report(
    data_dir: Path,
    first: str | None = None,
    last: str | None = None,
    days: int | None = None,
    today: str | None = None,
    err: TextIO | None = None,
) -> Report:
    err = err or sys.stderr
    metrics = metrics_dir(data_dir)
    try:
        found = scan_days(metrics)
    except OSError as e:  # removed or made unreadable since the check
        raise ReportError(f"cannot list {metrics}: {e.strerror or e}") from e
    rng = resolve_range(found, first, last, days, today or datetime.now(UTC).date().isoformat())
    range_days, loaded, skipped = load_range(metrics, rng, err)
    return build_report(range_days, loaded, skipped)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copilot-proxy-insight report",
        description="Write one self-contained HTML page (no network needed: charts and data are inline) from "
        "the daily summaries in DATA_DIR/metrics: totals, users, teams, editors, languages, kinds, models, "
        "acceptance and AI credits. Days are UTC. Without --from/--to/--days: every day found.",
    )
    parser.add_argument("--data-dir", default="logs", type=Path, help="the proxy's copilot_data_dir (default: logs)")
    parser.add_argument("--from", dest="first", type=parse_day, help="first day, YYYY-MM-DD (default: oldest)")
    parser.add_argument("--to", dest="last", type=parse_day, help="last day (default: newest; today with --days)")
    parser.add_argument("--days", type=int, help="the N days ending with --to")
    parser.add_argument(
        "--serve",
        type=int,
        metavar="PORT",
        help="instead of writing a file, serve the page on http://127.0.0.1:PORT/, made afresh for every request "
        "(default range: today); 0 picks a free port",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("report.html"), help="HTML file (default: report.html), - for stdout"
    )
    return parser


class _LiveHandler(BaseHTTPRequestHandler):
    """GET / renders the report from the files as they are now; nothing else is served."""

    def __init__(self, args: argparse.Namespace, *rest: Any) -> None:
        self.args = args
        super().__init__(*rest)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/report.html"):
            self._send(404, "text/plain", "not found: the report is at /\n")
            return
        a = self.args
        try:
            report = make_report(a.data_dir, a.first, a.last, a.days)
        except ReportError as e:
            self._send(503, "text/plain", f"{e}\n")
            return
        self._send(200, "text/html", render(report, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")))

    def _send(self, code: int, kind: str, text: str) -> None:
        body = text.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"report: {self.address_string()} {format % args}", file=sys.stderr)


def serve(args: argparse.Namespace) -> int:
    """Serves the live page on 127.0.0.1 only (the figures are not for the network) until interrupted."""
    if args.first is None and args.last is None and args.days is None:
        args.days = 1  # today's report, following the UTC day
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.serve), partial(_LiveHandler, args))
    except OSError as e:
        print(f"report: cannot listen on 127.0.0.1:{args.serve}: {e}", file=sys.stderr)
        return 1
    print(f"report: serving http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.days is not None and args.days < 1:
        print("report: --days must be at least 1", file=sys.stderr)
        return 2
    if args.serve is not None:
        try:
            metrics_dir(args.data_dir)
        except ReportError as e:
            print(f"report: {e}", file=sys.stderr)
            return 1
        return serve(args)
    try:
        report = make_report(args.data_dir, args.first, args.last, args.days)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    html = render(report, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    if str(args.output) == "-":
        sys.stdout.write(html)
        return 0
    try:
        args.output.write_text(html, encoding="utf-8")
    except OSError as e:
        print(f"report: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    print(
        f"report: wrote {args.output} ({report.first} to {report.last}, {report.days_with_data} days with data, "
        f"{len(report.users)} users)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
