"""The HTML report: data loading, rendering, escaping, the command, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from exporter import reconcile, report
from exporter.reconcile_compare import FIELDS
from exporter.report_data import editor_name, load_day
from exporter.report_html import json_for_script, render
from exporter.report_model import build_report

DATA = Path(__file__).parent / "data" / "report"
METRICS = DATA / "metrics"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "report.png"
HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">"\'&'


# --------------------------------------------------------------------------------------------------
# A small Chrome DevTools protocol client: enough to load a page, collect its console, exceptions and
# network requests, evaluate expressions and take a screenshot.
# --------------------------------------------------------------------------------------------------


def chromium() -> str:
    """The Chromium binary; these tests fail (never skip) without it (`./dev test` installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not on PATH: install it (Debian: apt-get install chromium), these tests must run it")


class Page:
    """One browser tab over CDP; every message that is not a reply is kept in `events`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def _recv(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from Chromium in time")
        msg: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
        return msg

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for msg in self.events:
            if msg.get("method") == event:
                return msg
        while True:
            msg = self._recv(deadline)
            self.events.append(msg)
            if msg.get("method") == event:
                return msg

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors (CSP violations among them)."""
        out = []
        for msg in self.events:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                out.append(f"log: {params['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [m["params"]["request"]["url"] for m in self.events if m.get("method") == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def browser() -> Iterator[str]:
    """A headless Chromium on 127.0.0.1; yields its DevTools HTTP base URL."""
    profile = Path(tempfile.mkdtemp(prefix="cpi-chromium-"))
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",  # the CI container runs as root, where Chromium refuses its sandbox
        "--disable-gpu",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--window-size=1280,900",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start its DevTools endpoint (exit {proc.poll()})")
            time.sleep(0.05)  # polling a file Chromium writes at start-up, bounded by the deadline
        port = port_file.read_text().split()[0]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def open_page(base: str, path: Path, screenshot: Path | None = None) -> Iterator[Page]:
    """A new tab on path (file:) after its load event and page script; closed afterwards."""
    target = httpx.put(f"{base}/json/new?about:blank", timeout=30).json()
    try:
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield _load(Page(ws), path, screenshot)
    finally:
        httpx.get(f"{base}/json/close/{target['id']}", timeout=30)


def _load(page: Page, path: Path, screenshot: Path | None) -> Page:
    for domain in ("Runtime", "Log", "Network", "Page"):
        page.call(f"{domain}.enable")
    page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    page.call("Page.navigate", url=path.resolve().as_uri())
    page.wait_for("Page.loadEventFired")
    deadline = time.monotonic() + 30
    while page.evaluate("document.body && document.body.getAttribute('data-ready')") != "1":
        if time.monotonic() > deadline:
            raise AssertionError(f"the page script did not finish: {page.problems()}")
        time.sleep(0.05)
    if screenshot is not None:
        size = page.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = page.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True, timeout=60)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    return page


# --------------------------------------------------------------------------------------------------
# What the fixture files say, summed here straight from the JSON (not through exporter.report_data).
# --------------------------------------------------------------------------------------------------


def _docs(prefix: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(METRICS.glob(f"{prefix}_*.json"))]


def expected_users() -> dict[str, dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    for doc in _docs("copilot-usage"):
        for name, entry in doc["usage"].items():
            u = users.setdefault(name, {"chat_turns": 0, "completions": 0, "days": set()})
            u["chat_turns"] += entry["chat_turns"]
            u["completions"] += entry["completions_count"]
            u["days"].add(doc["day"])
    for doc in _docs("copilot-insight"):
        for name, entry in doc["users"].items():
            u = users[name]
            for key, value in entry["totals"].items():
                u[key] = u.get(key, 0) + value
            acc = entry.get("acceptance")
            if acc:
                for key in ("shown", "accepted", "accepted_lines"):
                    u[key] = u.get(key, 0) + acc[key]
            if "credits" in entry:
                u["credits"] = u.get("credits", 0) + entry["credits"]["nano_aiu"]
    return users


# The fixture in words, so that the sums above are checked too.
FIXTURE_USERS = {
    "alice": {"chat_turns": 11, "completions": 24, "interactions": 26, "model_calls": 32, "input_tokens": 52400},
    "bob": {"chat_turns": 2, "completions": 17, "interactions": 13, "model_calls": 13, "input_tokens": 7000},
    "carol": {"chat_turns": 4, "completions": 0, "interactions": 4, "model_calls": 14, "input_tokens": 60000},
    "u-3f9a1c2b": {"chat_turns": 0, "completions": 5, "interactions": 5, "model_calls": 5, "input_tokens": 1000},
}


def test_fixture_sums_are_the_documented_ones() -> None:
    got = expected_users()
    for user, want in FIXTURE_USERS.items():
        assert {k: got[user].get(k) for k in want} == want, user
    assert got["alice"]["accepted"] == 6 and got["alice"]["shown"] == 20 and "shown" not in got["bob"]


# --------------------------------------------------------------------------------------------------
# Loading and rendering, without a browser
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "editor"),
    [
        ("vscode-1.106.0", "vscode"),
        ("JetBrains-IU-2025.2", "jetbrains-iu"),
        ("Neovim-0.11.2", "neovim"),
        ("cli-1.0.3", "cli"),
        ("cli", "cli"),
        ("unknown", "unknown"),
        ("Visual-Studio-17.14", "visual-studio"),
    ],
)
def test_editor_name_of_original_keys(key: str, editor: str) -> None:
    assert editor_name(key) == editor


def test_days_read_from_each_kind_of_file() -> None:
    rebuilt = load_day(METRICS, "2026-11-23")
    assert rebuilt is not None and rebuilt.sources == ("original",)
    assert rebuilt.users["bob"].interactions is None and rebuilt.users["bob"].acceptance_known is False
    assert rebuilt.users["alice"].kinds == {"chat (any)": 4, "completion": 7}
    full = load_day(METRICS, "2026-11-24")
    assert full is not None and full.sources == ("original", "extended")
    bob, carol, alice = full.users["bob"], full.users["carol"], full.users["alice"]
    assert bob.acceptance_known and bob.acceptance is None  # null: no telemetry seen, not zero
    assert not carol.acceptance_known and carol.cli_chat_turns == 4
    assert alice.acceptance is not None and alice.acceptance.accepted == 6
    assert alice.credits_nano == 2_500_000_000 and bob.teams == ("platform", "web")
    assert alice.editors == {"vscode": 21} and alice.languages == {"python": 10, "typescript": 4}
    assert load_day(METRICS, "2026-11-25") is None


def test_json_in_the_page_cannot_close_its_script() -> None:
    text = json_for_script({"user": HOSTILE})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"user": HOSTILE}


def hostile_dir(tmp_path: Path) -> Path:
    """The fixture with a hostile string as user, team, editor, language and model names."""
    metrics = tmp_path / "metrics"
    shutil.copytree(METRICS, metrics)
    path = metrics / "copilot-insight_2026-11-24.json"
    doc = json.loads(path.read_text())
    entry = doc["users"].pop("alice")
    entry["teams"] = [HOSTILE]
    entry["interactions"] = {HOSTILE: {HOSTILE: {HOSTILE: 3}}, "completion": {HOSTILE: {HOSTILE: 14}}}
    entry["model_calls"] = {"chat_panel": {HOSTILE: {"user": 3}}}
    entry["credits"]["by_model"] = {HOSTILE: 1}
    doc["users"][HOSTILE] = entry
    path.write_text(json.dumps(doc))
    orig = metrics / "copilot-usage_2026-11-24.json"
    odoc = json.loads(orig.read_text())
    odoc["usage"][HOSTILE] = odoc["usage"].pop("alice")
    orig.write_text(json.dumps(odoc))
    return tmp_path


def test_rendered_html_holds_no_raw_hostile_text(tmp_path: Path) -> None:
    rep = report.make_report(hostile_dir(tmp_path))
    html = render(rep, "now")
    assert HOSTILE not in html
    assert "<script>window.__pwned" not in html and "<img" not in html
    assert html.count("<script") == 3  # the data block, Chart.js and the page script: nothing injected
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1" in html


def test_page_is_self_contained_with_a_strict_policy() -> None:
    rep = report.make_report(DATA)
    html = render(rep, "2026-12-02 08:00 UTC")
    policy = html.split('http-equiv="Content-Security-Policy" content="', 1)[1].split('"', 1)[0]
    assert policy.startswith("default-src &#x27;none&#x27;; script-src &#x27;sha256-")
    assert "unsafe-inline" not in policy and "http" not in policy
    # Nothing that loads: no src/href attributes, no <link>, no CSS url() or @import, no source map.
    for needle in (" src=", " href=", "<link", "url(", "@import", "sourceMappingURL"):
        assert needle not in html, needle


# --------------------------------------------------------------------------------------------------
# The page in a real headless Chromium
# --------------------------------------------------------------------------------------------------

TABLE_JS = """
Array.from(document.querySelectorAll('#%s tbody tr')).map(function (tr) {
  var row = {};
  Array.from(tr.cells).forEach(function (td) {
    row[td.dataset.field] = {value: td.dataset.value, text: td.textContent};
  });
  return row;
})
"""

CHARTS_JS = """
Array.from(document.querySelectorAll('canvas')).map(function (c) {
  var chart = Chart.getChart(c), px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, inked = 0;
  for (var i = 3; i < px.length; i += 4) { if (px[i] > 0) { inked++; } }
  return {id: c.id, chart: !!chart, points: chart ? chart.data.datasets[0].data.length : 0,
          width: c.width, height: c.height, inked: inked};
})
"""


def write_report(data_dir: Path, out: Path, *extra: str) -> Path:
    assert report.main(["--data-dir", str(data_dir), "-o", str(out), *extra]) == 0
    return out


def assert_clean(page: Page) -> None:
    assert page.problems() == []
    requests = page.requests()
    assert requests, "the page load itself must show up as a request"
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_report_in_chromium_matches_the_summaries(browser: str, tmp_path: Path) -> None:
    # A fixed "generated" time: the screenshot in docs/ changes only when the page does.
    out = tmp_path / "report.html"
    out.write_text(render(report.make_report(DATA), "2026-11-27 07:00 UTC"), encoding="utf-8")
    with open_page(browser, out, screenshot=SCREENSHOT) as page:
        assert_clean(page)
        rows = {r["user"]["value"]: r for r in page.evaluate(TABLE_JS % "users-table")}
        want = expected_users()
        assert set(rows) == set(want)
        for user, exp in want.items():
            row = rows[user]
            for field in ("chat_turns", "completions", "interactions", "model_calls", "input_tokens"):
                assert row[field]["value"] == str(exp.get(field, "")), (user, field)
                assert row[field]["text"].replace(",", "") == str(exp.get(field, "—")), (user, field)
            for field in ("output_tokens", "errors"):
                assert row[field]["value"] == str(exp.get(field, "")), (user, field)
            assert row["days_active"]["value"] == str(len(exp["days"]))
            assert row["credits"]["value"] == str(exp.get("credits", ""))
            if "shown" in exp:
                assert row["acceptance"]["text"] == f"{exp['accepted'] / exp['shown'] * 100:.1f} %"
                assert row["accepted_lines"]["value"] == str(exp["accepted_lines"])
            else:  # null or absent acceptance is "no telemetry", never 0 %
                assert row["acceptance"]["text"] == "—" and row["acceptance"]["value"] == ""
        assert rows["alice"]["credits"]["text"] == "2.50" and rows["bob"]["teams"]["text"] == "platform, web"
        cards = page.evaluate(
            "Object.fromEntries(Array.from(document.querySelectorAll('.card')).map("
            "c => [c.dataset.card, c.querySelector('.value').textContent]))"
        )
        orig, ext = _docs("copilot-usage"), _docs("copilot-insight")
        assert cards["chat_turns"] == f"{sum(d['total_chat_turns'] for d in orig):,}"
        assert cards["completions"] == f"{sum(d['total_completions_count'] for d in orig):,}"
        assert cards["model_calls"] == f"{sum(d['totals']['model_calls'] for d in ext):,}"
        assert cards["users"] == "4" and cards["acceptance"] == "30.8 %" and cards["credits"] == "4.10"
    assert SCREENSHOT.stat().st_size > 20_000


def test_charts_days_and_teams_in_chromium(browser: str, tmp_path: Path) -> None:
    with open_page(browser, write_report(DATA, tmp_path / "report.html")) as page:
        assert_clean(page)
        days = {r["day"]["value"]: r for r in page.evaluate(TABLE_JS % "days-table")}
        assert days["2026-11-25"]["sources"]["text"] == "no data"
        assert days["2026-11-25"]["chat_turns"]["text"] == "—"  # a day without files is not a day of zeros
        assert days["2026-11-23"]["sources"]["text"] == "original"
        assert days["2026-11-24"]["interactions"]["value"] == "43"
        teams = {r["team"]["value"]: r for r in page.evaluate(TABLE_JS % "teams-table")}
        assert teams["platform"]["members"]["value"] == "2" and teams["web"]["members"]["value"] == "2"
        charts = {c["id"]: c for c in page.evaluate(CHARTS_JS)}
        assert set(charts) == {
            "chart-trend", "chart-teams", "chart-editors", "chart-languages", "chart-kinds", "chart-models",
            "chart-credits", "chart-credits-models", "chart-acceptance",
        }  # fmt: skip
        for c in charts.values():
            assert c["chart"] and c["width"] > 100 and c["height"] > 100, c
            assert c["inked"] > 500, c  # something was drawn
        assert charts["chart-trend"]["points"] == 4  # one per day of the range, the empty day included
        trend = page.evaluate("Chart.getChart(document.getElementById('chart-trend')).data.datasets[0].data")
        assert trend == [4, 11, None, 2]
        # At 1280 px the tables fit (the screenshot shows them whole, nothing scrolls sideways).
        widths = page.evaluate(
            "Array.from(document.querySelectorAll('.scroll')).map(d => d.scrollWidth - d.clientWidth)"
        )
        assert widths == [0, 0, 0]


def test_sections_without_data_are_left_out(tmp_path: Path) -> None:
    html = render(report.make_report(DATA, first="2026-11-23", last="2026-11-23"), "now")
    for section in ('id="teams"', 'id="credits"', 'id="acceptance"', 'id="chart-teams"', 'id="chart-credits"'):
        assert section not in html
    assert 'data-card="acceptance"><span class="label">Acceptance</span><span class="value">—' in html


def test_tables_sort_by_clicked_column(browser: str, tmp_path: Path) -> None:
    with open_page(browser, write_report(DATA, tmp_path / "report.html")) as page:

        def order() -> list[str]:
            return [r["user"]["value"] for r in page.evaluate(TABLE_JS % "users-table")]

        def click(field: str) -> None:
            page.evaluate(f"document.querySelector('#users-table th[data-field={field}] button').click()")

        click("chat_turns")
        assert order() == ["alice", "carol", "bob", "u-3f9a1c2b"]
        click("chat_turns")
        assert order() == ["u-3f9a1c2b", "bob", "carol", "alice"]
        click("acceptance")  # 33.3 %, 30.0 %, then the users without telemetry, last either way
        assert order()[:2] == ["u-3f9a1c2b", "alice"]
        click("acceptance")
        assert order()[:2] == ["alice", "u-3f9a1c2b"]
        click("user")
        assert order() == ["u-3f9a1c2b", "carol", "bob", "alice"]
        assert_clean(page)


def test_hostile_names_stay_text_in_chromium(browser: str, tmp_path: Path) -> None:
    out = write_report(hostile_dir(tmp_path), tmp_path / "report.html")
    with open_page(browser, out) as page:
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        assert page.evaluate("document.scripts.length") == 3
        users = [r["user"]["text"] for r in page.evaluate(TABLE_JS % "users-table")]
        assert HOSTILE in users
        teams = [r["team"]["text"] for r in page.evaluate(TABLE_JS % "teams-table")]
        assert HOSTILE in teams
        labels = page.evaluate("Chart.getChart(document.getElementById('chart-models')).data.labels")
        assert HOSTILE in labels
        assert_clean(page)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "exporter.report", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_help_names_the_subcommand() -> None:
    done = run_module("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: copilot-proxy-insight report") and "--days" in done.stdout


def test_module_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = run_module("--data-dir", str(DATA), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "4 users" in done.stderr and out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", [], "does not exist"),
        ("empty", [], "no daily summaries in"),
        ("no-metrics-files", [], "no daily summaries in"),
        ("fixture", ["--from", "2027-01-01", "--to", "2027-01-05"], "no summary in"),
        ("fixture", ["--from", "2026-11-26", "--to", "2026-11-23"], "empty range"),
        ("fixture", ["--from", "2026-11-20", "--days", "3"], "not both"),
    ],
)
def test_clear_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str], message: str
) -> None:
    data = {"missing": tmp_path / "nope", "empty": tmp_path, "fixture": DATA}.get(setup, tmp_path)
    if setup == "no-metrics-files":
        (tmp_path / "metrics").mkdir()
        (tmp_path / "metrics" / "notes.txt").write_text("x")
    out = tmp_path / "r.html"
    assert report.main(["--data-dir", str(data), "-o", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("report: ")
    assert not out.exists()


def test_bad_day_argument_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main(["--data-dir", str(DATA), "--from", "20261124"])
    assert exc.value.code == 2 and "not a day (YYYY-MM-DD): '20261124'" in capsys.readouterr().err


def test_unreadable_file_is_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(METRICS, tmp_path / "metrics")
    broken = tmp_path / "metrics" / "copilot-insight_2026-11-24.json"
    broken.write_text('{"schema_version": 1, "users": {')  # cut short
    out = tmp_path / "r.html"
    assert report.main(["--data-dir", str(tmp_path), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"report: warning: skipped {broken}: not JSON" in err
    html = out.read_text()
    assert "Skipped unreadable files: " + str(broken) in html
    rep = report.make_report(tmp_path, err=sys.stderr)
    # The rest is kept, the day's readable original file included.
    assert [(d.day, d.sources) for d in rep.days if d.sources] == [
        ("2026-11-23", ("original",)),
        ("2026-11-24", ("original",)),
        ("2026-11-26", ("original", "extended")),
    ]
    (tmp_path / "metrics" / "copilot-usage_2026-11-23.json").write_text("[]")
    (tmp_path / "metrics" / "copilot-usage_2026-11-26.json").write_bytes(b"\xff\xfe")
    (tmp_path / "metrics" / "copilot-insight_2026-11-26.json").unlink()
    (tmp_path / "metrics" / "copilot-usage_2026-11-24.json").write_text('{"day": "2026-11-24"}')
    assert report.main(["--data-dir", str(tmp_path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not a summary object" in err and "cannot read" in err and "no usage object" in err
    assert err.splitlines()[-1].startswith("report: no readable summary in")


def test_range_options(capsys: pytest.CaptureFixture[str]) -> None:
    rep = report.make_report(DATA, last="2026-11-26", days=2)
    assert (rep.first, rep.last, rep.days_with_data) == ("2026-11-25", "2026-11-26", 1)
    assert report.make_report(DATA, first="2026-11-24").first == "2026-11-24"
    rep = report.make_report(DATA, days=7, today="2026-11-28")  # --days ends today by default
    assert (rep.first, rep.last, rep.days_with_data) == ("2026-11-22", "2026-11-28", 3)
    assert capsys.readouterr().err == ""  # short ranges: no progress lines


def test_long_ranges_report_progress(capsys: pytest.CaptureFixture[str]) -> None:
    rep = report.make_report(DATA, first="2026-10-01", last="2026-11-29")
    assert len(rep.days) == 60 and rep.days_with_data == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "report: read 6/60 days (2026-10-06)" and lines[-1] == "report: read 60/60 days (2026-11-29)"
    assert len(lines) == 10


def test_build_report_counts_multi_team_users_in_each_team() -> None:
    days = ["2026-11-24"]
    loaded = {"2026-11-24": load_day(METRICS, "2026-11-24")}
    rep = build_report(days, {k: v for k, v in loaded.items() if v is not None})
    teams = {t.team: t for t in rep.teams}
    assert teams["platform"].totals.chat_turns == 5 + 2 and teams["web"].totals.chat_turns == 2 + 4
    assert sum(t.totals.chat_turns for t in rep.teams) > rep.totals.chat_turns


# --------------------------------------------------------------------------------------------------
# docs/report.md against the code
# --------------------------------------------------------------------------------------------------


def test_docs_name_every_option_status_and_field() -> None:
    text = (ROOT / "docs" / "report.md").read_text(encoding="utf-8")
    for parser in (report._parser(), reconcile._parser()):
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text, f"docs/report.md does not document {flag}"
    for status in reconcile.STATUSES:
        assert f"`{status}`" in text
    for field in FIELDS:
        assert f"| `{field}` |" in text, f"docs/report.md has no row for the field {field}"
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", link):
            assert (ROOT / "docs" / link.partition("#")[0]).exists(), link
    assert "(reference.md#daily-summary)" in text and "## Daily summary" in (ROOT / "docs" / "reference.md").read_text()


# --------------------------------------------------------------------------------------------------
# --serve
# --------------------------------------------------------------------------------------------------


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """`python -m exporter.report --serve 0 …` running; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "exporter.report", "--serve", "0", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while True:
            ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail("report --serve did not say where it listens")
            line = proc.stderr.readline()
            if line.startswith("report: serving http://127.0.0.1:"):
                break
            assert line, f"report --serve exited: {proc.wait()}"
        yield line.split()[2].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_renders_the_files_as_they_are_now(tmp_path: Path) -> None:
    shutil.copytree(METRICS, tmp_path / "metrics")
    with serving("--data-dir", str(tmp_path), "--to", "2026-11-26", "--days", "4") as base:
        page = httpx.get(base + "/", timeout=30)
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-store"
        assert '<span class="label">Chat turns</span><span class="value">17</span>' in page.text
        doc = json.loads((tmp_path / "metrics" / "copilot-usage_2026-11-26.json").read_text())
        doc["total_chat_turns"] = doc["usage"]["alice"]["chat_turns"] = 12
        doc["usage"]["alice"]["chat"] = {"vscode-1.106.0": 12}
        (tmp_path / "metrics" / "copilot-usage_2026-11-26.json").write_text(json.dumps(doc))
        again = httpx.get(base + "/", timeout=30).text
        assert '<span class="label">Chat turns</span><span class="value">27</span>' in again
        assert httpx.get(base + "/etc/passwd", timeout=30).status_code == 404


def test_serve_without_data_in_range_answers_503(tmp_path: Path) -> None:
    with serving("--data-dir", str(DATA)) as base:  # default range: today, which the fixture has no file for
        answer = httpx.get(base + "/", timeout=30)
        assert answer.status_code == 503 and answer.text.startswith("no summary in ")


def test_serve_needs_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--data-dir", str(tmp_path / "nope"), "--serve", "0"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_days_must_be_positive_and_stdout_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--data-dir", str(DATA), "--days", "0"]) == 2
    assert capsys.readouterr().err == "report: --days must be at least 1\n"
    assert report.main(["--data-dir", str(DATA), "--from", "2026-11-24", "--to", "2026-11-24", "-o", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!DOCTYPE html>") and "<title>Copilot usage 2026-11-24</title>" in out


def test_an_unlistable_metrics_dir_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(metrics: Path) -> list[str]:
        raise PermissionError(13, "Permission denied", str(metrics))

    (tmp_path / "metrics").mkdir()
    monkeypatch.setattr(report, "scan_days", denied)  # root ignores chmod, so the refusal is simulated
    assert report.main(["--data-dir", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 1
    assert capsys.readouterr().err == f"report: cannot list {tmp_path / 'metrics'}: Permission denied\n"
