"""Tests of alerts/copilot-rules.yaml: promtool checks and unit tests, alert conventions, runbooks, metric names."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporter.cli import RUNBOOK_BASE
from exporter.metricdefs import METRICS, all_series_names

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "alerts" / "copilot-rules.yaml"
RULE_TESTS_DIR = ROOT / "alerts" / "tests"
RUNBOOKS = ROOT / "docs" / "alerts.md"
JOB = "copilot-proxy-insight"

SEVERITIES = frozenset({"critical", "warning", "info"})
# Series Prometheus itself creates: scrape health per target and the state of alerting rules.
BUILTIN_SERIES = frozenset(
    """
    up scrape_duration_seconds scrape_samples_scraped scrape_samples_post_metric_relabeling scrape_series_added
    ALERTS ALERTS_FOR_STATE
    """.split()
)
# Labels of the built-in series, and the labels Prometheus adds to every scraped series.
BUILTIN_LABELS: dict[str, frozenset[str]] = {
    "ALERTS": frozenset(
        {"alertname", "alertstate", "severity", "kind", "code", "component", "job", "instance", "user"}
    ),
    "ALERTS_FOR_STATE": frozenset({"alertname", "severity", "kind", "code", "component", "job", "instance", "user"}),
}
TARGET_LABELS = frozenset({"job", "instance"})

# PromQL words that look like identifiers but are not metric names: aggregation operators (they may be
# followed by `by`/`without` instead of a parenthesis), binary operators, modifiers and literals.
# Functions are recognised by the `(` that follows them.
PROMQL_WORDS = frozenset(
    """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    by without on ignoring group_left group_right offset bool and or unless atan2 inf nan start end
    """.split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"')
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


# --------------------------------------------------------------------------------------------------
# Helpers shared with tests/test_dashboards.py
# --------------------------------------------------------------------------------------------------


def promtool() -> str:
    """The promtool binary; these tests fail (never skip) without it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: install Prometheus' promtool, these tests must run it")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=300, check=False)


def load_rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) in the rule file, in order."""
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> dict[str, str]:
    """Recording rule name -> expression."""
    return {rule["record"]: rule["expr"] for rule in load_rules() if "record" in rule}


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _LABEL_LIST.sub(" ", text)  # by (...), on (...), group_left (...)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call is None and word not in PROMQL_WORDS:
            names.add(word)
    return names


def metric_labels() -> dict[str, frozenset[str]]:
    """Sample name -> the labels it may carry (catalogue labels, target labels, `le` for buckets)."""
    labels: dict[str, frozenset[str]] = {}
    for metric in METRICS:
        for name in metric.series_names:
            extra = {"le"} if name.endswith("_bucket") else set()
            labels[name] = frozenset(metric.labels) | TARGET_LABELS | extra
    labels.update({name: TARGET_LABELS for name in BUILTIN_SERIES})
    labels.update(BUILTIN_LABELS)
    rules = recording_rules()

    def rule_labels(name: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        out: set[str] = set()
        for used in metric_names(rules[name]) - seen:
            out |= rule_labels(used, seen | {name}) if used in rules else labels.get(used, frozenset())
        return frozenset(out)

    for name in rules:
        labels[name] = rule_labels(name)
    return labels


def label_problems(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """Label names in selectors and `by`/`without` clauses that the selected metrics cannot carry."""
    problems = []
    in_expr: set[str] = set()
    for name in metric_names(expr):
        in_expr |= known.get(name, frozenset())
    for match in _SELECTOR.finditer(_STRING.sub(lambda m: '"' + "x" * (len(m.group()) - 2) + '"', expr)):
        name = match.group(1)
        inner = expr[match.start(2) : match.end(2)]
        matchers = _MATCHER.findall(inner)
        allowed = known.get(name, frozenset()) if name else in_expr
        # {__name__=~"a|b", label=~"…"}: a label of any of the named metrics (on the others, the series lack
        # it, which a matcher that matches "" accepts: a team filter that keeps series without a team).
        for names in re.findall(r'__name__=~"([\w:|]+)"', inner):
            allowed = allowed.union(*(known.get(n, frozenset()) for n in names.split("|")))
        # __name__ selects metrics by name (a dashboard variable reading several metrics): every series has it.
        problems += [f"{name or '{}'}{{{label}}}" for label in matchers if label not in allowed | {"__name__"}]
    for match in _BY.finditer(expr):
        for label in filter(None, (part.strip() for part in match.group(1).split(","))):
            if label not in in_expr:
                problems.append(f"by/without ({label})")
    return problems


def unknown_metrics(expr: str, allowed: Iterable[str]) -> set[str]:
    return metric_names(expr) - set(allowed)


def allowed_metric_names() -> frozenset[str]:
    return all_series_names() | BUILTIN_SERIES | frozenset(recording_rules())


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the Markdown headings of a document."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def runbook_sections(markdown: str) -> dict[str, str]:
    """Level-2 heading -> section text."""
    sections: dict[str, str] = {}
    current = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def parse_duration(text: str) -> int:
    """Seconds in a Prometheus duration such as 1h30m or 5m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    return int(sum(int(n) * units[u] for n, u in parts))


def rule_test_cases() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(RULE_TESTS_DIR.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            yield path, case


# --------------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = sorted(RULE_TESTS_DIR.glob("*.yaml"))
    assert files, "alerts/tests/ has no promtool unit test files"
    for path in files:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../copilot-rules.yaml"], f"{path.name} must test the shipped rule file"
    result = run_promtool("test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_a_broken_expectation_makes_promtool_fail(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one annotation changed is rejected."""
    source = RULE_TESTS_DIR / "upstream.yaml"
    broken = source.read_text().replace(f"runbook_url: {RUNBOOK_BASE}#copilotratelimited", "runbook_url: #wrong", 1)
    assert broken != source.read_text()
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    shutil.copy(RULES_FILE, tmp_path / "alerts" / "copilot-rules.yaml")
    target = tmp_path / "alerts" / "tests" / "upstream.yaml"
    target.write_text(broken)
    result = run_promtool("test", "rules", str(target))
    assert result.returncode != 0
    assert "CopilotRateLimited" in result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Conventions
# --------------------------------------------------------------------------------------------------


def test_alerts_follow_the_conventions() -> None:
    alerts = alerting_rules()
    assert alerts
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"Copilot(?:[A-Z][a-z0-9]*)+", name), f"{name}: not Copilot... CamelCase"
        assert "for" in rule and parse_duration(rule["for"]) > 0, f"{name}: needs a for: duration"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        assert set(annotations) >= {"summary", "description", "runbook_url"}, f"{name}: annotations"
        assert "{{" not in annotations["summary"], f"{name}: summary must be static"
        assert annotations["summary"].strip(), f"{name}: empty summary"
        assert re.search(r"\{\{.*\$(labels|value).*\}\}", annotations["description"]), (
            f"{name}: description must be templated with $labels or $value"
        )
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", f"{name}: runbook_url"


def test_runbook_urls_are_absolute_and_share_one_base() -> None:
    """Alertmanager and Grafana show runbook_url as a link: a repository path would be dead there."""
    urls = [rule["annotations"]["runbook_url"] for rule in alerting_rules()]
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.netloc and parts.fragment, url
        assert url.split("#", 1)[0] == RUNBOOK_BASE, url
    assert RUNBOOK_BASE.endswith("/docs/alerts.md")
    for path in RULE_TESTS_DIR.glob("*.yaml"):
        for match in re.findall(r"runbook_url: (\S+)", path.read_text()):
            assert match.startswith(f"{RUNBOOK_BASE}#"), f"{path.name}: {match}"


def test_recording_rules_are_named_level_metric_operation() -> None:
    rules = recording_rules()
    assert rules
    for name in rules:
        assert re.fullmatch(r"copilot:[a-z0-9_]+:[a-z0-9_]+", name), f"{name}: not copilot:<what>:<agg>"


def test_every_runbook_anchor_exists_with_the_four_parts() -> None:
    markdown = RUNBOOKS.read_text()
    anchors = github_anchors(markdown)
    sections = runbook_sections(markdown)
    for rule in alerting_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/alerts.md has no heading for #{anchor}"
        section = sections.get(rule["alert"])
        assert section is not None, f"docs/alerts.md: no '## {rule['alert']}' section"
        for part in ("Meaning", "Impact", "What to check", "How to fix"):
            assert f"**{part}**" in section, f"{rule['alert']} runbook lacks **{part}**"
        assert rule["labels"]["severity"] in section, f"{rule['alert']} runbook does not state its severity"


def test_github_anchor_helper() -> None:
    assert github_anchors("## CopilotExporterDown\n### What to check?\n") == {
        "copilotexporterdown",
        "what-to-check",
    }


# --------------------------------------------------------------------------------------------------
# Metric and label names
# --------------------------------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (kind, le) (rate(copilot_request_duration_seconds_bucket{code=~"5.."}[5m])) '
        "/ ignoring (code) group_left sum without (user) (copilot:responses:rate5m) > 1e3 "
        'and on () hour() >= 9 or vector(0) unless absent(up{job="x"}) offset 5m'
    )
    assert metric_names(expr) == {"copilot_request_duration_seconds_bucket", "copilot:responses:rate5m", "up"}


def test_label_check_catches_labels_a_metric_lacks() -> None:
    known = metric_labels()
    assert label_problems('sum by (user) (rate(copilot_responses_total{code="429"}[5m]))', known) == [
        "by/without (user)",
    ]
    assert label_problems('copilot_responses_total{user="a"}', known) == ["copilot_responses_total{user}"]
    assert label_problems('sum by (kind) (rate(copilot_responses_total{code="429"}[5m]))', known) == []


def test_rule_expressions_use_only_catalogue_metrics() -> None:
    allowed = allowed_metric_names()
    for rule in load_rules():
        name = rule.get("record") or rule["alert"]
        # Every alert watches some metric; only a clock rule (working hours) may read none.
        assert metric_names(rule["expr"]) or "record" in rule, f"{name}: no metric found in {rule['expr']!r}"
        assert not unknown_metrics(rule["expr"], allowed), (
            f"{name}: unknown metrics {unknown_metrics(rule['expr'], allowed)} (not in "
            "exporter.metricdefs.all_series_names(), not a recording rule, not a Prometheus built-in)"
        )


def test_rule_expressions_use_only_labels_the_metrics_carry() -> None:
    known = metric_labels()
    for rule in load_rules():
        assert not label_problems(rule["expr"], known), (
            rule.get("record") or rule["alert"],
            label_problems(rule["expr"], known),
        )


def test_exporter_presence_alerts_select_the_scrape_job() -> None:
    exprs = {rule["alert"]: rule["expr"].strip() for rule in alerting_rules()}
    assert exprs["CopilotExporterDown"] == f'up{{job="{JOB}"}} == 0'
    assert exprs["CopilotExporterAbsent"] == f'absent(up{{job="{JOB}"}})'
    assert "hour()" in exprs["CopilotNoTraffic"] or "copilot:working_hours:active" in exprs["CopilotNoTraffic"]
    assert "day_of_week()" in recording_rules()["copilot:working_hours:active"]


def test_per_user_alerts_name_the_user_and_watch_their_status_code() -> None:
    """429 and 402 are alerted per user (copilot_user_errors_total), not only per kind."""
    alerts = {rule["alert"]: rule for rule in alerting_rules()}
    for name, code in (("CopilotUserRateLimited", "429"), ("CopilotUserQuotaExhausted", "402")):
        rule = alerts[name]
        expr = rule["expr"]
        assert metric_names(expr) == {"copilot_user_errors_total"}, name
        assert f'code="{code}"' in expr, name
        assert re.search(r"\bsum by \(user\b", expr), f"{name}: one alert per user, across proxies and kinds"
        assert "{{ $labels.user }}" in rule["annotations"]["description"], f"{name}: the description names the user"
        assert rule["labels"]["severity"] != "critical", f"{name}: one user's problem does not page"
        assert parse_duration(rule["for"]) >= 600, f"{name}: a sustained symptom, not a single refused call"
    # The proxy-wide share per kind stays: many users throttled at once is a different symptom.
    assert {"CopilotRateLimited", "CopilotQuotaExhausted"} <= set(alerts)


# --------------------------------------------------------------------------------------------------
# Coverage of the promtool unit tests
# --------------------------------------------------------------------------------------------------


def test_every_alert_is_shown_pending_then_firing_with_full_labels_and_annotations() -> None:
    """For each alert, one test group shows it pending (not firing) before `for:` and firing after."""
    alerts = {rule["alert"]: rule for rule in alerting_rules()}
    covered: set[str] = set()
    for path, case in rule_test_cases():
        pending: dict[str, set[int]] = {}
        for expr_test in case.get("promql_expr_test", []):
            match = re.fullmatch(r'ALERTS\{alertname="(\w+)"\}', expr_test["expr"].strip())
            samples = expr_test.get("exp_samples") or []
            if match and samples and all('alertstate="pending"' in s["labels"] for s in samples):
                pending.setdefault(match.group(1), set()).add(parse_duration(expr_test["eval_time"]))
        quiet: dict[str, set[int]] = {}
        firing: dict[str, int] = {}
        for alert_test in case.get("alert_rule_test", []):
            name, at = alert_test["alertname"], parse_duration(alert_test["eval_time"])
            assert name in alerts, f"{path.name}: test for unknown alert {name}"
            expected = alert_test.get("exp_alerts") or []
            if not expected:
                quiet.setdefault(name, set()).add(at)
                continue
            rule = alerts[name]
            for alert in expected:
                labels, annotations = alert.get("exp_labels", {}), alert.get("exp_annotations", {})
                assert labels.get("severity") == rule["labels"]["severity"], f"{path.name}: {name} labels"
                assert set(annotations) == set(rule["annotations"]), f"{path.name}: {name} annotations"
                assert annotations["runbook_url"] == rule["annotations"]["runbook_url"]
            firing[name] = min(firing.get(name, at), at)
        for name, first_firing in firing.items():
            before = {t for t in quiet.get(name, set()) & pending.get(name, set()) if t < first_firing}
            if before:
                covered.add(name)
    assert covered == set(alerts), f"alerts without a pending-then-firing unit test: {set(alerts) - covered}"


def test_every_recording_rule_value_is_checked() -> None:
    checked: set[str] = set()
    for _path, case in rule_test_cases():
        for expr_test in case.get("promql_expr_test", []):
            # The rule itself, or the rule inside a function (e.g. round() of a float that is not exact).
            if expr_test.get("exp_samples"):
                checked |= set(re.findall(r"[\w:]+", expr_test["expr"])) & set(recording_rules())
    assert set(recording_rules()) <= checked, f"unchecked recording rules: {set(recording_rules()) - checked}"


def test_rules_exported_with_another_runbook_base_still_pass_their_unit_tests(tmp_path: Path) -> None:
    from exporter.cli import export_config

    base = "https://wiki.example.com/ops/copilot-alerts"
    export_config(tmp_path, runbook_base=base)
    rules = tmp_path / "alerts" / "copilot-rules.yaml"
    assert f"runbook_url: {base}#copilotexporterdown" in rules.read_text()
    assert run_promtool("check", "rules", str(rules)).returncode == 0
    files = sorted((tmp_path / "alerts" / "tests").glob("*.yaml"))
    result = run_promtool("test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files) > 0
