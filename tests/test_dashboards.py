"""Tests of the Grafana dashboards and the deploy/ provisioning files: structure, variables, PromQL, metric names."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.metricdefs import METRICS, MetricType
from tests.test_alerts import (
    JOB,
    RULES_FILE,
    allowed_metric_names,
    label_problems,
    metric_labels,
    metric_names,
    run_promtool,
)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "dashboards"
DOCS = ROOT / "docs" / "dashboards.md"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
LOKI_CONFIG = ROOT / "deploy" / "loki" / "loki.yaml"
DASHBOARD_MOUNT = "/var/lib/grafana/dashboards"

# Stable uids: links, bookmarks and provisioning rely on them. Change only on purpose.
UIDS = {
    "copilot-usage.json": "copilot-usage",
    "copilot-performance.json": "copilot-performance",
    "copilot-exporter-health.json": "copilot-exporter-health",
    "copilot-acceptance.json": "copilot-acceptance",
    "copilot-cost.json": "copilot-cost",
    "copilot-teams.json": "copilot-teams",
    "copilot-governance.json": "copilot-governance",
}
CHAIN = ("user", "editor", "language", "kind")
LOGS_QUERY = '{job="copilot-proxy-insight"} | json | user=~"$user" | kind=~"$kind"'
# Grafana's global variables, replaced by typical values before promtool sees an expression.
GRAFANA_GLOBALS = {
    "__rate_interval": "5m",
    "__range": "1h",
    "__interval": "1m",
    "__auto": "1m",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_WINDOW = re.compile(r"\[([^\]]*)\]")
# Panels that hold no numbers of their own (layout, prose, raw log lines) carry no unit.
NO_UNIT_PANELS = frozenset({"row", "text", "logs"})


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


def is_loki(obj: dict[str, Any]) -> bool:
    return (obj.get("datasource") or {}).get("type") == "loki"


def promql_queries() -> Iterator[tuple[str, str, str, bool]]:
    """(dashboard file, where, PromQL with Grafana variables, is instant) for every Prometheus query."""
    for name, dash in dashboards().items():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                if not is_loki(target) and not is_loki(panel):
                    yield (
                        name,
                        f"panel {panel['title']!r} {target['refId']}",
                        target["expr"],
                        bool(target.get("instant")),
                    )
        for annotation in dash["annotations"]["list"]:
            if "expr" in annotation:
                yield name, f"annotation {annotation['name']!r}", annotation["expr"], False
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query(var).strip())
                assert match, f"{name}: variable {var['name']} is not label_values(<selector>, <label>)"
                yield name, f"variable {var['name']!r}", match.group(1), False


def substitute(expr: str, defined: set[str]) -> str:
    """Replace Grafana variables the way Grafana would for an 'All' selection."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in GRAFANA_GLOBALS:
            return GRAFANA_GLOBALS[name]
        assert name in defined, f"undefined variable ${name} in {expr!r}"
        return ".*"

    return _VARIABLE.sub(value, expr)


def defined_variables(file: str) -> set[str]:
    return set(variables(dashboards()[file]))


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    return {ds["type"]: ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def test_the_dashboards_are_the_expected_files_with_stable_uids() -> None:
    found = {name: dash["uid"] for name, dash in dashboards().items()}
    assert found == UIDS
    assert len(set(found.values())) == len(found)


@pytest.mark.parametrize("file", sorted(UIDS))
def test_dashboard_is_importable(file: str) -> None:
    dash = dashboards()[file]
    assert dash["title"].startswith("Copilot / ")
    assert dash["description"]
    assert dash["id"] is None, "importable and provisionable dashboards carry no database id"
    assert 36 <= dash["schemaVersion"] <= 41
    assert "copilot" in dash["tags"]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    assert dash["time"]["from"].startswith("now-")
    assert "__inputs" not in dash, "use the datasource variables, not import-time ${DS_...} inputs"


def test_dashboard_titles_are_unique() -> None:
    titles = [dash["title"] for dash in dashboards().values()]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("file", sorted(UIDS))
def test_panel_ids_unique_and_layout_without_overlaps(file: str) -> None:
    all_panels = list(panels(dashboards()[file]))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in all_panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique (docs/dashboards.md names them)"
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("file", sorted(UIDS))
def test_every_panel_has_a_description_and_a_unit(file: str) -> None:
    for panel in panels(dashboards()[file]):
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{panel['title']!r} has no description"
        if panel["type"] in NO_UNIT_PANELS:
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"{panel['title']!r} has no fieldConfig.defaults.unit"
        assert panel.get("targets"), f"{panel['title']!r} has no query"


# --------------------------------------------------------------------------------------------------
# Data sources and variables
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(UIDS))
def test_datasource_variables_match_the_provisioned_datasources(file: str) -> None:
    dash = dashboards()[file]
    provisioned = provisioned_datasources()
    vars_ = variables(dash)
    expected = {"datasource": "prometheus"}
    if any(is_loki(panel) for panel in panels(dash)):
        expected["loki"] = "loki"
    for name, ds_type in expected.items():
        var = vars_.get(name)
        assert var is not None, f"{file}: no ${name} variable"
        assert var["type"] == "datasource" and var["query"] == ds_type
        assert var["current"]["value"] == provisioned[ds_type]["uid"]
        assert var["current"]["text"] == provisioned[ds_type]["name"]
    reference = {
        "prometheus": {"type": "prometheus", "uid": "${datasource}"},
        "loki": {"type": "loki", "uid": "${loki}"},
    }
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] in reference.values(), f"{panel['title']!r}: hard-coded datasource"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], f"{panel['title']!r} {target['refId']}"
    for var in vars_.values():
        if var["type"] == "query":
            assert var["datasource"] == reference["prometheus"]


def test_usage_variables_are_chained() -> None:
    vars_ = variables(dashboards()["copilot-usage.json"])
    names = [name for name in vars_ if name in CHAIN]
    assert names == list(CHAIN)
    for position, name in enumerate(CHAIN):
        var = vars_[name]
        query = variable_query(var)
        assert var["definition"] == query
        match = re.fullmatch(r"label_values\((\w*)(?:\{(.*)\})?,\s*(\w+)\)", query)
        assert match, query
        assert match.group(3) == name
        selector = match.group(2) or ""
        for previous in CHAIN[:position]:
            assert f'{previous}=~"${previous}"' in selector, f"${name} is not restricted by ${previous}"
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"


def selector_metrics(selector: str) -> list[str]:
    """Metric names a variable's series selector reads: `name{…}` or `{__name__=~"a|b"}`."""
    match = re.fullmatch(r"([\w:]*)(?:\{(.*)\})?", selector.strip())
    assert match, selector
    if match.group(1):
        return [match.group(1)]
    names = re.match(r'__name__=~"([\w:|]+)"(,|$)', (match.group(2) or "").strip())
    assert names, f'{selector}: name the metrics, as name{{…}} or {{__name__=~"a|b"}} (first)'
    return names.group(1).split("|")


@pytest.mark.parametrize("file", sorted(UIDS))
def test_query_variables_read_existing_labels(file: str) -> None:
    known = metric_labels()
    for var in dashboards()[file]["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query(var))
        assert match, var["name"]
        for metric in selector_metrics(match.group(1)):
            assert match.group(2) in known[metric], f"{metric} has no label {match.group(2)}"


def test_selector_metrics_reads_both_forms() -> None:
    assert selector_metrics('up{job=~"$job"}') == ["up"]
    assert selector_metrics('{__name__=~"copilot_a_total|copilot_b_total"}') == ["copilot_a_total", "copilot_b_total"]
    assert selector_metrics('{__name__=~"copilot_a_total|copilot_b_info", team=~"$team"}') == [
        "copilot_a_total",
        "copilot_b_info",
    ]
    with pytest.raises(AssertionError):
        selector_metrics('{user="x"}')


@pytest.mark.parametrize(
    ("team", "offered"),
    [
        (".*", ("alice", "carol", "erin")),  # Team All: every user, with or without a team
        ("backend", ("alice", "erin")),  # erin is in the team without a call: offered, her panels empty
        ("(frontend)", ()),
    ],
)
def test_user_variable_lists_users_whose_every_call_failed(tmp_path: Path, team: str, offered: tuple[str, ...]) -> None:
    """carol only ever got errors: no counted interaction, yet she must be selectable; and only the members
    of the selected teams are (alice and erin are in `backend`, carol in no team)."""
    var = variables(dashboards()["copilot-usage.json"])["user"]
    match = re.fullmatch(r"label_values\((.+),\s*user\)", variable_query(var))
    assert match
    series = [
        {"series": series_line("copilot_requests_total", {"user": "alice", "kind": "completion"}), "values": "1x5"},
        {"series": series_line("copilot_model_calls_total", {"user": "alice", "kind": "completion"}), "values": "1x5"},
        {
            "series": series_line("copilot_user_errors_total", {"user": "carol", "kind": "chat", "code": "429"}),
            "values": "1x5",
        },
        {"series": series_line("copilot_client_info", {"user": "dave", "editor": "vscode"}), "values": "1x5"},
        {"series": series_line("copilot_user_team_info", {"user": "alice", "team": "backend"}), "values": "1x5"},
        {"series": series_line("copilot_user_team_info", {"user": "erin", "team": "backend"}), "values": "1x5"},
    ]
    rules_path = tmp_path / "user-variable.yaml"
    selector = match.group(1).replace("$team", team)
    rule = {"alert": "UserOffered", "expr": f"count by (user) ({selector}) > 0"}
    rules_path.write_text(yaml.safe_dump({"groups": [{"name": "user-variable", "rules": [rule]}]}))
    expected = [{"exp_labels": {"user": user}} for user in offered]
    unit_test = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "2m", "alertname": "UserOffered", "exp_alerts": expected}],
            }
        ],
    }
    test_path = tmp_path / "user-variable-test.yaml"
    test_path.write_text(yaml.safe_dump(unit_test, sort_keys=False))
    result = run_promtool("test", "rules", str(test_path))
    assert result.returncode == 0, result.stdout + result.stderr


TEAM_FILTERED = ("copilot-usage.json", "copilot-acceptance.json", "copilot-cost.json", "copilot-governance.json")


@pytest.mark.parametrize("file", TEAM_FILTERED)
def test_per_user_dashboards_filter_by_team(file: str) -> None:
    """$team (All: `.*`, every user) before $user; the user list and the hidden $team_users (All expands to
    the list, so All users means all users of the selected teams) read the team through the info metric;
    every Prometheus selector on $user also matches $team_users."""
    dash = dashboards()[file]
    vars_ = variables(dash)
    names = list(vars_)
    assert names.index("team") < names.index("user") < names.index("team_users")
    team, user, hidden = vars_["team"], vars_["user"], vars_["team_users"]
    assert variable_query(team) == "label_values(copilot_user_team_info, team)"
    assert team["includeAll"] and team["multi"] and team["allValue"] == ".*"
    for var in (user, hidden):
        selector = re.fullmatch(r"label_values\((.+),\s*user\)", variable_query(var))
        assert selector, var["name"]
        assert selector.group(1).endswith('|copilot_user_team_info", team=~"$team"}'), var["name"]
    assert hidden["hide"] == 2 and hidden["includeAll"] and not hidden.get("allValue")
    on_user = [
        (where, expr)
        for f, where, expr, _ in promql_queries()
        if f == file and '"$user"' in expr and where not in ("variable 'user'", "variable 'team_users'")
    ]
    assert on_user
    for where, expr in on_user:
        assert expr.count('user=~"$user"') == expr.count('user=~"$user", user=~"$team_users"'), where
    # With Team All, $team_users is every user of every series the panels read (as `.*` would be).
    panel_metrics = {
        n
        for f, where, expr, _ in promql_queries()
        if f == file and not where.startswith("variable")
        for n in metric_names(substitute(expr, defined_variables(file)))
    }
    labelled = {n for n, labels in metric_labels().items() if "user" in labels and n.startswith("copilot_")}
    assert panel_metrics & labelled <= set(selector_metrics(hidden_selector(hidden)))


def hidden_selector(var: dict[str, Any]) -> str:
    match = re.fullmatch(r"label_values\((.+),\s*user\)", variable_query(var))
    assert match
    return match.group(1)


def test_health_dashboard_takes_the_job_from_a_variable() -> None:
    """Scrape configs name the job as they like: no query may hard-code it."""
    health = dashboards()["copilot-exporter-health.json"]
    vars_ = variables(health)
    job = vars_["job"]
    assert variable_query(job) == "label_values(copilot_exporter_build_info, job)" == job["definition"]
    # All = the jobs found, not `.*` (which would select Prometheus' other jobs in the Up panel too).
    assert job["includeAll"] and job["multi"] and not job.get("allValue")
    assert list(vars_).index("job") < list(vars_).index("instance")
    assert 'job=~"$job"' in variable_query(vars_["instance"])
    exprs = [expr for file, _where, expr, _instant in promql_queries() if file == "copilot-exporter-health.json"]
    assert not [e for e in exprs if re.search(r'\bjob\s*=\s*"', e)], "a hard-coded job"
    ups = [e for e in exprs if re.search(r"\bup\b", e)]
    assert ups and all('job=~"$job"' in e for e in ups), ups


# --------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------


def test_windows_are_rate_interval_or_range_for_instant_summaries() -> None:
    seen_range = False
    for file, where, expr, instant in promql_queries():
        for window in _WINDOW.findall(expr):
            allowed = {"$__rate_interval", "$__range"} if instant else {"$__rate_interval"}
            assert window in allowed, f"{file} {where}: fixed or wrong window [{window}] in {expr!r}"
            seen_range |= window == "$__range"
    assert seen_range


def test_per_user_summary_table_counts_over_the_range() -> None:
    dash = dashboards()["copilot-usage.json"]
    tables = [p for p in panels(dash) if p["type"] == "table" and p["title"] == "Per-user summary"]
    assert len(tables) == 1
    exprs = [target["expr"] for target in tables[0]["targets"]]
    assert any('kind=~"chat.*"' in e and "increase(copilot_requests_total" in e for e in exprs)
    assert any('kind="completion"' in e and "increase(copilot_requests_total" in e for e in exprs)
    for expr in exprs:
        assert "sum by (user)" in expr and "[$__range]" in expr


def test_performance_quantiles_use_histogram_buckets() -> None:
    exprs = " ".join(t["expr"] for p in panels(dashboards()["copilot-performance.json"]) for t in p.get("targets", []))
    for histogram in ("copilot_request_duration_seconds", "copilot_time_to_first_token_seconds"):
        quantile = (
            rf"histogram_quantile\(0\.95, sum by \(kind, le\) "
            rf"\(rate\({histogram}_bucket\{{.*?\}}\[\$__rate_interval\]\)\)\)"
        )
        assert re.search(quantile, exprs), histogram


def test_every_catalogue_metric_is_on_a_dashboard() -> None:
    used: set[str] = set()
    for _file, _where, expr, _instant in promql_queries():
        used |= metric_names(expr)
    for metric in METRICS:
        assert used & set(metric.series_names), f"{metric.name} is on no dashboard"


def test_queries_use_only_catalogue_metrics_and_their_labels() -> None:
    allowed = allowed_metric_names()
    known = metric_labels()
    for file, where, expr, _instant in promql_queries():
        plain = substitute(expr, defined_variables(file))
        names = metric_names(plain) | {n for m in re.findall(r'__name__=~"([\w:|]+)"', plain) for n in m.split("|")}
        assert names, f"{file} {where}: no metric in {expr!r}"
        assert names <= allowed, f"{file} {where}: unknown metrics {names - allowed}"
        assert not label_problems(plain, known), f"{file} {where}: {label_problems(plain, known)}"


def test_every_promql_expression_parses_with_promtool(tmp_path: Path) -> None:
    queries = [
        (f"{file} {where}", substitute(expr, defined_variables(file)))
        for file, where, expr, _instant in promql_queries()
    ]
    assert len(queries) > 30

    def check(items: list[tuple[str, str]], path: Path) -> tuple[bool, str]:
        rules = [{"record": f"dashboard_query_{i}", "expr": expr} for i, (_where, expr) in enumerate(items)]
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
        result = run_promtool("check", "rules", str(path))
        return result.returncode == 0, result.stdout + result.stderr

    ok, output = check(queries, tmp_path / "all.yaml")
    if not ok:
        bad = []
        for i, query in enumerate(queries):
            single_ok, single_output = check([query], tmp_path / f"q{i}.yaml")
            if not single_ok:
                bad.append(f"{query[0]}: {query[1]!r}\n{single_output}")
        pytest.fail("PromQL that promtool rejects:\n" + "\n".join(bad or [output]))
    assert f"SUCCESS: {len(queries)} rules found" in output


def test_promtool_check_catches_a_bad_expression(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    rules = [{"record": "dashboard_query_0", "expr": "sum by (kind) (rate(copilot_requests_total[5m])"}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert run_promtool("check", "rules", str(path)).returncode != 0


# Label values for the synthetic series below: every label of the catalogue gets one or more typical
# values (the kinds and codes the panels select explicitly among them).
SAMPLE_LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "user": ("alice", "bob"),
    "editor": ("vscode", "neovim"),
    "language": ("python", "unknown"),
    "kind": ("completion", "next_edit", "chat_panel"),
    "model": ("gpt-4o-copilot", "claude-sonnet-4"),
    "initiator": ("user", "agent"),
    "type": ("input", "output"),
    "code": ("200", "402", "429", "500", "error"),
    "reason": ("speculative", "agent_step"),
    "component": ("jsonlog",),
    "label": ("user",),
    "editor_version": ("1.96.2",),
    "plugin": ("copilot-chat",),
    "plugin_version": ("0.23.2",),
    "version": ("0.1.0",),
    "mitmproxy_version": ("12.1.1",),
    "source": ("server", "estimated"),
    "background": ("false", "true"),
    "quota": ("premium_interactions",),
    "window": ("weekly",),
    "error_code": ("none", "quota_exceeded"),
}
TARGET = {"job": JOB, "instance": "copilot-proxy:9180"}


def series_line(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{key}="{value}"' for key, value in {**TARGET, **labels}.items()) + "}"


def catalogue_series(minutes: int) -> list[dict[str, str]]:
    """promtool input series: every metric of the catalogue, for every combination of sample labels."""
    series = [
        {"series": series_line("up", {}), "values": f"1x{minutes}"},
        {"series": series_line("scrape_duration_seconds", {}), "values": f"0.05x{minutes}"},
        {"series": series_line("scrape_samples_scraped", {}), "values": f"800x{minutes}"},
    ]
    for metric in METRICS:
        values = [SAMPLE_LABEL_VALUES.get(label, ("value",)) for label in metric.labels]
        for combination in itertools.product(*values):
            labels = dict(zip(metric.labels, combination, strict=True))
            if metric.type is MetricType.COUNTER:
                series.append({"series": series_line(metric.exposed_name, labels), "values": f"0+1x{minutes}"})
            elif metric.type is MetricType.GAUGE:
                series.append({"series": series_line(metric.name, labels), "values": f"1x{minutes}"})
            else:
                bounds = [*map(str, metric.buckets), "+Inf"]
                for i, le in enumerate(bounds):
                    bucket = series_line(f"{metric.name}_bucket", {**labels, "le": le})
                    series.append({"series": bucket, "values": f"0+{i + 1}x{minutes}"})
                series.append(
                    {"series": series_line(f"{metric.name}_count", labels), "values": f"0+{len(bounds)}x{minutes}"}
                )
                series.append({"series": series_line(f"{metric.name}_sum", labels), "values": f"0+30x{minutes}"})
    return series


def test_every_query_returns_data_from_catalogue_series(tmp_path: Path) -> None:
    """Fed every catalogue metric (and the shipped recording rules), every Prometheus query returns data.

    Each query becomes an alert `count(<query>) > 0`; promtool must see each of them firing. The
    `or vector(0)` fallbacks of stat panels are removed first, so that they cannot hide an empty query.
    """
    queries = [
        (f"{file} {where}", re.sub(r"\s+or\s+vector\(0\)", "", substitute(expr, defined_variables(file))))
        for file, where, expr, _instant in promql_queries()
    ]
    rules = [{"alert": f"DashboardQuery{i}", "expr": f"count({expr}) > 0"} for i, (_w, expr) in enumerate(queries)]
    rules_path = tmp_path / "dashboard-queries.yaml"
    rules_path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    unit_test = {
        "rule_files": [str(RULES_FILE), str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": catalogue_series(180),
                "alert_rule_test": [
                    {"eval_time": "2h", "alertname": f"DashboardQuery{i}", "exp_alerts": [{"exp_labels": {}}]}
                    for i in range(len(queries))
                ],
            }
        ],
    }
    test_path = tmp_path / "dashboard-queries-test.yaml"
    test_path.write_text(yaml.safe_dump(unit_test, sort_keys=False))
    result = run_promtool("test", "rules", str(test_path))
    if result.returncode != 0:
        failed = sorted({int(n) for n in re.findall(r"alertname: DashboardQuery(\d+)", result.stdout + result.stderr)})
        names = "\n".join(f"{queries[i][0]}: {queries[i][1]}" for i in failed)
        pytest.fail(f"queries without data:\n{names or result.stdout + result.stderr}")


def test_substitution_of_grafana_variables() -> None:
    expr = 'sum(rate(x{user=~"$user", kind=~"${kind}"}[$__rate_interval])) / increase(y[$__range])'
    assert substitute(expr, {"user", "kind"}) == 'sum(rate(x{user=~".*", kind=~".*"}[5m])) / increase(y[1h])'
    with pytest.raises(AssertionError):
        substitute('x{user=~"$nobody"}', {"user"})


def test_loki_targets_parse_json_lines() -> None:
    logs_queries = []
    for _file, dash in dashboards().items():
        for panel in panels(dash):
            for target in panel.get("targets", []):
                if is_loki(target):
                    assert "| json" in target["expr"], target["expr"]
                    assert target["expr"].startswith(f'{{job="{JOB}"}}')
                    logs_queries.append((panel["type"], target["expr"]))
    assert ("logs", LOGS_QUERY) in logs_queries


# --------------------------------------------------------------------------------------------------
# Provisioning and example configs
# --------------------------------------------------------------------------------------------------


def test_grafana_datasources_provisioning() -> None:
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    provisioned = provisioned_datasources()
    assert provisioned["prometheus"]["url"] == "http://prometheus:9090"
    assert provisioned["loki"]["url"] == "http://loki:3100"
    assert {ds["uid"] for ds in provisioned.values()} == {"prometheus", "loki"}
    assert provisioned["prometheus"].get("isDefault") is True
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert provisioned["prometheus"]["jsonData"]["timeInterval"] == scrape_interval, (
        "Grafana's timeInterval must equal Prometheus' scrape_interval for $__rate_interval"
    )


def test_grafana_dashboard_provider_points_at_the_mount() -> None:
    doc = yaml.safe_load(PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_MOUNT
    docs = DOCS.read_text()
    assert DASHBOARD_MOUNT in docs and "deploy/grafana/provisioning" in docs


def test_prometheus_example_config(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[JOB]["static_configs"] == [{"targets": ["copilot-proxy:9180"]}]
    assert config["rule_files"] == ["alerts/copilot-rules.yaml"]
    # Lay the files out as documented (alerts/ mounted next to the config) and let promtool load all.
    shutil.copy(PROMETHEUS_CONFIG, tmp_path / "prometheus.yml")
    (tmp_path / "alerts").mkdir()
    shutil.copy(RULES_FILE, tmp_path / "alerts" / "copilot-rules.yaml")
    result = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_loki_example_config() -> None:
    config = yaml.safe_load(LOKI_CONFIG.read_text())
    assert config["server"]["http_listen_port"] == 3100
    assert config["auth_enabled"] is False
    assert config["schema_config"]["configs"][0]["schema"] == "v13"
    assert f'job="{JOB}"' in LOKI_CONFIG.read_text()


# --------------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------------


def test_docs_describe_every_dashboard_and_panel() -> None:
    docs = DOCS.read_text()
    for file, dash in dashboards().items():
        assert file in docs and dash["uid"] in docs and dash["title"] in docs, file
        for panel in panels(dash):
            if panel["type"] != "row":
                assert f"**{panel['title']}**" in docs, f"docs/dashboards.md does not describe {panel['title']!r}"
