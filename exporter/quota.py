"""Quota and rate-limit snapshots: parsed from `x-quota-snapshot-*` / `x-usage-ratelimit-*` response headers
and `copilot_internal/user` answers; kept per user, last value wins, dropped after a TTL."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import metricdefs as md
from exporter.values import quick_init

QUOTA_HEADER = "x-quota-snapshot-"
RATE_LIMIT_HEADER = "x-usage-ratelimit-"
# Bounded label values: a header or snapshot name outside these sets is ignored (never a new series).
QUOTAS = frozenset({"premium_interactions", "premium_models", "chat", "completions"})
WINDOWS = frozenset({"session", "weekly"})
DEFAULT_TTL_S = 6 * 3600.0
MAX_HEADER_VALUE = 512


@quick_init
@dataclass(frozen=True, slots=True)
class QuotaReading:
    """One snapshot of one quota (`window` False) or rate-limit window (`window` True)."""

    name: str
    window: bool
    remaining_ratio: float | None = None  # 0..1
    entitlement: float | None = None  # None: unlimited or not said
    overage: float | None = None
    resets: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "window": self.window,
            "remaining_ratio": self.remaining_ratio,
            "entitlement": self.entitlement,
            "overage": self.overage,
            "resets": self.resets,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _ratio(percent: Any) -> float | None:
    value = _number(percent)
    return None if value is None else min(1.0, max(0.0, value / 100.0))


def _entitlement(value: Any, unlimited: bool = False) -> float | None:
    ent = _number(value)
    return None if unlimited or ent is None or ent < 0 else ent  # ent=-1: unlimited


def _header_reading(name: str, window: bool, value: str) -> QuotaReading | None:
    fields = {k: v[0] for k, v in parse_qs(value[:MAX_HEADER_VALUE], keep_blank_values=True).items() if v}
    if "rem" not in fields and "ent" not in fields:
        return None
    overage = _number(fields.get("ov"))
    reading = QuotaReading(
        name=name,
        window=window,
        remaining_ratio=_ratio(fields.get("rem")),
        entitlement=_entitlement(fields.get("ent")),
        overage=overage if overage is not None and overage >= 0 else None,
        resets=(fields.get("rst") or None) and fields["rst"][:40],
    )
    if reading.remaining_ratio is None and reading.entitlement is None:
        return None  # nothing usable in it
    return reading


def from_headers(headers: Iterable[tuple[str, str]]) -> tuple[QuotaReading, ...]:
    """The snapshots in a response's headers (`ent=…&ov=…&ovPerm=…&rem=<percent>&rst=<ISO date>`)."""
    out: dict[tuple[str, bool], QuotaReading] = {}
    for raw_name, value in headers:
        name = raw_name.lower()
        if name.startswith(QUOTA_HEADER):
            key, window = name[len(QUOTA_HEADER) :], False
            known = QUOTAS
        elif name.startswith(RATE_LIMIT_HEADER):
            key, window = name[len(RATE_LIMIT_HEADER) :], True
            known = WINDOWS
        else:
            continue
        if key not in known:
            continue
        reading = _header_reading(key, window, value)
        if reading is not None:
            out[(key, window)] = reading
    return tuple(out.values())


def _snapshot_reading(name: str, snap: Mapping[str, Any]) -> QuotaReading | None:
    unlimited = snap.get("unlimited") is True
    ratio = _ratio(snap.get("percent_remaining"))
    if unlimited and ratio is None:
        ratio = 1.0
    if ratio is None and snap.get("entitlement") is None:
        return None
    overage = _number(snap.get("overage_count"))
    return QuotaReading(
        name=name,
        window=False,
        remaining_ratio=ratio,
        entitlement=_entitlement(snap.get("entitlement"), unlimited),
        overage=overage if overage is not None and overage >= 0 else None,
    )


def from_user_info(doc: Any) -> tuple[tuple[QuotaReading, ...], str | None]:
    """The quota snapshots and the plan (`copilot_plan`) of a `copilot_internal/user` answer."""
    if not isinstance(doc, dict):
        return (), None
    plan = doc.get("copilot_plan")
    plan = plan.strip().lower()[:32] if isinstance(plan, str) and plan.strip() else None
    snaps = doc.get("quota_snapshots")
    if not isinstance(snaps, dict):
        return (), plan
    readings = []
    reset = doc.get("quota_reset_date_utc") or doc.get("quota_reset_date")
    for name, snap in snaps.items():
        if name in QUOTAS and isinstance(snap, dict):
            reading = _snapshot_reading(name, snap)
            if reading is not None:
                if isinstance(reset, str):
                    reading = QuotaReading(**{**reading.as_dict(), "resets": reset[:40]})
                readings.append(reading)
    return tuple(readings), plan


def to_json(readings: Iterable[QuotaReading]) -> str | None:
    """The readings as the JSON text a log line carries (None: no snapshot in the answer)."""
    items = [r.as_dict() for r in readings]
    return json.dumps(items, separators=(",", ":")) if items else None


def from_json(text: str | None) -> tuple[QuotaReading, ...]:
    """Readings back from `to_json` text; anything else gives none."""
    try:
        items = json.loads(text) if text else []
    except ValueError:
        return ()
    out = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("name") not in QUOTAS | WINDOWS:
            continue
        out.append(
            QuotaReading(
                name=str(item["name"]),
                window=item.get("window") is True,
                remaining_ratio=_number(item.get("remaining_ratio")),
                entitlement=_number(item.get("entitlement")),
                overage=_number(item.get("overage")),
                resets=item["resets"] if isinstance(item.get("resets"), str) else None,
            )
        )
    return tuple(out)


Bound = Callable[[md.MetricDef, tuple[str, ...]], tuple[str, ...]]


class QuotaBoard(Collector):
    """The last snapshot per user and quota, exposed as gauges until it is older than the TTL."""

    def __init__(self, clock: Callable[[], float], bound: Bound, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.clock = clock
        self.bound = bound
        self.ttl_s = ttl_s
        self._last: dict[tuple[str, str, bool], tuple[QuotaReading, float]] = {}
        self._lock = threading.Lock()  # records on the event loop, collects on the /metrics thread

    def __len__(self) -> int:
        return len(self._last)

    def record(self, user: str, readings: Iterable[QuotaReading]) -> None:
        now = self.clock()
        (bounded_user,) = self.bound(md.QUOTA_REMAINING, (user,))[:1]
        with self._lock:
            for r in readings:
                self._last[(bounded_user, r.name, r.window)] = (r, now)

    def forget(self, user: str) -> None:
        """Drops every snapshot of a user label (a user who lost their label slot)."""
        with self._lock:
            for key in [k for k in self._last if k[0] == user]:
                del self._last[key]

    def sweep(self) -> list[tuple[tuple[str, str, bool], tuple[QuotaReading, float]]]:
        """Drops snapshots older than the TTL; returns the rest, sorted."""
        cutoff = self.clock() - self.ttl_s
        with self._lock:
            for key in [k for k, (_, seen) in self._last.items() if seen < cutoff]:
                del self._last[key]
            return sorted(self._last.items())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.sweep()
        families = {
            m.name: GaugeMetricFamily(m.name, m.help, labels=m.labels)
            for m in (md.QUOTA_REMAINING, md.QUOTA_ENTITLEMENT, md.QUOTA_OVERAGE, md.RATE_LIMIT_REMAINING)
        }
        for (user, name, window), (r, _) in current:
            if window:
                if r.remaining_ratio is not None:
                    families[md.RATE_LIMIT_REMAINING.name].add_metric([user, name], r.remaining_ratio)
                continue
            if r.remaining_ratio is not None:
                families[md.QUOTA_REMAINING.name].add_metric([user, name], r.remaining_ratio)
            if r.entitlement is not None:
                families[md.QUOTA_ENTITLEMENT.name].add_metric([user, name], r.entitlement)
            if r.overage is not None:
                families[md.QUOTA_OVERAGE.name].add_metric([user, name], r.overage)
        yield from families.values()
