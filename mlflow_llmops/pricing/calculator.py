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

from mlflow_llmops.clock import Clock, SystemClock
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
from mlflow_llmops.pricing.usage import TokenUsage, UsageError, coerce_usage

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

    __slots__ = ("rates", "merge_reasoning", "label", "kind", "tier", "threshold", "notes")

    def __init__(self, rr: ResolvedRates, entry: PriceEntry, match: Match) -> None:
        rates = rr.rates
        self.rates = tuple(rates[b] for b in _VEC)
        self.merge_reasoning = rates["reasoning"] == rates["output"]
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
_VEC = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "reasoning",
        "audio_input", "audio_output", "image_input")  # fmt: skip
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
        u = coerce_usage(usage)
        try:
            plan = self._plans[(model, provider, service_tier)]
        except KeyError:
            plan = self._plan(model, provider, service_tier)
        except TypeError:  # an unhashable argument: a plan for this call only
            plan = self._plan(model, provider, service_tier, keep=False)
        m = plan.match
        if m.key is None:
            return _NewResult("unpriced", None, {}, u, model, provider, self._version, None,
                              "none", None, None, {}, (), m.reason)  # fmt: skip
        ep = plan.timeless or self._dated(plan, at, service_tier)
        if ep is None:
            return _NewResult("unpriced", None, {}, u, model, provider, self._version,
                              m.entry_key, m.kind, None, None, {}, (),
                              "no price in force at that date")  # fmt: skip
        level = 0
        if ep.thresholds:
            prompt = u.prompt_tokens
            for i, threshold in enumerate(ep.thresholds, start=1):
                if prompt > threshold:
                    level = i
        lv = ep.levels[level]
        if lv is None:
            rr = self._resolved(ep.entry, service_tier, u.prompt_tokens)
            lv = ep.levels[level] = _Level(rr, ep.entry, m)
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
        return _NewResult(status, total, breakdown, u, model, provider, self._version, lv.label,
                          lv.kind, lv.tier, lv.threshold, missing, lv.notes, reason)  # fmt: skip

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
        """
        import numpy as np
        import pandas as pd

        n = len(df)
        # Only the buckets the frame has: absent columns cost nothing to skip.
        present = [j for j, b in enumerate(_VEC) if FRAME_TOKEN_COLUMNS[b] in df.columns]
        pos = {j: i for i, j in enumerate(present)}
        tokens = np.empty((n, len(present)), dtype=np.int64)
        for i, j in enumerate(present):
            tokens[:, i] = df[FRAME_TOKEN_COLUMNS[_VEC[j]]].fillna(0).to_numpy(dtype=np.int64)
        if (tokens < 0).any():
            raise UsageError("token counts must not be negative")
        if 5 in pos:  # output holds output incl. reasoning: price the two parts separately
            if 4 not in pos or (tokens[:, pos[5]] > tokens[:, pos[4]]).any():
                raise UsageError("reasoning_tokens cannot exceed output_tokens")
            tokens[:, pos[4]] -= tokens[:, pos[5]]
        prompt_cols = [pos[j] for j in (0, 1, 2, 3, 6, 8) if j in pos]
        prompt = tokens[:, prompt_cols].sum(axis=1) if prompt_cols else np.zeros(n, np.int64)

        def codes_of(c: str) -> tuple[np.ndarray, list[str | None]]:
            if c not in df.columns:
                return np.zeros(n, dtype=np.int64), [None]
            codes, uniques = pd.factorize(df[c], use_na_sentinel=True)
            vals = [None if pd.isna(u) or u == "" else str(u) for u in uniques]
            codes = np.where(codes < 0, len(vals), codes).astype(np.int64)
            return codes, [*vals, None]

        mc, mv = codes_of(model_col)
        pc, pv = codes_of(provider_col)
        tc, tv = codes_of(tier_col)
        combo_raw = (mc * len(pv) + pc) * len(tv) + tc
        if timestamp_col in df.columns:
            days = df[timestamp_col].fillna(0).to_numpy(dtype=np.int64) // 86_400_000
        else:
            days = np.full(n, _to_day(at, self.clock).toordinal() - 719163, dtype=np.int64)

        variant = np.full(n, -1, dtype=np.int64)  # index into rate tables
        rate_rows: list[list[int]] = []
        miss_rows: list[list[bool]] = []
        labels: list[str] = []
        tiers_applied: list[str | None] = []
        exact_ok: list[bool] = []
        variant_ids: dict[tuple[int, str | None, int], int] = {}
        epoch = 719163  # date(1970, 1, 1).toordinal()
        match_keys: list[str] = []
        match_code = np.full(n, -1, dtype=np.int64) if detail else None
        for code, rows in _groups(combo_raw):
            code = int(code)
            t_i = code % len(tv)
            p_i = (code // len(tv)) % len(pv)
            m_i = code // (len(tv) * len(pv))
            match = self.catalog.match(mv[m_i], pv[p_i])
            tier = tv[t_i]
            if match.key is None:
                continue
            if match_code is not None:
                match_code[rows] = len(match_keys)
                match_keys.append(match.entry_key or "")
            timeless = self.catalog.timeless.get(match.key)
            if timeless is not None:
                groups = [(rows, timeless)]
            else:
                groups = [
                    (rows[sub], self._entry(match.key, date.fromordinal(int(d) + epoch)))
                    for d, sub in _groups(days[rows])
                ]
            for grows, entry in groups:
                if entry is None:
                    continue
                lcs = entry.tier_long_context.get(_norm_tier(tier) or "", ()) or entry.long_context
                thresholds = np.array([lc.threshold for lc in lcs], dtype=np.int64)
                level = (
                    (prompt[grows][:, None] > thresholds[None, :]).sum(axis=1)
                    if len(thresholds)
                    else np.zeros(len(grows), dtype=np.int64)
                )
                for lv in np.unique(level):
                    vk = (id(entry), tier, int(lv))
                    vid = variant_ids.get(vk)
                    if vid is None:
                        probe = 0 if lv == 0 else int(thresholds[lv - 1]) + 1
                        rr = self._resolved(entry, tier, probe)
                        r_row, m_row, ok = [], [], True
                        for b in _VEC:
                            rate = rr.rates[b]
                            if rate is None:
                                r_row.append(0)
                                m_row.append(True)
                            else:
                                p = rate * PICO
                                if p != p.to_integral_value():
                                    ok = False
                                r_row.append(int(p))
                                m_row.append(False)
                        vid = len(rate_rows)
                        variant_ids[vk] = vid
                        rate_rows.append(r_row)
                        miss_rows.append(m_row)
                        labels.append(entry.label)
                        tiers_applied.append(rr.tier)
                        exact_ok.append(ok)
                    variant[grows[level == lv]] = vid
        rate_tab = np.array(rate_rows or [[0] * len(_VEC)], dtype=np.int64)[:, present]
        miss_tab = np.array(miss_rows or [[True] * len(_VEC)], dtype=bool)[:, present]
        matched = variant >= 0
        vidx = np.where(matched, variant, 0)
        costs = tokens * rate_tab[vidx]
        has = tokens > 0
        missing = has & miss_tab[vidx]
        if miss_tab.any():
            costs[missing] = 0
        any_missing = missing.any(axis=1)
        any_priced = (has & ~missing).any(axis=1) | ~has.any(axis=1)
        status_code = np.where(
            ~matched | (any_missing & ~any_priced), 2, np.where(any_missing, 1, 0)
        ).astype(np.int8)
        unpriced = status_code == 2
        total = costs.sum(axis=1)
        out = pd.DataFrame(index=df.index)
        out["status"] = pd.Categorical.from_codes(status_code, categories=list(_STATUSES))
        out["matched_entry"] = _categorical(labels, variant)
        out["service_tier_applied"] = _categorical(tiers_applied, variant)

        def bucket_cost(*js: int) -> np.ndarray:
            cols = [pos[j] for j in js if j in pos]
            if not cols:
                return np.zeros(n, dtype=np.int64)
            return costs[:, cols[0]] if len(cols) == 1 else costs[:, cols].sum(axis=1)

        out["input_cost_pusd"] = bucket_cost(0)
        out["cache_read_cost_pusd"] = bucket_cost(1)
        out["cache_write_cost_pusd"] = bucket_cost(2, 3)
        out["output_cost_pusd"] = bucket_cost(4, 5)
        out["other_cost_pusd"] = bucket_cost(6, 7, 8)
        out["total_cost_pusd"] = pd.array(np.where(unpriced, 0, total), dtype="Int64")
        out.loc[unpriced, "total_cost_pusd"] = pd.NA
        out["total_cost_usd"] = np.where(unpriced, np.nan, total / 1e12)
        inexact = [vid for vid, ok in enumerate(exact_ok) if not ok]
        if detail:
            weights = np.left_shift(1, np.array(present, dtype=np.int64))
            out["priced_bits"] = ((has & ~missing) * weights).sum(axis=1) if present else 0
            out["missing_bits"] = (missing * weights).sum(axis=1) if present else 0
            out["match_key"] = _categorical(match_keys, match_code)
            out["inexact"] = np.isin(variant, inexact) if inexact else False
            out.attrs["catalog_version"] = self.catalog.version
            return out
        # Rates finer than a pico-dollar per token: price those rows exactly, one by one.
        if inexact:
            self._fix_inexact(df, out, np.isin(variant, inexact), model_col, provider_col,
                              tier_col, timestamp_col, at)  # fmt: skip
        out.attrs["catalog_version"] = self.catalog.version
        return out

    def _fix_inexact(self, df, out, mask, model_col, provider_col, tier_col, ts_col, at):  # noqa: ANN001, ANN202
        import numpy as np

        out["total_cost_exact"] = None
        for i in np.nonzero(mask)[0]:
            row = df.iloc[i]
            u = _usage_from_row(row)
            r = self.cost(
                model=row.get(model_col),
                provider=row.get(provider_col),
                usage=u,
                service_tier=row.get(tier_col),
                at=int(row[ts_col]) if ts_col in df.columns else at,
            )
            out.iat[i, out.columns.get_loc("total_cost_exact")] = r.total
            if r.total is not None:
                out.iat[i, out.columns.get_loc("total_cost_usd")] = float(r.total)


_STATUSES = ("priced", "partial", "unpriced")


def _groups(codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Row indices per distinct code, by one stable sort (O(n log n), any number of codes)."""
    import numpy as np

    if len(codes) == 0:
        return []
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    return [(int(sorted_codes[a]), order[a:b]) for a, b in zip(starts, ends, strict=True)]


def _categorical(values: list[str | None], variant: np.ndarray) -> pd.Categorical:
    import numpy as np
    import pandas as pd

    cats: dict[str, int] = {}
    mapping = np.full(len(values) + 1, -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v is not None:
            mapping[i] = cats.setdefault(v, len(cats))
    codes = mapping[np.where(variant >= 0, variant, len(values))]
    return pd.Categorical.from_codes(codes, categories=list(cats))


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
