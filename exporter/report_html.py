"""Renders a Report as one self-contained HTML page: escaped tables, inlined Chart.js and chart data, a strict CSP."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from html import escape
from importlib.resources import files
from typing import Any

from exporter.report_model import DayRow, Report, TeamRow, Totals, UserRow, ratio

NANO = 1_000_000_000
_TOP = 12  # categories per bar chart; the rest are summed into "other"


def asset(name: str) -> str:
    text = files("exporter").joinpath("assets", name).read_text(encoding="utf-8")
    if name.endswith(".js"):
        # No source map is shipped; a `sourceMappingURL` would make developer tools fetch one.
        text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL="))
        if "</script" in text.lower():
            raise ValueError(f"asset {name} contains </script and cannot be inlined")
    return text


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def json_for_script(data: object) -> str:
    """JSON that cannot end its <script> element or open markup: <, > and & become \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def fmt_credits(nano: int | None) -> str:
    if nano is None:
        return "—"
    if 0 < nano < NANO // 100:
        return "<0.01"
    return f"{nano / NANO:,.2f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _cell(field: str, value: int | float | str | None, text: str, title: str = "") -> str:
    sort = "" if value is None else escape(str(value))
    extra = f' title="{escape(title)}"' if title else ""
    return f'<td data-field="{escape(field)}" data-value="{sort}"{extra}>{escape(text)}</td>'


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chat_turns", "Chat turns"),
    ("completions", "Completions"),
    ("interactions", "Interactions"),
    ("model_calls", "Model calls"),
    ("input_tokens", "Input tokens"),
    ("output_tokens", "Output tokens"),
    ("errors", "Errors"),
    ("acceptance", "Acceptance"),
    ("accepted_lines", "Accepted lines"),
    ("credits", "AI credits"),
)


def _totals_cells(t: Totals) -> list[str]:
    acc = t.acceptance
    no_telemetry = "no completion telemetry seen" if acc is None else ""
    ints = {k: getattr(t, k) for k, _ in _COLUMNS[:7]}
    cells = [_cell(k, v, fmt_int(v)) for k, v in ints.items()]
    r = t.acceptance_ratio
    shown = f"{acc.accepted:,} of {acc.shown:,} shown" if acc else no_telemetry
    cells.append(_cell("acceptance", None if r is None else round(r, 6), fmt_ratio(r), shown))
    lines = acc.accepted_lines if acc else None
    cells.append(_cell("accepted_lines", lines, fmt_int(lines), no_telemetry))
    cells.append(_cell("credits", t.credits_nano, fmt_credits(t.credits_nano)))
    return cells


def _head(first: Sequence[tuple[str, str]]) -> str:
    cols = [*first, *_COLUMNS]
    ths = "".join(
        f'<th scope="col" data-field="{escape(k)}"><button type="button">{escape(label)}</button></th>'
        for k, label in cols
    )
    return f"<thead><tr>{ths}</tr></thead>"


def users_table(rows: Sequence[UserRow]) -> str:
    body = "".join(
        "<tr>"
        + _cell("user", r.user, r.user)
        + _cell("teams", ", ".join(r.teams), ", ".join(r.teams) or "—")
        + _cell("days_active", r.days_active, str(r.days_active))
        + "".join(_totals_cells(r.totals))
        + "</tr>"
        for r in rows
    )
    head = _head((("user", "User"), ("teams", "Teams"), ("days_active", "Days")))
    return f'<div class="scroll"><table id="users-table" class="sortable">{head}<tbody>{body}</tbody></table></div>'


def teams_table(rows: Sequence[TeamRow]) -> str:
    body = "".join(
        "<tr>"
        + _cell("team", r.team, r.team)
        + _cell("members", r.members, str(r.members))
        + "".join(_totals_cells(r.totals))
        + "</tr>"
        for r in rows
    )
    head = _head((("team", "Team"), ("members", "Members")))
    return f'<div class="scroll"><table id="teams-table" class="sortable">{head}<tbody>{body}</tbody></table></div>'


def days_table(rows: Sequence[DayRow]) -> str:
    body = "".join(
        "<tr>"
        + _cell("day", r.day, r.day)
        + _cell("sources", " + ".join(r.sources), " + ".join(r.sources) or "no data")
        + _cell("users", r.users, str(r.users))
        + ("".join(_totals_cells(r.totals)) if r.sources else "".join(_cell(k, None, "—") for k, _ in _COLUMNS))
        + "</tr>"
        for r in rows
    )
    head = _head((("day", "Day"), ("sources", "Files"), ("users", "Users")))
    return f'<div class="scroll"><table id="days-table" class="sortable">{head}<tbody>{body}</tbody></table></div>'


def _cards(report: Report) -> str:
    t = report.totals
    acc = t.acceptance
    cards = [
        ("users", "Users", str(len(report.users))),
        ("chat_turns", "Chat turns", fmt_int(t.chat_turns)),
        ("completions", "Completions", fmt_int(t.completions)),
        ("interactions", "Interactions", fmt_int(t.interactions)),
        ("model_calls", "Model calls", fmt_int(t.model_calls)),
        ("tokens", "Tokens in / out", f"{fmt_int(t.input_tokens)} / {fmt_int(t.output_tokens)}"),
        ("acceptance", "Acceptance", fmt_ratio(t.acceptance_ratio)),
        ("accepted_lines", "Accepted lines", fmt_int(acc.accepted_lines if acc else None)),
        ("credits", "AI credits", fmt_credits(t.credits_nano)),
    ]
    return "".join(
        f'<div class="card" data-card="{escape(k)}"><span class="label">{escape(label)}</span>'
        f'<span class="value">{escape(value)}</span></div>'
        for k, label, value in cards
    )


def _top(values: dict[str, int]) -> dict[str, list[Any]]:
    items = list(values.items())
    head, rest = items[:_TOP], items[_TOP:]
    if rest:
        head.append(("other (rest)", sum(v for _, v in rest)))
    return {"labels": [k for k, _ in head], "values": [v for _, v in head]}


def _top_credits(values: dict[str, int]) -> dict[str, list[Any]]:
    top = _top(values)
    return {"labels": top["labels"], "values": [v / NANO for v in top["values"]]}


def chart_data(report: Report) -> dict[str, Any]:
    """The series the page script draws; None marks a day without the figure (a gap, never a 0)."""
    days = report.days
    return {
        "days": [d.day for d in days],
        "chat_turns": [d.totals.chat_turns if d.sources else None for d in days],
        "completions": [d.totals.completions if d.sources else None for d in days],
        "model_calls": [d.totals.model_calls for d in days],
        "credits": [None if d.totals.credits_nano is None else d.totals.credits_nano / NANO for d in days],
        "acceptance": [None if (r := ratio(d.totals.acceptance)) is None else round(r * 100, 2) for d in days],
        "editors": _top(report.editors),
        "languages": _top(report.languages),
        "kinds": _top(report.kinds),
        "models": _top(report.models),
        "credits_by_model": _top_credits(report.credits_by_model),
        "teams": {
            "labels": [t.team for t in report.teams],
            "values": [t.totals.chat_turns + t.totals.completions for t in report.teams],
        },
    }


def _chart(chart_id: str, title: str, note: str = "") -> str:
    p = f'<p class="note">{escape(note)}</p>' if note else ""
    return (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>{p}'
        f'<div class="canvas-box"><canvas id="{escape(chart_id)}" role="img" aria-label="{escape(title)}"></canvas>'
        "</div></figure>"
    )


def _sections(report: Report) -> list[str]:
    t = report.totals
    out = [
        '<section id="trend"><h2>Over the days</h2>'
        + _chart("chart-trend", "Chat turns and completions per day; model calls where recorded")
        + "</section>",
        '<section id="users"><h2>Users</h2><p class="note">Click a column to sort. — means the figure is not in '
        "the files of the range (older or rebuilt days have only chat turns and completions; acceptance needs "
        "completion telemetry).</p>" + users_table(report.users) + "</section>",
    ]
    if report.teams:
        out.append(
            '<section id="teams"><h2>Teams</h2><p class="note">A user in several teams counts in each team; '
            "team rows do not add up to the totals.</p>"
            + teams_table(report.teams)
            + _chart("chart-teams", "Chat turns and completions per team")
            + "</section>"
        )
    out.append(
        '<section id="breakdown"><h2>Editors, languages, kinds, models</h2><div class="grid">'
        + _chart("chart-editors", "Interactions by editor")
        + _chart("chart-languages", "Completions by language")
        + _chart("chart-kinds", "Interactions by kind")
        + _chart("chart-models", "Model calls by model", "Only days with the extended summary.")
        + "</div></section>"
    )
    if t.credits_nano is not None:
        src = ", ".join(f"{k}: {fmt_credits(v)}" for k, v in report.credits_by_source.items()) or "—"
        out.append(
            f'<section id="credits"><h2>AI credits</h2><p class="note">By source: {escape(src)}.</p><div class="grid">'
            + _chart("chart-credits", "AI credits per day")
            + _chart("chart-credits-models", "AI credits by model")
            + "</div></section>"
        )
    if t.acceptance is not None:
        out.append(
            '<section id="acceptance"><h2>Acceptance</h2>'
            + _chart("chart-acceptance", "Accepted / shown completions per day, %", "Gaps: no telemetry seen.")
            + "</section>"
        )
    out.append('<section id="days"><h2>Days</h2>' + days_table(report.days) + "</section>")
    return out


def render(report: Report, generated_at: str) -> str:
    """The whole page; every value from the files goes through escape() or json_for_script()."""
    chart_js = asset("chart.umd.min.js")
    page_js = asset("report.js")
    css = asset("report.css")
    csp = (
        f"default-src 'none'; script-src {_csp_hash(chart_js)} {_csp_hash(page_js)}; "
        f"style-src {_csp_hash(css)}; img-src data:; base-uri 'none'; form-action 'none'"
    )
    skipped = (
        '<p class="warning">Skipped unreadable files: ' + escape(", ".join(report.skipped_files)) + "</p>"
        if report.skipped_files
        else ""
    )
    span = report.first if report.first == report.last else f"{report.first} to {report.last}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Copilot usage {escape(span)}</title><style>{css}</style></head><body>"
        f'<header><h1>Copilot usage</h1><p class="meta">{escape(span)} (UTC) · {report.days_with_data} of '
        f"{len(report.days)} days with data · generated {escape(generated_at)}</p>{skipped}</header>"
        f'<section id="totals"><h2>Totals</h2><div class="cards">{_cards(report)}</div></section>'
        + "".join(_sections(report))
        + "<footer><p>Made by copilot-proxy-insight report from the daily summaries. Charts: Chart.js (MIT).</p>"
        "</footer>"
        f'<script type="application/json" id="report-data">{json_for_script(chart_data(report))}</script>'
        f"<script>{chart_js}</script><script>{page_js}</script></body></html>\n"
    )
