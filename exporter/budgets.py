"""Monthly AI-credit allowances per user, month-to-date use and its projection; the cost sink that keeps them
and the quota board, both exposed as live gauges (they depend on the clock, not only on events)."""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import metricdefs as md
from exporter.credits import NANO
from exporter.dispatch import Emitted, Health, LabelEvicted
from exporter.insight import insight_path
from exporter.labels import LabelPolicy
from exporter.quota import DEFAULT_TTL_S, QuotaBoard, from_json
from exporter.values import quick_init

log = logging.getLogger("copilot_proxy_insight")

# Credits per user per month included in a seat (the pool is this times the seats; §2.1 of the billing notes).
PLAN_ALLOWANCES: dict[str, float] = {"business": 1900.0, "enterprise": 3900.0}
MIN_ELAPSED_S = 86_400.0  # the projection extrapolates at least one day of use (the 1st hour would x720)
MAX_BUDGET_USERS = 10_000


class BudgetError(ValueError):
    """A budget option or file that cannot be used."""


@quick_init
@dataclass(frozen=True, slots=True)
class Budgets:
    """The default monthly allowance (credits), per-team and per-user overrides."""

    default: float = PLAN_ALLOWANCES["business"]
    default_is_plan: bool = True  # a plan name: a user's own plan (copilot_internal/user) wins over it
    users: Mapping[str, float] = field(default_factory=dict)
    teams: Mapping[str, float] = field(default_factory=dict)

    def allowance(self, user: str, plan: str | None = None, teams: tuple[str, ...] = ()) -> float:
        """The user's own entry, else the largest entry of their teams, else their plan, else the default."""
        if user in self.users:
            return self.users[user]
        team_allowances = [self.teams[t] for t in teams if t in self.teams]
        if team_allowances:
            return max(team_allowances)
        if self.default_is_plan and plan in PLAN_ALLOWANCES:
            return PLAN_ALLOWANCES[plan]
        return self.default


def _credits(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise BudgetError(f"{where}: expected a number of AI credits (0 or more), got {value!r}")
    return float(value)


def parse_default(text: str) -> tuple[float, bool]:
    """`business`, `enterprise` or a number of credits."""
    value = text.strip().lower()
    if value in PLAN_ALLOWANCES:
        return PLAN_ALLOWANCES[value], True
    try:
        return _credits(float(value), "copilot_budget"), False
    except ValueError:
        raise BudgetError(f"copilot_budget={text!r}: expected business, enterprise or a number of AI credits") from None


def load_budgets(default_text: str, path: str) -> Budgets:
    """The budgets of the options: a default and an optional JSON file
    `{"default": …, "teams": {team: credits}, "users": {name: credits}}`."""
    default, is_plan = parse_default(default_text)
    if not path:
        return Budgets(default, is_plan)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BudgetError(f"copilot_budget_file: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BudgetError(f"copilot_budget_file: {path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k, {}), dict) for k in ("users", "teams")):
        raise BudgetError(f"copilot_budget_file: {path}: expected an object with 'users' and/or 'teams' objects")
    if "default" in doc:
        default, is_plan = parse_default(str(doc["default"]))
    users, teams = (_entries(doc.get(key, {}), f"copilot_budget_file: {path}: {key}") for key in ("users", "teams"))
    return Budgets(default, is_plan, users, teams)


def _entries(entries: Mapping[Any, Any], where: str) -> dict[str, float]:
    if len(entries) > MAX_BUDGET_USERS:
        raise BudgetError(f"{where}: more than {MAX_BUDGET_USERS} entries")
    return {str(name): _credits(value, f"{where}.{name}") for name, value in entries.items()}


def month_of(ts: float) -> str:
    """YYYY-MM of the UTC month (read per call with credits: isoformat is several times faster than strftime)."""
    return datetime.fromtimestamp(ts, UTC).isoformat()[:7]


def month_bounds(ts: float) -> tuple[float, float]:
    """Start and end (exclusive) of the UTC month holding `ts`, as epoch seconds."""
    now = datetime.fromtimestamp(ts, UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    days = calendar.monthrange(now.year, now.month)[1]
    return start.timestamp(), start.timestamp() + days * 86_400.0


def projection(used: float, now: float) -> float:
    """Month-to-date use extrapolated linearly to the end of the month (at least one day of use measured)."""
    start, end = month_bounds(now)
    elapsed = max(MIN_ELAPSED_S, now - start)
    return used * (end - start) / elapsed


def month_to_date(data_dir: Path, now: float) -> dict[str, int]:
    """nano-AIU per user of this UTC month, from the extended daily summaries on disk (restart continuity)."""
    start, _ = month_bounds(now)
    first = datetime.fromtimestamp(start, UTC)
    today = datetime.fromtimestamp(now, UTC).day
    out: dict[str, int] = {}
    for day in range(1, today + 1):
        path = insight_path(data_dir, first.replace(day=day).strftime("%Y-%m-%d"))
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            log.warning("copilot-proxy-insight: month-to-date credits: cannot read %s: %s", path, e)
            continue
        users = doc.get("users") if isinstance(doc, dict) else None
        for user, entry in users.items() if isinstance(users, dict) else ():
            credits = entry.get("credits") if isinstance(entry, dict) else None
            nano = credits.get("nano_aiu") if isinstance(credits, dict) else None
            if isinstance(nano, int) and not isinstance(nano, bool) and nano > 0:
                out[str(user)] = out.get(str(user), 0) + nano
    return out


class BudgetBoard(Collector):
    """Month-to-date nano-AIU per user, with the allowance and the projection as gauges."""

    def __init__(self, clock: Callable[[], float], bound: Callable[[md.MetricDef, tuple[str, ...]], tuple[str, ...]]):
        self.clock = clock
        self.bound = bound
        self.budgets = Budgets()
        self.teams_of: Callable[[str], tuple[str, ...]] = _no_teams  # a user label's teams (exporter.teams)
        self.month = month_of(clock())
        self.used: dict[str, int] = {}
        self.plans: dict[str, str] = {}
        self._lock = threading.Lock()  # adds on the event loop, collects on the /metrics thread

    def load(self, used: Mapping[str, int]) -> None:
        with self._lock:
            self.month = month_of(self.clock())
            self.used = {}
        for user, nano in used.items():
            self.add(user, nano, self.clock())

    def add(self, user: str, nano: int, ts: float) -> None:
        month = month_of(ts)
        with self._lock:
            if month < self.month:
                return  # a late call of last month: its month is closed
            if month != self.month:
                self.month, self.used = month, {}
        (label,) = self.bound(md.BUDGET_USED, (user,))
        with self._lock:
            self.used[label] = self.used.get(label, 0) + nano

    def forget(self, user: str) -> None:
        with self._lock:
            self.used.pop(user, None)
            self.plans.pop(user, None)

    def set_plan(self, user: str, plan: str) -> None:
        with self._lock:
            self.plans[user] = plan

    def snapshot(self, now: float) -> tuple[dict[str, int], dict[str, str]]:
        """This month's use and the users' plans (a new month starts empty)."""
        with self._lock:
            if month_of(now) != self.month:
                self.month, self.used = month_of(now), {}
            return dict(self.used), dict(self.plans)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        spent, plans = self.snapshot(now)
        used = GaugeMetricFamily(md.BUDGET_USED.name, md.BUDGET_USED.help, labels=md.BUDGET_USED.labels)
        allowed = GaugeMetricFamily(
            md.BUDGET_ALLOWANCE.name, md.BUDGET_ALLOWANCE.help, labels=md.BUDGET_ALLOWANCE.labels
        )
        projected = GaugeMetricFamily(
            md.BUDGET_PROJECTED.name, md.BUDGET_PROJECTED.help, labels=md.BUDGET_PROJECTED.labels
        )
        for user in sorted(set(spent) | set(self.budgets.users)):
            credits = spent.get(user, 0) / NANO
            used.add_metric([user], credits)
            teams = self.teams_of(user) if self.budgets.teams else ()
            allowed.add_metric([user], self.budgets.allowance(user, plans.get(user), teams))
            projected.add_metric([user], projection(credits, now))
        yield from (used, allowed, projected)


def _no_teams(user: str) -> tuple[str, ...]:
    return ()


class CostSink:
    """Feeds the quota board (snapshots carried by events) and the budget board (credits counted per call)."""

    name = "cost"

    def __init__(self, policy: LabelPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy

        def bound(metric: md.MetricDef, labels: tuple[str, ...]) -> tuple[str, ...]:
            # The user label goes through the user slots first, like every per-user series (exporter.labels).
            folded: set[str] = set()
            user = policy.user(labels[0], False, clock(), folded)
            full = (user, *labels[1:]) + ("",) * (len(metric.labels) - len(labels))
            return policy.bound(metric.name, full, metric.labels, folded)[: len(labels)]

        self.quota = QuotaBoard(clock, bound, DEFAULT_TTL_S)
        self.budget = BudgetBoard(clock, bound)

    def configure(self, budgets: Budgets, quota_ttl_s: float, data_dir: Path | None) -> None:
        """New budget settings; with a data dir, month-to-date use is read back from the extended summaries."""
        self.budget.budgets = budgets
        self.quota.ttl_s = quota_ttl_s
        if data_dir is not None:
            self.budget.load(month_to_date(data_dir, self.budget.clock()))

    def handle(self, item: Emitted) -> None:
        event = item.event
        if event.quota:
            self.quota.record(event.user, from_json(event.quota))
        if event.copilot_plan:
            self.budget.set_plan(self.bound_user(event.user), event.copilot_plan)
        if event.credits_nano_aiu:
            self.budget.add(event.user, event.credits_nano_aiu, event.timestamp.timestamp())

    def bound_user(self, user: str) -> str:
        return self.budget.bound(md.BUDGET_USED, (user,))[0]

    def forget(self, user: str) -> None:
        """Drops a user label's quota and month-to-date gauges (for a user displaced from their label slot)."""
        self.quota.forget(user)
        self.budget.forget(user)

    def health(self, signal: Health) -> None:
        if isinstance(signal, LabelEvicted) and signal.label == "user":
            self.forget(signal.value)

    def close(self) -> None:
        return None  # nothing to flush: the month is rebuilt from the extended summaries on start
