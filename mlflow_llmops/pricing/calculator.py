"""``CostCalculator``: exact cost of LLM calls from a versioned price catalog.

Exact ``Decimal`` arithmetic (scalar) and exact integer pico-dollars
(vectorised), so sums over millions of rows never drift. Unknown models are
``unpriced`` (total ``None``), never $0; tokens in a bucket without a price make
the result ``partial`` and are listed, never silently dropped.

Fallback rules (the way providers bill when they publish no separate rate):
cache reads and cache writes without their own rate are billed at the input
rate; 1-hour cache writes without their own rate at the 5-minute write rate;
reasoning tokens at the output rate. A service tier whose entry lacks a rate
scales the standard rate by the tier's input-price ratio (batch is a uniform
discount). Each fallback is listed in ``CostResult.notes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import compress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_llmops.core.clock import Clock, SystemClock
from mlflow_llmops.pricing.catalog import (
    RATE_FIELDS,
    STANDARD_TIERS,
    TIER_ALIASES,
    Match,
    PriceCatalog,
    PriceEntry,
    Rates,
    build_catalog,
)
from mlflow_llmops.pricing.usage import TokenUsage, UsageError, _CheckedUsage, coerce_usage

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from mlflow_llmops.pricing.config import PricingConfig

PICO = Decimal(10) ** 12
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class ResolvedRates:
    """Rates after tier, long-context and fallback rules: what is actually charged."""

    rates: dict[str, Decimal | None]  # per bucket incl. "reasoning"; None = no price
    tier: str | None  # the tier applied, None for standard
    long_context_threshold: int | None
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CostResult:
    """The cost of one LLM call, per token bucket, with where the price came from."""

    status: str  # priced | unpriced | partial
    total: Decimal | None
    breakdown: dict[str, Decimal]
    usage: TokenUsage
    model: str | None
    provider: str | None
    catalog_version: str
    matched_entry: str | None = None
    match_kind: str = "none"
    service_tier: str | None = None
    long_context_threshold: int | None = None
    unpriced_tokens: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    reason: str = ""
    currency: str = "USD"

    def cost_of(self, *buckets: str) -> Decimal | None:
        """Sum of some buckets (None when nothing was priced)."""
        if self.total is None:
            return None
        return sum((self.breakdown.get(b, _ZERO) for b in buckets), _ZERO)


class _NewResult:
    """``_NewResult(...)`` returns a real :class:`CostResult` (every field positional).

    The frozen dataclass's ``__init__`` sets its 15 fields through
    ``object.__setattr__``, the largest single cost of a scalar ``cost()`` call. This
    twin has the same slots: it is filled with plain attribute stores, then retagged
    as ``CostResult`` (``__class__`` assignment between identical slot layouts), so
    the result is indistinguishable from ``CostResult(...)`` and just as immutable.
    """

    __slots__ = CostResult.__slots__

    def __init__(
        self,
        status: str,
        total: Decimal | None,
        breakdown: dict[str, Decimal],
        usage: TokenUsage,
        model: str | None,
        provider: str | None,
        catalog_version: str,
        matched_entry: str | None,
        match_kind: str,
        service_tier: str | None,
        long_context_threshold: int | None,
        unpriced_tokens: dict[str, int],
        notes: tuple[str, ...],
        reason: str,
    ) -> None:
        self.status = status
        self.total = total
        self.breakdown = breakdown
        self.usage = usage
        self.model = model
        self.provider = provider
        self.catalog_version = catalog_version
        self.matched_entry = matched_entry
        self.match_kind = match_kind
        self.service_tier = service_tier
        self.long_context_threshold = long_context_threshold
        self.unpriced_tokens = unpriced_tokens
        self.notes = notes
        self.reason = reason
        self.currency = "USD"
        self.__class__ = CostResult  # type: ignore[assignment]


def resolve_rates(entry: PriceEntry, tier: str | None, prompt_tokens: int) -> ResolvedRates:
    """Apply service tier, long-context tier and fallback rules to an entry."""
    notes: list[str] = []
    base = entry.rates
    rates = base
    applied: str | None = None
    t = _norm_tier(tier)
    ratio: Decimal | None = None
    if t is not None:
        tier_rates = entry.tiers.get(t)
        if tier_rates is None:
            notes.append(f"service tier {t!r} has no price for {entry.key}; standard rates used")
        else:
            applied = t
            if tier_rates.input is not None and base.input:
                ratio = tier_rates.input / base.input
            filled = {}
            for f in RATE_FIELDS:
                v = getattr(tier_rates, f)
                if v is None and getattr(base, f) is not None:
                    if ratio is not None:
                        v = getattr(base, f) * ratio
                        if getattr(base, f):
                            notes.append(f"{f} {t} rate scaled from standard by the tier's ratio")
                    else:
                        v = getattr(base, f)
                filled[f] = v
            rates = Rates(**filled)
    lc_threshold = None
    chosen = Rates()
    lcs = entry.tier_long_context.get(applied) if applied else None
    scale_lc = False
    if not lcs:
        lcs = entry.long_context
        scale_lc = applied is not None and ratio is not None
    for lc in lcs:
        if prompt_tokens > lc.threshold:
            lc_threshold = lc.threshold
            lr = lc.rates.scaled(ratio) if scale_lc and ratio is not None else lc.rates
            chosen = lr
    if lc_threshold is not None:
        lc_full = chosen.over(rates)
        # Cache rates are multiples of the input rate: scale those the tier leaves out.
        if chosen.input is not None and rates.input:
            lc_ratio = chosen.input / rates.input
            fill = {
                f: getattr(rates, f) * lc_ratio
                for f in ("cache_read", "cache_write_5m", "cache_write_1h")
                if getattr(chosen, f) is None and getattr(rates, f) is not None
            }
            lc_full = Rates(**fill).over(lc_full)
        rates = lc_full
        notes.append(f"long-context rates above {lc_threshold} prompt tokens")
    out: dict[str, Decimal | None] = {f: getattr(rates, f) for f in RATE_FIELDS}
    if out["cache_read"] is None and out["input"] is not None:
        out["cache_read"] = out["input"]
        notes.append("no cache-read price: billed at the input rate")
    if out["cache_write_5m"] is None and out["input"] is not None:
        out["cache_write_5m"] = out["input"]
        notes.append("no cache-write price: billed at the input rate")
    if out["cache_write_1h"] is None and out["cache_write_5m"] is not None:
        out["cache_write_1h"] = out["cache_write_5m"]
        notes.append("no 1-hour cache-write price: billed at the 5-minute write rate")
    if out["reasoning"] is None:
        out["reasoning"] = out["output"]
    return ResolvedRates(out, applied, lc_threshold, tuple(notes))


#: Keys of an MLflow usage record that ``cost()`` reads inline (no cache writes, no reasoning).
_PLAIN_USAGE_KEYS = frozenset(
    {"input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens"}
)


def _text_counts(u: TokenUsage) -> tuple[int, int, int, int, int, int]:
    return u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h, u.output, u.reasoning


def _norm_tier(tier: str | None) -> str | None:
    if tier is None:
        return None
    t = str(tier).strip().lower()
    if t in STANDARD_TIERS:
        return None
    return TIER_ALIASES.get(t, t)


def _to_day(at: datetime | date | int | float | None, clock: Clock) -> date:
    if at is None:
        return clock.now().astimezone(UTC).date()
    if isinstance(at, datetime):
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).date()
    if isinstance(at, date):
        return at
    return datetime.fromtimestamp(float(at) / 1000, tz=UTC).date()


_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant ``date`` holds


def _day_ordinal(at: datetime | date | int | float | None, clock: Clock) -> int:
    """``_to_day(at, clock).toordinal()``; epoch milliseconds (the common case, a
    trace timestamp) by integer division, which gives the same day over that range."""
    if type(at) is int and 0 <= at <= _MAX_MS:
        return at // _MS_PER_DAY + _EPOCH_ORDINAL
    return _to_day(at, clock).toordinal()


class _Plan:
    """What ``cost()`` needs for one (model, provider, service tier), found once."""

    __slots__ = ("match", "timeless", "days")

    def __init__(self, match: Match, timeless: _EntryPlan | None) -> None:
        self.match = match
        self.timeless = timeless  # the entry when its price does not depend on the date
        self.days: dict[int, _EntryPlan | None] = {}  # otherwise: per day ordinal


class _EntryPlan:
    """One price entry under one service tier: long-context thresholds and, per
    long-context level, the rates and labels to charge (filled on first use)."""

    __slots__ = ("entry", "tier", "thresholds", "levels")

    def __init__(self, entry: PriceEntry, tier: str | None) -> None:
        self.entry = entry
        self.tier = tier
        lcs = entry.tier_long_context.get(_norm_tier(tier) or "", ()) or entry.long_context
        self.thresholds = tuple(lc.threshold for lc in lcs)
        self.levels: list[_Level | None] = [None] * (len(self.thresholds) + 1)


class _Level:
    """Resolved rates in ``_VEC`` order, plus the result fields they determine."""

    __slots__ = (
        "rates",
        "merge_reasoning",
        "text_priced",
        "label",
        "kind",
        "tier",
        "threshold",
        "notes",
    )

    def __init__(self, rr: ResolvedRates, entry: PriceEntry, match: Match) -> None:
        rates = rr.rates
        self.rates = tuple(rates[b] for b in _VEC)
        self.merge_reasoning = rates["reasoning"] == rates["output"]
        #: Every text bucket has a rate (and no positive exponent, so ``0 + x`` is ``x``
        #: digit for digit): ``cost()`` may skip the missing-price checks and ``sum()``.
        self.text_priced = all(
            r is not None and r.as_tuple().exponent <= 0  # type: ignore[operator]
            for r in self.rates[:6]
        )
        self.label = entry.label
        self.kind = match.kind
        self.tier = rr.tier
        self.threshold = rr.long_context_threshold
        self.notes = rr.notes + (
            (f"provider inferred among {', '.join(match.candidates)}",)
            if match.provider_inferred
            else ()
        )


#: Bounds of the calculator's caches (cleared when exceeded; refilled on demand).
_MAX_PLANS = 50_000
_MAX_DAYS_PER_PLAN = 4_096
_MAX_ENTRIES = 200_000
_MAX_RATES = 100_000


#: Column names of the vectorised path (as in ``llmops_span_costs``).
FRAME_TOKEN_COLUMNS: dict[str, str] = {
    "input": "input_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "output": "output_tokens",
    "reasoning": "reasoning_tokens",
    "audio_input": "audio_input_tokens",
    "audio_output": "audio_output_tokens",
    "image_input": "image_input_tokens",
}
#: Buckets of the vectorised rate matrix; ``output`` there is output minus reasoning.
_VEC = (
    "input",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
    "output",
    "reasoning",
    "audio_input",
    "audio_output",
    "image_input",
)
_VEC_INDEX = tuple(range(len(_VEC)))
#: The token buckets of :meth:`CostCalculator.cost_frame` ``detail`` bit masks, in bit order.
BUCKETS = _VEC


class CostCalculator:
    """Prices LLM calls against a :class:`PriceCatalog`; scalar and vectorised."""

    def __init__(self, catalog: PriceCatalog, *, clock: Clock | None = None) -> None:
        self.catalog = catalog
        self.clock: Clock = clock or SystemClock()

    @property
    def catalog(self) -> PriceCatalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: PriceCatalog) -> None:
        """A new catalog starts with empty caches (they hold entries of the old one)."""
        self._catalog = catalog
        self._version = catalog.version
        self._entry_cache: dict[tuple[tuple[str, str], date], PriceEntry | None] = {}
        self._rate_cache: dict[tuple[int, str | None, int], tuple[PriceEntry, ResolvedRates]] = {}
        self._plans: dict[tuple[Any, Any, Any], _Plan] = {}

    # -- construction -----------------------------------------------------
    @classmethod
    def default(cls, *, clock: Clock | None = None) -> CostCalculator:
        """MLflow's bundled catalog, read offline (never fetched)."""
        return cls(build_catalog(), clock=clock)

    @classmethod
    def from_files(
        cls,
        *,
        include_mlflow_catalog: bool = True,
        mlflow_catalog_dir: str | Path | None = None,
        catalog_files: Sequence[str | Path] = (),
        litellm_files: Sequence[str | Path] = (),
        overrides_file: str | Path | None = None,
        clock: Clock | None = None,
    ) -> CostCalculator:
        return cls(
            build_catalog(
                include_mlflow_catalog=include_mlflow_catalog,
                mlflow_catalog_dir=mlflow_catalog_dir,
                catalog_files=catalog_files,
                litellm_files=litellm_files,
                overrides_file=overrides_file,
            ),
            clock=clock,
        )

    @classmethod
    def from_config(cls, config: PricingConfig, *, clock: Clock | None = None) -> CostCalculator:
        return cls.from_files(
            include_mlflow_catalog=config.include_mlflow_catalog,
            mlflow_catalog_dir=config.mlflow_catalog_dir,
            catalog_files=config.catalog_files,
            litellm_files=config.litellm_files,
            overrides_file=config.overrides_file,
            clock=clock,
        )

    @property
    def catalog_version(self) -> str:
        return self.catalog.version

    # -- lookup -----------------------------------------------------------
    def match(self, model: str | None, provider: str | None = None) -> Match:
        return self.catalog.match(model, provider)

    def entry_for(
        self,
        model: str | None,
        provider: str | None = None,
        at: datetime | date | int | None = None,
    ) -> tuple[Match, PriceEntry | None]:
        """The match and the entry in force at ``at`` (default: the clock's today)."""
        m = self.catalog.match(model, provider)
        if m.key is None:
            return m, None
        return m, self._entry(m.key, _to_day(at, self.clock))

    def _entry(self, key: tuple[str, str], day: date) -> PriceEntry | None:
        ck = (key, day)
        try:
            return self._entry_cache[ck]
        except KeyError:
            e = self._catalog.entry_at(key, day)
            if len(self._entry_cache) > _MAX_ENTRIES:
                self._entry_cache.clear()
            self._entry_cache[ck] = e
            return e

    def _resolved(self, entry: PriceEntry, tier: str | None, prompt_tokens: int) -> ResolvedRates:
        level = 0
        lcs = entry.tier_long_context.get(_norm_tier(tier) or "", ()) or entry.long_context
        for i, lc in enumerate(lcs, start=1):
            if prompt_tokens > lc.threshold:
                level = i
        ck = (id(entry), tier, level)
        hit = self._rate_cache.get(ck)
        # The entry is kept with its rates: its id cannot be reused while cached.
        if hit is not None and hit[0] is entry:
            return hit[1]
        r = resolve_rates(entry, tier, prompt_tokens)
        if len(self._rate_cache) > _MAX_RATES:
            self._rate_cache.clear()
        self._rate_cache[ck] = (entry, r)
        return r

    def _plan(self, model: Any, provider: Any, service_tier: Any, *, keep: bool = True) -> _Plan:
        m = self._catalog.match(model, provider)
        timeless = None
        if m.key is not None:
            entry = self._catalog.timeless.get(m.key)
            if entry is not None:
                timeless = _EntryPlan(entry, service_tier)
        plan = _Plan(m, timeless)
        if keep:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[(model, provider, service_tier)] = plan
        return plan

    def _dated(self, plan: _Plan, at: Any, service_tier: Any) -> _EntryPlan | None:
        """The entry plan in force on ``at``'s day, for a key whose price has dates."""
        day = _day_ordinal(at, self.clock)
        try:
            return plan.days[day]
        except KeyError:
            pass
        key = plan.match.key
        assert key is not None
        entry = self._entry(key, date.fromordinal(day))
        ep = None if entry is None else _EntryPlan(entry, service_tier)
        if len(plan.days) >= _MAX_DAYS_PER_PLAN:
            plan.days.clear()
        plan.days[day] = ep
        return ep

    # -- scalar -----------------------------------------------------------
    def cost(
        self,
        *,
        model: str | None,
        provider: str | None = None,
        usage: TokenUsage | Mapping[str, Any] | str,
        service_tier: str | None = None,
        at: datetime | date | int | None = None,
    ) -> CostResult:
        """Price one call. ``usage`` in MLflow's ``mlflow.chat.tokenUsage`` convention
        (input includes cached), GenAI semconv attributes, or a :class:`TokenUsage`."""
        if type(usage) is dict and usage.keys() <= _PLAIN_USAGE_KEYS:
            # MLflow's usage record of a text call (the common span), read inline.
            g = usage.get
            inp, out, cr = (
                g("input_tokens", 0),
                g("output_tokens", 0),
                g("cache_read_input_tokens", 0),
            )
            if type(inp) is int and type(out) is int and type(cr) is int and inp >= cr >= 0 <= out:
                inp -= cr
                u = _CheckedUsage(inp, cr, 0, 0, out, 0)
                c5 = c1 = reasoning = 0
                media = False
            else:
                u = coerce_usage(usage)
                inp, cr, c5, c1, out, reasoning = _text_counts(u)
                media = u.audio_input or u.audio_output or u.image_input
        else:
            u = usage if type(usage) is TokenUsage else coerce_usage(usage)
            inp, cr, c5, c1, out, reasoning = _text_counts(u)
            media = u.audio_input or u.audio_output or u.image_input
        try:
            plan = self._plans[(model, provider, service_tier)]
        except KeyError:
            plan = self._plan(model, provider, service_tier)
        except TypeError:  # an unhashable argument: a plan for this call only
            plan = self._plan(model, provider, service_tier, keep=False)
        ep = plan.timeless
        if ep is None:
            m = plan.match
            if m.key is None:
                return _NewResult(
                    "unpriced",
                    None,
                    {},
                    u,
                    model,
                    provider,
                    self._version,
                    None,
                    "none",
                    None,
                    None,
                    {},
                    (),
                    m.reason,
                )
            ep = self._dated(plan, at, service_tier)
            if ep is None:
                return _NewResult(
                    "unpriced",
                    None,
                    {},
                    u,
                    model,
                    provider,
                    self._version,
                    m.entry_key,
                    m.kind,
                    None,
                    None,
                    {},
                    (),
                    "no price in force at that date",
                )
        level = 0
        if ep.thresholds:
            prompt = u.prompt_tokens
            for i, threshold in enumerate(ep.thresholds, start=1):
                if prompt > threshold:
                    level = i
        lv = ep.levels[level]
        if lv is None:
            rr = self._resolved(ep.entry, service_tier, u.prompt_tokens)
            lv = ep.levels[level] = _Level(rr, ep.entry, plan.match)
        if lv.text_priced and not media:
            # The common call: text tokens only, all priced. Same products, same order,
            # and the total as ``sum(breakdown.values(), Decimal(0))`` has it.
            rates = lv.rates
            breakdown: dict[str, Decimal] = {}
            total = _ZERO
            if inp:
                total = breakdown["input"] = rates[0] * inp
            if cr:
                v = breakdown["cache_read"] = rates[1] * cr
                total = v if total is _ZERO else total + v
            if c5:
                v = breakdown["cache_write_5m"] = rates[2] * c5
                total = v if total is _ZERO else total + v
            if c1:
                v = breakdown["cache_write_1h"] = rates[3] * c1
                total = v if total is _ZERO else total + v
            if not reasoning:
                if out:
                    v = breakdown["output"] = rates[4] * out
                    total = v if total is _ZERO else total + v
            else:
                part = rates[5] * reasoning
                if lv.merge_reasoning:
                    if out > reasoning:
                        part = rates[4] * (out - reasoning) + part
                    v = breakdown["output"] = part
                else:
                    if out > reasoning:
                        v = breakdown["output"] = rates[4] * (out - reasoning)
                        total = v if total is _ZERO else total + v
                    v = breakdown["reasoning"] = part
                total = v if total is _ZERO else total + v
            return _NewResult(
                "priced",
                total,
                breakdown,
                u,
                model,
                provider,
                self._version,
                lv.label,
                lv.kind,
                lv.tier,
                lv.threshold,
                {},
                lv.notes,
                "",
            )
        return self._cost_general(u, model, provider, lv)

    def _cost_general(
        self, u: TokenUsage, model: str | None, provider: str | None, lv: _Level
    ) -> CostResult:
        """``cost()`` for a call with media tokens or a bucket without a price."""
        breakdown: dict[str, Decimal] = {}
        missing: dict[str, int] = {}
        reasoning = u.reasoning
        counts = (
            u.input,
            u.cache_read,
            u.cache_write_5m,
            u.cache_write_1h,
            u.output - reasoning,
            reasoning,
            u.audio_input,
            u.audio_output,
            u.image_input,
        )
        rates = lv.rates
        for i in compress(_VEC_INDEX, counts):  # the buckets with tokens, in order
            rate = rates[i]
            if rate is None:
                missing[_VEC[i]] = counts[i]
            else:
                breakdown[_VEC[i]] = rate * counts[i]
        if lv.merge_reasoning and "reasoning" in breakdown:
            breakdown["output"] = breakdown.get("output", _ZERO) + breakdown.pop("reasoning")
        if missing:
            if breakdown:
                status, total = "partial", sum(breakdown.values(), _ZERO)
            else:
                status, total = "unpriced", None
            reason = "no price for " + ", ".join(missing)
        else:
            status, total, reason = "priced", sum(breakdown.values(), _ZERO), ""
        return _NewResult(
            status,
            total,
            breakdown,
            u,
            model,
            provider,
            self._version,
            lv.label,
            lv.kind,
            lv.tier,
            lv.threshold,
            missing,
            lv.notes,
            reason,
        )

    # -- vectorised -------------------------------------------------------
    def cost_frame(
        self,
        df: pd.DataFrame,
        *,
        model_col: str = "model",
        provider_col: str = "provider",
        tier_col: str = "service_tier",
        timestamp_col: str = "timestamp_ms",
        at: datetime | date | int | None = None,
        detail: bool = False,
    ) -> pd.DataFrame:
        """Price a DataFrame of spans in one pass (token columns as in ``llmops_span_costs``).

        Returns a frame aligned with ``df``: ``status``, ``matched_entry``,
        ``service_tier_applied``, per-bucket ``*_cost_pusd`` (exact integer
        pico-dollars), ``total_cost_pusd`` (nullable Int64) and ``total_cost_usd``
        (float, NaN when unpriced). Use :func:`sum_usd` for an exact total.
        ``detail`` adds what a row of the scalar result holds beyond that:
        ``priced_bits`` / ``missing_bits`` (bit ``j``: bucket ``j`` of ``BUCKETS`` has
        tokens and a price / no price), ``match_key`` (the catalog key matched, also
        when no price is in force at that date) and ``inexact`` (a rate finer than a
        pico-dollar: price that row with :meth:`cost`; the frame skips the exact fix).

        How it stays at array speed: the (model, provider, tier) columns become one
        integer key; the catalog is consulted once per distinct key (not per row);
        a dated price is found by one binary search over the days its price changes;
        every row is then a handful of table look-ups and integer products. Model,
        provider and tier columns of ``category`` dtype skip the hashing of strings.
        """
        import numpy as np
        import pandas as pd

        n = len(df)
        columns = df.columns
        present = [j for j, b in enumerate(_VEC) if FRAME_TOKEN_COLUMNS[b] in columns]
        tok = {j: _int64_column(df[FRAME_TOKEN_COLUMNS[_VEC[j]]]) for j in present}
        if n and any(int(a.min()) < 0 for a in tok.values()):
            raise UsageError("token counts must not be negative")
        if 5 in tok:  # output holds output incl. reasoning: price the two parts separately
            if 4 not in tok or (n and bool((tok[5] > tok[4]).any())):
                raise UsageError("reasoning_tokens cannot exceed output_tokens")
            tok[4] = tok[4] - tok[5]

        mc, mv = _factorized(df, model_col)
        pc, pv = _factorized(df, provider_col)
        tc, tv = _factorized(df, tier_col)
        n_p, n_t = len(pv), len(tv)
        n_keys = len(mv) * n_p * n_t
        combo = _combined(n, mc, pc, tc, n_p, n_t)
        if n_keys <= max(4 * n, 1 << 16):  # a table per possible key, indexed by the key
            seen = np.zeros(n_keys, dtype=bool)
            seen[combo] = True
            raws = np.flatnonzero(seen)
            slots, key, n_slots = raws, combo, n_keys
        else:  # very many distinct names: number the keys that occur
            raws, key = np.unique(combo, return_inverse=True)
            slots, n_slots = np.arange(len(raws)), len(raws)

        # One pass over the distinct keys: their price segments (one per run of days
        # with the same entry in force), then the rates of each segment's levels.
        catalog = self._catalog
        fixed_day = None if timestamp_col in columns else _to_day(at, self.clock)
        seg_first = np.zeros(n_slots, dtype=np.int64)
        segments: list[tuple[PriceEntry | None, str | None]] = []
        dated: list[tuple[int, list[int]]] = []  # (slot, days its price changes, ordinals)
        match_codes: dict[str, int] = {}
        slot_match = np.full(n_slots, -1, dtype=np.int64) if detail else None
        for slot, raw in zip(slots.tolist(), raws.tolist(), strict=True):
            m_i, rest = divmod(raw, n_p * n_t)
            p_i, t_i = divmod(rest, n_t)
            tier = tv[t_i]
            match = catalog.match(mv[m_i], pv[p_i])
            seg_first[slot] = len(segments)
            if match.key is None:
                segments.append((None, None))
                continue
            if slot_match is not None:
                slot_match[slot] = match_codes.setdefault(match.entry_key or "", len(match_codes))
            entry = catalog.timeless.get(match.key)
            if entry is not None:
                segments.append((entry, tier))
                continue
            if fixed_day is not None:
                segments.append((self._entry(match.key, fixed_day), tier))
                continue
            changes = catalog.change_days(match.key)
            first = changes[0] if changes else date.max
            before = date.fromordinal(first.toordinal() - 1) if first > date.min else first
            segments.append((self._entry(match.key, before), tier))
            for d in changes:
                segments.append((self._entry(match.key, d), tier))
            if changes:
                dated.append((slot, [d.toordinal() for d in changes]))

        # Variants: (entry, tier, long-context level) -> resolved rates. Variant 0
        # stands for "no price" (no match, or no entry in force on that day).
        thresholds = [() if e is None else _lc_thresholds(e, t) for e, t in segments]
        width = 1 + max((len(t) for t in thresholds), default=0)
        var_of = np.zeros(len(segments) * width, dtype=np.int64)
        rates: list[list[int]] = [[0] * len(_VEC)]
        missing_masks: list[int] = [(1 << len(_VEC)) - 1]
        labels: list[str | None] = [None]
        tiers_applied: list[str | None] = [None]
        inexact: list[bool] = [False]
        variant_ids: dict[tuple[int, str | None, int], int] = {}
        for s, (entry, tier) in enumerate(segments):
            if entry is None:
                continue
            for level in range(len(thresholds[s]) + 1):
                vk = (id(entry), tier, level)
                vid = variant_ids.get(vk)
                if vid is None:
                    probe = 0 if level == 0 else thresholds[s][level - 1] + 1
                    rr = self._resolved(entry, tier, probe)
                    row, miss, exact = [], 0, True
                    for j, b in enumerate(_VEC):
                        rate = rr.rates[b]
                        if rate is None:
                            row.append(0)
                            miss |= 1 << j
                        else:
                            p = rate * PICO
                            exact = exact and p == p.to_integral_value()
                            row.append(int(p))
                    vid = variant_ids[vk] = len(rates)
                    rates.append(row)
                    missing_masks.append(miss)
                    labels.append(entry.label)
                    tiers_applied.append(rr.tier)
                    inexact.append(not exact)
                var_of[s * width + level] = vid
        rate_of = {j: np.array([r[j] for r in rates], dtype=np.int64) for j in present}
        miss_of = np.array(missing_masks, dtype=np.int64)
        no_price_of = np.zeros(len(rates), dtype=bool)
        no_price_of[0] = True
        inexact_of = np.array(inexact, dtype=bool)
        label_of, label_cats = _codes_of(labels)
        tier_of, tier_cats = _codes_of(tiers_applied)
        check_missing = detail or bool((miss_of[1:] & sum(1 << j for j in present)).any())
        prompt_js = [j for j in (0, 1, 2, 3, 6, 8) if j in tok]
        if width > 1:
            has_lc = np.array([len(t) > 0 for t in thresholds], dtype=bool)
            limits = np.full((len(segments), width - 1), np.iinfo(np.int64).max, np.int64)
            for s, t in enumerate(thresholds):
                limits[s, : len(t)] = t
        if dated:
            is_dated = np.zeros(n_slots, dtype=bool)
            starts = np.zeros(n_slots, dtype=np.int64)
            changes_at: list[int] = []
            for slot, ords in dated:  # slots ascending: the keys below stay sorted
                is_dated[slot] = True
                starts[slot] = len(changes_at)
                changes_at.extend(slot * _DAY_SPAN + o for o in ords)
            change_keys = np.array(changes_at, dtype=np.int64)
            ms = _int64_column(df[timestamp_col])
        if detail:
            match_of, _ = _codes_of(list(match_codes))
            match_of = np.append(match_of, match_of.dtype.type(-1))  # slot_match -1 -> last
            slot_match_of = match_of[slot_match]  # type: ignore[index]

        # Rows, in chunks that stay in cache: table look-ups and integer products only.
        part_js = {
            "input_cost_pusd": [j for j in (0,) if j in tok],
            "cache_read_cost_pusd": [j for j in (1,) if j in tok],
            "cache_write_cost_pusd": [j for j in (2, 3) if j in tok],
            "output_cost_pusd": [j for j in (4, 5) if j in tok],
            "other_cost_pusd": [j for j in (6, 7, 8) if j in tok],
        }
        parts = {
            name: np.empty(n, np.int64) if js else np.zeros(n, np.int64)
            for name, js in part_js.items()
        }
        total = np.zeros(n, dtype=np.int64) if not present else np.empty(n, dtype=np.int64)
        usd = np.empty(n, dtype=np.float64)
        status = np.empty(n, dtype=np.int8)
        label_codes = np.empty(n, dtype=label_of.dtype)
        tier_codes = np.empty(n, dtype=tier_of.dtype)
        if detail:
            priced_bits = np.empty(n, dtype=np.int64)
            missing_bits = np.empty(n, dtype=np.int64)
            match_rows = np.empty(n, dtype=slot_match_of.dtype)
        any_inexact = bool(inexact_of.any())
        if detail or any_inexact:
            inexact_rows = np.zeros(n, dtype=bool)
        # A slot's variant when its price has one segment and no long-context level;
        # the other slots' rows ("special") find their segment and level below.
        slot_var = var_of.take(seg_first * width) if len(var_of) else seg_first  # no rows
        special = np.zeros(n_slots, dtype=bool)
        if dated:
            special |= is_dated
        if width > 1:
            special |= has_lc.take(seg_first)
        any_special = bool(special.any())
        status_of = np.where(no_price_of, 2, 0).astype(np.int8)
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            k = key[a:b]
            v = slot_var.take(k)
            if any_special and len(rows := np.flatnonzero(special.take(k))):
                kr = k[rows]
                seg = seg_first.take(kr)
                if dated:
                    day = ms[a:b][rows] // _MS_PER_DAY + _EPOCH_ORDINAL
                    np.clip(day, 1, _DAY_SPAN - 1, out=day)
                    seg += np.searchsorted(change_keys, kr * _DAY_SPAN + day, "right")
                    seg -= starts.take(kr)
                    seg[~is_dated.take(kr)] = seg_first.take(kr[~is_dated.take(kr)])
                if width > 1:
                    lc = np.flatnonzero(has_lc.take(seg))
                    seg *= width
                    if len(lc):
                        prompt = np.zeros(len(lc), dtype=np.int64)
                        for j in prompt_js:
                            prompt += tok[j][a:b][rows[lc]]
                        over = prompt[:, None] > limits[seg[lc] // width]
                        seg[lc] += over.sum(axis=1)
                v[rows] = var_of.take(seg)
            tot = total[a:b]
            first = True
            for name, js in part_js.items():
                if not js:
                    continue
                dest = parts[name][a:b]
                np.multiply(tok[js[0]][a:b], rate_of[js[0]].take(v), out=dest)
                for j in js[1:]:
                    g = rate_of[j].take(v)
                    g *= tok[j][a:b]
                    dest += g
                if first:
                    prev, first = dest, False
                elif prev is not None:
                    np.add(prev, dest, out=tot)
                    prev = None
                else:
                    tot += dest
            if not first and prev is not None:  # one part only
                tot[:] = prev
            np.divide(tot, 1e12, out=usd[a:b])
            if check_missing:
                has = np.zeros(b - a, dtype=np.int64)
                for j in present:
                    h = (tok[j][a:b] > 0).astype(np.int64)
                    if j:
                        h <<= j
                    has |= h
                mr = miss_of.take(v)
                mb = has & mr
                pb = has & ~mr
                am = mb != 0
                up = no_price_of.take(v)
                up |= am & (pb == 0) & (has != 0)
                status[a:b] = np.where(up, 2, am)
                if detail:
                    priced_bits[a:b] = pb
                    missing_bits[a:b] = mb
            else:
                status_of.take(v, out=status[a:b], mode="clip")
            label_of.take(v, out=label_codes[a:b], mode="clip")
            tier_of.take(v, out=tier_codes[a:b], mode="clip")
            if detail:
                slot_match_of.take(k, out=match_rows[a:b], mode="clip")
            if any_inexact:
                inexact_of.take(v, out=inexact_rows[a:b], mode="clip")
        unpriced = status == 2
        if unpriced.any():
            usd[unpriced] = np.nan
        data: dict[str, Any] = {
            "status": _from_codes(status, list(_STATUSES)),
            "matched_entry": _from_codes(label_codes, label_cats),
            "service_tier_applied": _from_codes(tier_codes, tier_cats),
            **parts,
            "total_cost_pusd": pd.arrays.IntegerArray(total, unpriced),
            "total_cost_usd": usd,
        }
        if detail:
            data["priced_bits"] = priced_bits
            data["missing_bits"] = missing_bits
            data["match_key"] = _from_codes(match_rows, list(match_codes))
            data["inexact"] = inexact_rows
        out = pd.DataFrame(data, index=df.index, copy=False)
        # Rates finer than a pico-dollar per token: price those rows exactly, one by one.
        if not detail and any_inexact:
            self._fix_inexact(
                df, out, inexact_rows, model_col, provider_col, tier_col, timestamp_col, at
            )
        out.attrs["catalog_version"] = self.catalog.version
        return out

    def _fix_inexact(self, df, out, mask, model_col, provider_col, tier_col, ts_col, at):  # noqa: ANN001, ANN202
        import numpy as np

        out["total_cost_exact"] = None
        exact_at = out.columns.get_loc("total_cost_exact")
        usd_at = out.columns.get_loc("total_cost_usd")
        for i in np.nonzero(mask)[0]:
            row = df.iloc[i]
            u = _usage_from_row(row)
            r = self.cost(
                model=_none_if_na(row.get(model_col)),
                provider=_none_if_na(row.get(provider_col)),
                usage=u,
                service_tier=_none_if_na(row.get(tier_col)),
                at=int(row[ts_col]) if ts_col in df.columns else at,
            )
            out.iat[i, exact_at] = r.total
            if r.total is not None:
                out.iat[i, usd_at] = float(r.total)


_STATUSES = ("priced", "partial", "unpriced")
_CHUNK = 1 << 16  # rows per step of the row loop: its temporaries stay in cache
_DAY_SPAN = date.max.toordinal() + 1  # day ordinals of ``date`` are 1 .. _DAY_SPAN - 1


def _lc_thresholds(entry: PriceEntry, tier: str | None) -> tuple[int, ...]:
    lcs = entry.tier_long_context.get(_norm_tier(tier) or "", ()) or entry.long_context
    return tuple(lc.threshold for lc in lcs)


def _int64_column(s: pd.Series) -> np.ndarray:
    """A token or timestamp column as int64 (missing values 0), without a copy when it is one."""
    import numpy as np

    if s.dtype == np.int64:
        return s.to_numpy()
    return s.fillna(0).to_numpy(dtype=np.int64)


def _factorized(df: pd.DataFrame, col: str) -> tuple[np.ndarray | None, list[str | None]]:
    """Codes of a key column shifted by one (0 = missing or empty) and the values per code.

    A ``category`` column gives its codes as they are; others are hashed once
    (pyarrow-backed strings by Arrow's hash kernel)."""
    import pandas as pd

    if col not in df.columns:
        return None, [None]
    s = df[col]
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        uniques = s.cat.categories
    else:
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
    vals = [None if pd.isna(u) or u == "" else str(u) for u in uniques]
    return codes, [None, *vals]


def _combined(
    n: int,
    mc: np.ndarray | None,
    pc: np.ndarray | None,
    tc: np.ndarray | None,
    n_p: int,
    n_t: int,
) -> np.ndarray:
    """``((mc + 1) * n_p + pc + 1) * n_t + tc + 1``: one integer per (model, provider,
    tier) value (a missing column counts as code -1). Horner's scheme in place, a chunk
    at a time: no temporary arrays, the codes read once in whatever integer type."""
    import numpy as np

    key = np.empty(n, dtype=np.int64)
    shift = (mc is not None) * n_p * n_t + (pc is not None) * n_t + (tc is not None)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        out = key[a:b]
        if mc is None:
            out[:] = 0
        else:
            out[:] = mc[a:b]
            if n_p != 1:
                out *= n_p
        if pc is not None:
            out += pc[a:b]
        if n_t != 1:
            out *= n_t
        if tc is not None:
            out += tc[a:b]
        out += shift
    return key


def _from_codes(codes: np.ndarray, categories: list[str]) -> pd.Categorical:
    import pandas as pd

    return pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories), validate=False)


def _codes_of(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Categorical codes (None: -1) of some values, in the dtype pandas keeps as is."""
    import numpy as np

    cats: dict[str, int] = {}
    codes = [-1 if v is None else cats.setdefault(v, len(cats)) for v in values]
    dtype = np.int8 if len(cats) < 127 else np.int16 if len(cats) < 32_767 else np.int32
    return np.array(codes, dtype=dtype), list(cats)


def _none_if_na(v: Any) -> Any:
    import pandas as pd

    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v


def _usage_from_row(row: Any) -> TokenUsage:
    vals = {b: int(row.get(c, 0) or 0) for b, c in FRAME_TOKEN_COLUMNS.items()}
    return TokenUsage(**vals)


def sum_usd(priced: pd.DataFrame) -> Decimal:
    """Exact total in USD of a frame returned by :meth:`CostCalculator.cost_frame`."""
    import numpy as np

    pusd = priced["total_cost_pusd"]
    if "total_cost_exact" in priced.columns:
        exact = priced["total_cost_exact"].notna()
        rest = pusd[~exact].dropna()
        extra = sum((d for d in priced.loc[exact, "total_cost_exact"]), _ZERO)
    else:
        rest = pusd.dropna()
        extra = _ZERO
    arr = rest.to_numpy(dtype=np.int64)
    if len(arr) and int(np.abs(arr).max()) * len(arr) < 2**62:
        total = int(arr.sum())
    else:
        total = sum(int(x) for x in arr)
    return Decimal(total) / PICO + extra
