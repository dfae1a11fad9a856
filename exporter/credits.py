"""AI credits of one model call: the server's figure, else an estimate from tokens x per-model prices.

Prices come from `/models` answers seen through the proxy (`billing.token_prices`), else from the shipped,
dated table `exporter/prices.json` (or the file `copilot_price_table` names). Arithmetic is exact
(`Fraction`) and ends in whole nano-AIU (credits x 10^9), the unit of `copilot_nano_aiu_total`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from exporter.values import quick_init

NANO = 10**9
DEFAULT_BATCH = 1_000_000
AUTO_DISCOUNT = Fraction(9, 10)  # Auto model selection: 10 % off model costs (paid plans)
MAX_LEARNED_MODELS = 512
SERVER = "server"
ESTIMATED = "estimated"
LEARNED = "learned"
TABLE = "table"

# Kinds that are billed in AI credits. Completions, next edit, instant apply and embeddings "remain
# unlimited" (copilot-telemetry-and-billing.md §2.1); every chat mode is billed, tool rounds included.
BILLED_KINDS = frozenset(
    {"chat", "chat_panel", "chat_agent", "chat_edits", "chat_inline", "chat_notebook", "chat_terminal", "chat_ws"}
)
BACKGROUND_INTENT = "conversation-background"

# error.code values of 4xx answers (LS CapiErrorTranslator); longest first so prefixes match the most
# specific code (`user_weekly_rate_limited_premium` -> user_weekly_rate_limited).
ERROR_CODES: tuple[str, ...] = tuple(
    sorted(
        (
            "quota_exceeded",
            "free_quota_exceeded",
            "session_quota_exceeded",
            "user_weekly_rate_limited",
            "user_global_rate_limited",
            "user_model_rate_limited",
            "integration_rate_limited",
            "upstream_provider_rate_limit",
            "rate_limited",
            "billing_not_configured",
        ),
        key=len,
        reverse=True,
    )
)
NO_CODE = "none"
OTHER_CODE = "other"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class PriceTableError(ValueError):
    """A price table that cannot be used; the message says where and why."""


def error_code(code: str | None) -> str:
    """The bounded error-code label of a failed call: a known `error.code`, `other`, or `none`."""
    if not code:
        return NO_CODE
    lowered = code.strip().lower()
    for known in ERROR_CODES:
        if lowered.startswith(known):
            return known
    return OTHER_CODE


@quick_init
@dataclass(frozen=True, slots=True)
class Tier:
    """Prices of one tier in nano-AIU per token, by token class (exact fractions)."""

    input: Fraction
    cached: Fraction
    cache_write: Fraction
    output: Fraction


@quick_init
@dataclass(frozen=True, slots=True)
class ModelPrice:
    default: Tier
    long_context: Tier | None = None
    context_max: int | None = None  # input tokens above which the long-context tier applies


@quick_init
@dataclass(frozen=True, slots=True)
class Tokens:
    """The token counts of one call as the answer reported them (input includes cached and cache writes)."""

    input: int = 0
    cached: int = 0
    cache_write: int = 0
    output: int = 0


def _price(value: Any, where: str) -> Fraction | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PriceTableError(f"{where}: expected a number, got {value!r}")
    try:
        price = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise PriceTableError(f"{where}: expected a number, got {value!r}") from None
    if price < 0:
        raise PriceTableError(f"{where}: a price cannot be negative ({value!r})")
    return price


def _tier(row: Mapping[str, Any], keys: tuple[str, str, str, str], per: Fraction, where: str) -> Tier:
    """A tier from credits-per-batch prices; missing cached/cache-write prices fall back to the input price."""
    inp, cached, write, out = (_price(row.get(k), f"{where}.{k}") for k in keys)
    if inp is None or out is None:
        raise PriceTableError(f"{where}: needs {keys[0]} and {keys[3]}")
    return Tier(
        input=inp * per,
        cached=(cached if cached is not None else inp) * per,
        cache_write=(write if write is not None else inp) * per,
        output=out * per,
    )


@functools.lru_cache(maxsize=1024)  # a few dozen model ids, looked up on every billed call
def model_key(model: str) -> str:
    """The price-table key of a model id: lower case, a dated snapshot suffix removed."""
    return _DATED.sub("", model.strip().lower())


@quick_init
@dataclass(frozen=True, slots=True)
class PriceTable:
    """A dated table of prices per model, plus the utility models that are never billed."""

    version: str
    models: Mapping[str, ModelPrice]
    utility_models: frozenset[str] = frozenset()

    def get(self, model: str) -> ModelPrice | None:
        return self.models.get(model_key(model))


def table_from_doc(doc: Any, where: str) -> PriceTable:
    """A price table from its JSON document (credits per 1M tokens; see docs/cost.md for the format)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise PriceTableError(f"{where}: expected an object with a 'models' object")
    per = Fraction(NANO, DEFAULT_BATCH)
    keys = ("input", "cached_input", "cache_write", "output")
    models: dict[str, ModelPrice] = {}
    for name, row in doc["models"].items():
        if not isinstance(row, dict):
            raise PriceTableError(f"{where}: models.{name}: expected an object")
        long_row = row.get("long_context")
        long_tier = None
        above = None
        if long_row is not None:
            if not isinstance(long_row, dict) or not isinstance(long_row.get("above"), int):
                raise PriceTableError(f"{where}: models.{name}.long_context: expected an object with 'above' tokens")
            long_tier = _tier(long_row, keys, per, f"{where}: models.{name}.long_context")
            above = long_row["above"]
        models[model_key(str(name))] = ModelPrice(_tier(row, keys, per, f"{where}: models.{name}"), long_tier, above)
    utility = doc.get("utility_models", [])
    if not isinstance(utility, list) or not all(isinstance(u, str) for u in utility):
        raise PriceTableError(f"{where}: utility_models: expected a list of model ids")
    return PriceTable(str(doc.get("version") or "unversioned"), models, frozenset(model_key(u) for u in utility))


def shipped_table() -> PriceTable:
    text = resources.files("exporter").joinpath("prices.json").read_text(encoding="utf-8")
    return table_from_doc(json.loads(text), "exporter/prices.json")


def load_table(path: str) -> PriceTable:
    """A price table file (the copilot_price_table option); PriceTableError naming the file when unusable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise PriceTableError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PriceTableError(f"{path} is not JSON: {e}") from None
    return table_from_doc(doc, path)


def _learned_tier(row: Any, per: Fraction) -> tuple[Tier, int | None] | None:
    if not isinstance(row, dict):
        return None
    try:
        tier = _tier(row, ("input_price", "cache_price", "cache_write_price", "output_price"), per, "token_prices")
    except PriceTableError:
        return None
    cmax = row.get("context_max")
    return tier, cmax if isinstance(cmax, int) and not isinstance(cmax, bool) and cmax > 0 else None


def price_from_billing(billing: Any) -> ModelPrice | None:
    """A model's prices from its `/models` `billing.token_prices` (AI credits per `batch_size` tokens; the
    older flat form gives `input_price`/`output_price` in nano-AIU per batch). None when absent or unusable."""
    prices = billing.get("token_prices") if isinstance(billing, dict) else None
    if not isinstance(prices, dict):
        return None
    batch = prices.get("batch_size", DEFAULT_BATCH)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        return None
    if "default" not in prices:
        flat = _learned_tier(prices, Fraction(1, batch))
        return ModelPrice(flat[0]) if flat is not None else None
    per = Fraction(NANO, batch)
    default = _learned_tier(prices.get("default"), per)
    if default is None:
        return None
    long_tier = _learned_tier(prices.get("long_context"), per)
    return ModelPrice(default[0], long_tier[0] if long_tier else None, default[1] if long_tier else None)


class PriceBook:
    """Prices the estimate uses: learned from `/models` answers first, then the configured table."""

    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table if table is not None else shipped_table()
        self._learned: dict[str, ModelPrice] = {}

    def learn(self, doc: Any) -> list[str]:
        """Learns `billing.token_prices` of every model in a `/models` answer; returns the models learned."""
        learned: list[str] = []
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            return learned
        for model in data:
            if not isinstance(model, dict) or not isinstance(model.get("id"), str):
                continue
            price = price_from_billing(model.get("billing"))
            key = model_key(model["id"])[:128]
            if price is None or (key not in self._learned and len(self._learned) >= MAX_LEARNED_MODELS):
                continue
            self._learned[key] = price
            learned.append(key)
        return learned

    def lookup(self, *models: str | None) -> tuple[ModelPrice, str] | None:
        """The price of the first of `models` known, learned before table; with where it came from."""
        names = [m for m in models if m]
        for name in names:
            hit = self._learned.get(model_key(name))
            if hit is not None:
                return hit, LEARNED
        for name in names:
            row = self.table.get(name)
            if row is not None:
                return row, TABLE
        return None

    def is_utility(self, model: str | None) -> bool:
        return bool(model) and model_key(model or "") in self.table.utility_models


_SCALED: dict[int, tuple[Tier, int, tuple[int, int, int, int]]] = {}


def _scaled(tier: Tier) -> tuple[int, tuple[int, int, int, int]]:
    """The tier's four prices over one common denominator: the estimate in integers, exact, without building
    Fractions per call (several times slower). Cached by identity; the tier is kept so its id stays its own."""
    hit = _SCALED.get(id(tier))
    if hit is None or hit[0] is not tier:
        prices = (tier.input, tier.cached, tier.cache_write, tier.output)
        denominator = math.lcm(*(p.denominator for p in prices))
        a, b, c, d = (p.numerator * (denominator // p.denominator) for p in prices)
        if len(_SCALED) >= 4096:
            _SCALED.clear()  # price tables are small; a flood of learned prices must not grow this
        hit = _SCALED[id(tier)] = (tier, denominator, (a, b, c, d))
    return hit[1], hit[2]


def estimate(price: ModelPrice, tokens: Tokens, auto: bool = False) -> int:
    """nano-AIU of one call: uncached input, cached input, cache writes and output at their tier's prices,
    rounded half to even (as `round` of the exact fraction)."""
    tier = price.default
    if price.long_context is not None and price.context_max is not None and tokens.input > price.context_max:
        tier = price.long_context
    denominator, (p_in, p_cached, p_write, p_out) = _scaled(tier)
    uncached = max(0, tokens.input - tokens.cached - tokens.cache_write)
    total = uncached * p_in + tokens.cached * p_cached + tokens.cache_write * p_write + tokens.output * p_out
    if auto:
        total *= AUTO_DISCOUNT.numerator
        denominator *= AUTO_DISCOUNT.denominator
    quotient, rest = divmod(total, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and quotient % 2):
        quotient += 1
    return quotient


@quick_init
@dataclass(frozen=True, slots=True)
class Credits:
    """The credit facts of one call: what is counted (`nano_aiu`, `source`), the estimate for calibration,
    and whether the call is billed at all or its model's price is unknown."""

    billed: bool
    nano_aiu: int | None = None
    source: str | None = None
    estimated: int | None = None
    price_source: str | None = None
    unknown_price: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class CallUsage:
    kind: str
    model: str | None
    resolved_model: str | None
    skip_reason: str | None
    server_nano_aiu: int | None
    tokens: Tokens | None
    auto: bool
    ok: bool  # answered 2xx


def billed(usage: CallUsage, prices: PriceBook) -> bool:
    """Chat modes are billed; utility models doing auxiliary work (titles, commit messages) are not."""
    if usage.kind not in BILLED_KINDS:
        return False
    utility = prices.is_utility(usage.model) or prices.is_utility(usage.resolved_model)
    return not (utility and usage.skip_reason == "auxiliary")


def credits_of(usage: CallUsage, prices: PriceBook) -> Credits:
    """The server figure wins where the answer carries one (> 0); else the estimate of a billed call."""
    is_billed = billed(usage, prices)
    server = usage.server_nano_aiu
    if not is_billed and (server is None or server <= 0):
        return Credits(False)  # completions and the like: no price lookup on the hot path
    found = prices.lookup(usage.model, usage.resolved_model) if usage.tokens is not None else None
    est = estimate(found[0], usage.tokens, usage.auto) if found is not None and usage.tokens is not None else None
    price_source = found[1] if found is not None else None
    if server is not None and server > 0:
        return Credits(True, server, SERVER, est, price_source)
    if not usage.ok or usage.tokens is None:
        return Credits(True, None, None, est, price_source)
    if est is None:
        return Credits(True, unknown_price=True)
    return Credits(True, est, ESTIMATED, est, price_source)
