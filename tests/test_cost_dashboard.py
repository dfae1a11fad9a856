"""The "Copilot / Cost" panels, evaluated by promtool (the Prometheus query engine) on known series, return
the values the traffic implies: credits in range, server share, top spenders, burn rate, month to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.test_alerts import run_promtool
from tests.test_dashboards import DASHBOARD_DIR, defined_variables, substitute

FILE = "copilot-cost.json"
T = '{job="copilot-proxy-insight", instance="copilot-proxy-a:9180"'


def _panel_exprs() -> dict[str, str]:
    dash = json.loads((DASHBOARD_DIR / FILE).read_text())
    defined = defined_variables(FILE)
    return {p["title"]: substitute(p["targets"][0]["expr"], defined) for p in dash["panels"] if p.get("targets")}


def _nano(user: str, model: str, source: str, background: str = "false") -> str:
    labels = f'user="{user}", kind="chat_agent", model="{model}", source="{source}", editor="vscode", '
    labels += f'background="{background}"'
    return f"copilot_nano_aiu_total{T}, {labels}}}"


# Per minute over 2 hours: alice 1 credit/min from the server on gpt-5.4 plus 1 credit/min estimated on
# claude-sonnet-4.6; bob 0.5 credit/min estimated, of which all background. At 2h, over the last hour
# ($__range = 1h): alice 120 credits (60 server + 60 estimated), bob 30; server share 60/150 = 0.4.
SERIES = [
    {"series": _nano("alice", "gpt-5.4", "server"), "values": "0+1000000000x120"},
    {"series": _nano("alice", "claude-sonnet-4.6", "estimated"), "values": "0+1000000000x120"},
    {"series": _nano("bob", "gpt-5-mini", "estimated", "true"), "values": "0+500000000x120"},
    {"series": f'copilot_budget_used_credits{T}, user="alice"}}', "values": "950x120"},
    {"series": f'copilot_budget_allowance_credits{T}, user="alice"}}', "values": "1900x120"},
    {"series": f'copilot_budget_projected_credits{T}, user="alice"}}', "values": "2850x120"},
    {"series": f'copilot_quota_remaining_ratio{T}, user="alice", quota="premium_interactions"}}', "values": "0.05x120"},
]
EXPECTED: dict[str, list[tuple[str, float]]] = {
    "AI credits in range": [("{}", 150)],
    "Server share": [("{}", 0.4)],
    "Background share": [("{}", 0.2)],
    "Top spenders": [('{user="alice"}', 120), ('{user="bob"}', 30)],
    "Burn rate by user": [('{user="alice"}', 120), ('{user="bob"}', 30)],
    "Credits by model": [('{model="gpt-5.4"}', 60), ('{model="claude-sonnet-4.6"}', 60), ('{model="gpt-5-mini"}', 30)],
    "Server vs estimated": [('{source="server"}', 60), ('{source="estimated"}', 90)],
    "Month to date against allowance": [('{user="alice"}', 0.5)],
    "Projected share of allowance": [('{user="alice"}', 1.5)],
    "Quota left by user": [('{user="alice", quota="premium_interactions"}', 0.05)],
}


def test_cost_panels_return_the_expected_values(tmp_path: Path) -> None:
    exprs = _panel_exprs()
    tests = [
        {
            # rate() carries float noise (1.2000000000000001E+02); promtool compares exactly
            "expr": f"round({exprs[title]}, 0.001)",
            "eval_time": "2h",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
        }
        for title, samples in EXPECTED.items()
    ]
    unit = {
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": SERIES, "promql_expr_test": tests}],
    }
    path = tmp_path / "cost-panels.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses a panel value that is off."""
    unit = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": SERIES,
                "promql_expr_test": [
                    {
                        "expr": _panel_exprs()["AI credits in range"],
                        "eval_time": "2h",
                        "exp_samples": [{"labels": "{}", "value": 151}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    if run_promtool("test", "rules", str(path)).returncode == 0:
        pytest.fail("promtool accepted a wrong panel value")
