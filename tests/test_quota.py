"""Quota and rate-limit snapshots (headers, copilot_internal/user), their TTL, and budgets: allowance,
month-to-date use read back from the extended summaries, projection to month end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from exporter import metricdefs as md
from exporter.budgets import BudgetError, Budgets, CostSink, load_budgets, month_to_date, projection
from exporter.insight import InsightDay, insight_path
from exporter.labels import LabelPolicy
from exporter.quota import QuotaReading, from_headers, from_json, from_user_info, to_json
from tests.factories import chat, emitted

HEADER = "ent=300&ov=2.5&ovPerm=false&rem=87.5&rst=2026-12-01T00%3A00%3A00Z"


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        (
            [("X-Quota-Snapshot-Premium_Interactions", HEADER)],
            [QuotaReading("premium_interactions", False, 0.875, 300.0, 2.5, "2026-12-01T00:00:00Z")],
        ),
        (
            [("x-quota-snapshot-chat", "ent=-1&ov=0.0&ovPerm=true&rem=100&rst=")],
            [QuotaReading("chat", False, 1.0, None, 0.0)],
        ),
        (
            [("x-usage-ratelimit-weekly", "ent=100&rem=4&rst=2026-12-07")],
            [QuotaReading("weekly", True, 0.04, 100.0, None, "2026-12-07")],
        ),
        ([("x-usage-ratelimit-session", "rem=150")], [QuotaReading("session", True, 1.0)]),
        ([("x-quota-snapshot-chat", "rem=-3")], [QuotaReading("chat", False, 0.0)]),
        ([("x-quota-snapshot-made_up", HEADER)], []),
        ([("x-quota-snapshot-chat", "garbage")], []),
        ([("x-quota-snapshot-chat", "rem=abc&ent=nan")], []),
        ([("content-type", "text/event-stream")], []),
    ],
    ids=[
        "premium",
        "unlimited",
        "weekly",
        "clamped-high",
        "clamped-low",
        "unknown-name",
        "garbage",
        "non-numbers",
        "none",
    ],
)
def test_snapshot_headers(headers: list[tuple[str, str]], want: list[QuotaReading]) -> None:
    assert list(from_headers(headers)) == want


USER_INFO = {
    "copilot_plan": "enterprise",
    "quota_reset_date_utc": "2027-01-01T00:00:00Z",
    "quota_snapshots": {
        "chat": {"unlimited": True, "entitlement": 0, "percent_remaining": 100},
        "premium_interactions": {"entitlement": 3900, "remaining": 351, "percent_remaining": 9.0, "overage_count": 12},
        "bogus": {"percent_remaining": 1},
        "completions": "junk",
    },
}


def test_user_info_snapshots_and_plan() -> None:
    readings, plan = from_user_info(USER_INFO)
    assert plan == "enterprise"
    assert readings == (
        QuotaReading("chat", False, 1.0, None, None, "2027-01-01T00:00:00Z"),
        QuotaReading("premium_interactions", False, 0.09, 3900.0, 12.0, "2027-01-01T00:00:00Z"),
    )
    assert from_json(to_json(readings)) == readings
    assert from_user_info([]) == ((), None) and from_json("not json") == ()


@dataclass
class Clock:
    now: float = datetime(2026, 12, 11, 0, 0, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def _sink(clock: Clock, max_users: int = 500) -> tuple[CostSink, CollectorRegistry]:
    sink = CostSink(LabelPolicy(max_users=max_users), clock)
    registry = CollectorRegistry()
    registry.register(sink.quota)
    registry.register(sink.budget)
    return sink, registry


def test_quota_gauges_follow_the_last_snapshot_and_expire_after_the_ttl() -> None:
    clock = Clock()
    sink, registry = _sink(clock)
    sink.configure(Budgets(), 3600.0, None)
    g = registry.get_sample_value
    sink.handle(emitted(chat(quota=to_json(from_headers([("x-quota-snapshot-premium_interactions", HEADER)])))))
    assert g("copilot_quota_remaining_ratio", {"user": "alice", "quota": "premium_interactions"}) == 0.875
    assert g("copilot_quota_entitlement", {"user": "alice", "quota": "premium_interactions"}) == 300
    assert g("copilot_quota_overage_used", {"user": "alice", "quota": "premium_interactions"}) == 2.5
    clock.now += 1800
    sink.handle(
        emitted(chat(quota=to_json(from_headers([("x-quota-snapshot-premium_interactions", "rem=5&ent=300")]))))
    )
    sink.handle(emitted(chat(user="bob", quota=to_json(from_headers([("x-usage-ratelimit-weekly", "rem=50")])))))
    assert g("copilot_quota_remaining_ratio", {"user": "alice", "quota": "premium_interactions"}) == 0.05
    assert g("copilot_rate_limit_remaining_ratio", {"user": "bob", "window": "weekly"}) == 0.5
    clock.now += 3601
    assert g("copilot_quota_remaining_ratio", {"user": "alice", "quota": "premium_interactions"}) is None
    assert g("copilot_rate_limit_remaining_ratio", {"user": "bob", "window": "weekly"}) is None
    text = generate_latest(registry).decode()
    for m in (md.QUOTA_REMAINING, md.QUOTA_ENTITLEMENT, md.QUOTA_OVERAGE, md.RATE_LIMIT_REMAINING):
        assert f"# HELP {m.name} {m.help}\n# TYPE {m.name} gauge" in text  # still described when empty


def test_quota_users_are_bounded_by_the_user_cap() -> None:
    sink, registry = _sink(Clock(), max_users=1)
    for user in ("alice", "bob", "carol"):
        sink.handle(emitted(chat(user=user, quota=to_json([QuotaReading("chat", False, 0.5)]))))
    users = {s.labels["user"] for m in registry.collect() for s in m.samples if m.name == md.QUOTA_REMAINING.name}
    assert users == {"alice", "other"}


def _write_day(data_dir: Path, day: str, users: dict[str, int]) -> None:
    summary = InsightDay(day)
    for user, nano in users.items():
        summary.add(
            {
                "user": user,
                "model_call": True,
                "kind": "chat_agent",
                "model": "gpt-5.4",
                "status": 200,
                "credits_nano_aiu": nano,
                "credits_source": "server",
            }
        )
    path = insight_path(data_dir, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary.to_json())


def test_month_to_date_is_read_back_from_this_months_extended_summaries(tmp_path: Path) -> None:
    _write_day(tmp_path, "2026-11-30", {"alice": 999 * 10**9})  # last month: not this month's use
    _write_day(tmp_path, "2026-12-01", {"alice": 100 * 10**9, "bob": 10**9})
    _write_day(tmp_path, "2026-12-10", {"alice": 50 * 10**9})
    _write_day(tmp_path, "2026-12-12", {"alice": 7 * 10**9})  # after "today"
    insight_path(tmp_path, "2026-12-05").write_text("{cut by a crash")
    clock = Clock()
    assert month_to_date(tmp_path, clock()) == {"alice": 150 * 10**9, "bob": 10**9}
    sink, registry = _sink(clock)
    sink.configure(load_budgets("business", ""), 3600.0, tmp_path)
    sink.handle(
        emitted(
            chat(
                credits_nano_aiu=25 * 10**9,
                credits_source="estimated",
                timestamp=datetime.fromtimestamp(clock.now, UTC),
            )
        )
    )
    g = registry.get_sample_value
    assert g("copilot_budget_used_credits", {"user": "alice"}) == 175
    assert g("copilot_budget_allowance_credits", {"user": "alice"}) == 1900
    # 10 days of December elapsed, 31 in the month: 175 credits -> 542.5 projected
    assert g("copilot_budget_projected_credits", {"user": "alice"}) == pytest.approx(175 * 31 / 10)
    clock.now = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    assert g("copilot_budget_used_credits", {"user": "alice"}) is None  # a new month starts empty


def test_allowance_per_user_plan_and_file(tmp_path: Path) -> None:
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"default": 1000, "users": {"alice": 5000}}))
    budgets = load_budgets("business", str(path))
    assert (budgets.allowance("alice"), budgets.allowance("bob"), budgets.allowance("bob", "enterprise")) == (
        5000,
        1000,
        1000,
    )
    plan = load_budgets("business", "")
    assert (plan.allowance("bob"), plan.allowance("bob", "enterprise")) == (1900, 3900)
    assert load_budgets("enterprise", "").allowance("x") == 3900
    assert load_budgets("250.5", "").allowance("x") == 250.5
    for text, file_text, needle in (
        ("lots", "", "expected business, enterprise or a number"),
        ("business", "{", "is not JSON"),
        ("business", '{"users": {"alice": -1}}', "users.alice"),
        ("business", '{"users": []}', "'users' and/or 'teams' objects"),
        ("business", '{"teams": {"backend": "lots"}}', "teams.backend"),
    ):
        if file_text:
            path.write_text(file_text)
        with pytest.raises(BudgetError, match=needle):
            load_budgets(text, str(path) if file_text else "")


@pytest.mark.parametrize(
    ("user", "plan", "teams", "want"),
    [
        ("alice", None, ("backend",), 5000),  # her own entry wins over her team's
        ("bob", None, ("backend",), 3000),
        ("bob", "enterprise", ("backend",), 3000),  # a team entry wins over the plan
        ("carol", None, ("backend", "data"), 3000),  # in two teams: the larger allowance
        ("dave", None, ("web",), 1000),  # a team without an entry: the default
        ("dave", "enterprise", ("web",), 1000),  # the file's default is a number, not a plan
    ],
)
def test_team_allowances_from_the_budget_file(
    tmp_path: Path, user: str, plan: str | None, teams: tuple[str, ...], want: float
) -> None:
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"default": 1000, "teams": {"backend": 3000, "data": 2500}, "users": {"alice": 5000}}))
    assert load_budgets("business", str(path)).allowance(user, plan, teams) == want


def test_the_allowance_gauge_takes_the_users_teams_from_the_team_directory(tmp_path: Path) -> None:
    clock = Clock()
    sink, registry = _sink(clock)
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"teams": {"backend": 3000}}))
    sink.configure(load_budgets("business", str(path)), 3600.0, None)
    sink.budget.teams_of = lambda user: {"alice": ("backend",)}.get(user, ())
    for user in ("alice", "bob"):
        at = datetime.fromtimestamp(clock.now, UTC)
        sink.handle(emitted(chat(user=user, credits_nano_aiu=10**9, credits_source="server", timestamp=at)))
    got = {u: registry.get_sample_value("copilot_budget_allowance_credits", {"user": u}) for u in ("alice", "bob")}
    assert got == {"alice": 3000, "bob": 1900}


def test_a_users_plan_from_user_info_sets_their_allowance() -> None:
    clock = Clock()
    sink, registry = _sink(clock)
    sink.handle(
        emitted(
            chat(
                copilot_plan="enterprise",
                credits_nano_aiu=10**9,
                credits_source="server",
                timestamp=datetime.fromtimestamp(clock.now, UTC),
            )
        )
    )
    assert registry.get_sample_value("copilot_budget_allowance_credits", {"user": "alice"}) == 3900


@pytest.mark.parametrize(
    ("when", "used", "want"),
    [
        (datetime(2026, 12, 1, 1, 0, tzinfo=UTC), 10.0, 10.0 * 31),  # first hour: one day measured, not 1/24
        (datetime(2026, 12, 16, 12, 0, tzinfo=UTC), 100.0, 200.0),
        (datetime(2026, 2, 14, 0, 0, tzinfo=UTC), 13.0, 28.0),
    ],
)
def test_projection_to_month_end(when: datetime, used: float, want: float) -> None:
    assert projection(used, when.timestamp()) == pytest.approx(want)


def test_settings_parse_the_cost_options(tmp_path: Path) -> None:
    from exporter.options import OPTIONS
    from exporter.settings import SettingsError, settings_from

    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    assert settings_from(values.get).cost.budgets.default == 1900
    for name, value, needle in (
        ("copilot_price_table", str(tmp_path / "missing.json"), "copilot_price_table: cannot read"),
        ("copilot_budget", "free", "copilot_budget='free'"),
        ("copilot_quota_ttl", "0", "copilot_quota_ttl='0'"),
    ):
        with pytest.raises(SettingsError, match=needle):
            settings_from({**values, name: value}.get)


def test_a_forgotten_user_leaves_the_quota_and_budget_gauges() -> None:
    clock = Clock()
    sink, registry = _sink(clock)
    ts = datetime.fromtimestamp(clock.now, UTC)
    for user in ("alice", "bob"):
        quota = to_json([QuotaReading("chat", False, 0.5)])
        sink.handle(
            emitted(chat(user=user, quota=quota, credits_nano_aiu=10**9, credits_source="server", timestamp=ts))
        )
    sink.forget("alice")
    g = registry.get_sample_value
    assert g("copilot_quota_remaining_ratio", {"user": "alice", "quota": "chat"}) is None
    assert g("copilot_budget_used_credits", {"user": "alice"}) is None
    assert g("copilot_quota_remaining_ratio", {"user": "bob", "quota": "chat"}) == 0.5
    assert g("copilot_budget_used_credits", {"user": "bob"}) == 1


def test_through_the_addon_headers_reach_the_gauges_and_option_changes_keep_live_counts(
    harness: Any, tmp_path: Path
) -> None:
    """The mitmproxy path (tflow): response headers through exporter.flows, copilot_budget and
    copilot_price_table changed while running; the month's live credits survive a budget change."""
    from tests import samples

    ex = samples.VSCODE_AGENT_TURN  # answers with copilot_usage 412000000 and a premium_interactions snapshot
    harness.flow(ex)
    g = harness.sample
    assert g("copilot_quota_remaining_ratio", user="alice", quota="premium_interactions") == 0.875
    assert g("copilot_budget_used_credits", user="alice") == pytest.approx(0.412)
    harness.tctx.configure(harness.addon, copilot_budget="100")
    assert g("copilot_budget_allowance_credits", user="alice") == 100
    assert g("copilot_budget_used_credits", user="alice") == pytest.approx(0.412)
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"version": "test", "models": {"gpt-4.1": {"input": 1, "output": 1}}}))
    harness.tctx.configure(harness.addon, copilot_price_table=str(table))
    assert harness.addon.tracker.prices.table.version == "test"
    harness.tctx.configure(harness.addon, copilot_price_table="")
    assert harness.addon.tracker.prices.table.version != "test"


def test_a_displaced_users_quota_and_budget_gauges_go_with_their_label_slot() -> None:
    from exporter.dispatch import Dispatcher, LabelEvicted
    from exporter.writer import ErrorReporter
    from tests.factories import event

    clock = Clock()
    holder: list[Dispatcher] = []
    policy = LabelPolicy(max_users=1, on_evict=lambda user: holder[0].health(LabelEvicted("user", user)))
    sink = CostSink(policy, clock)
    sink.configure(Budgets(), 3600.0, None)
    registry = CollectorRegistry()
    registry.register(sink.quota)
    registry.register(sink.budget)
    dispatcher = Dispatcher(ErrorReporter(lambda _: None), policy, [sink])
    holder.append(dispatcher)
    g = registry.get_sample_value
    when = datetime.fromtimestamp(clock.now, UTC)
    # A made-up name whose calls fail (proxyauth=any) takes the free slot provisionally, with a quota snapshot.
    dispatcher.emit(
        event(kind="chat_agent", user="junk", status=401, quota=to_json([QuotaReading("chat", False, 0.5)]))
    )
    assert g("copilot_quota_remaining_ratio", {"user": "junk", "quota": "chat"}) == 0.5
    # A real user's successful, billed call displaces it: junk's gauges go, alice's are there under her name.
    dispatcher.emit(
        event(
            kind="chat_agent",
            user="alice",
            credits_nano_aiu=3 * 10**9,
            credits_source="server",
            timestamp=when,
            quota=to_json([QuotaReading("chat", False, 0.25)]),
        )
    )
    assert g("copilot_quota_remaining_ratio", {"user": "junk", "quota": "chat"}) is None
    assert g("copilot_quota_remaining_ratio", {"user": "alice", "quota": "chat"}) == 0.25
    assert g("copilot_budget_used_credits", {"user": "alice"}) == 3
    # A third name while alice is active: folded into other, never displacing her.
    dispatcher.emit(
        event(kind="chat_agent", user="mallory", status=401, quota=to_json([QuotaReading("chat", False, 0.9)]))
    )
    assert g("copilot_quota_remaining_ratio", {"user": "other", "quota": "chat"}) == 0.9
    assert g("copilot_budget_used_credits", {"user": "alice"}) == 3


@given(st.floats(min_value=0, max_value=253_402_300_799, allow_nan=False))  # up to 9999-12-31T23:59:59Z
def test_month_of_is_the_utc_year_and_month(ts: float) -> None:
    from datetime import UTC, datetime

    from exporter.budgets import month_of

    assert month_of(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m").zfill(7)
