"""Price catalogs: MLflow's bundled catalog, LiteLLM JSON, YAML overrides.

All prices are kept as exact ``Decimal`` USD per token (parsed from the file's
text, never through binary floats). Entries may carry an ``effective_from``
date so a price change applies from that day on; sources given later win over
earlier ones (overrides > LiteLLM files > catalog files > MLflow's bundled
catalog). Every catalog has a ``version``: a content hash of all its sources,
recorded with every computed cost.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from mlflow_llmops.errors import ConfigError

MILLION = Decimal(1_000_000)
STANDARD_TIERS = frozenset({"", "default", "standard", "auto", "on_demand", "on-demand"})
TIER_ALIASES = {"batches": "batch", "scale": "priority"}

#: Providers that win when a bare model name exists under several providers with
#: different prices (the model's maker first). Recorded as ``provider_inferred``.
PREFERRED_PROVIDERS: tuple[str, ...] = (
    "openai",
    "anthropic",
    "gemini",
    "mistral",
    "deepseek",
    "xai",
    "cohere_chat",
    "meta_llama",
    "amazon_nova",
    "ai21",
    "perplexity",
    "moonshot",
    "zai",
    "minimax",
    "dashscope",
    "groq",
)

#: Provider names as MLflow autolog, OTel GenAI semconv and LiteLLM spell them.
PROVIDER_ALIASES: dict[str, str] = {
    "google": "gemini",
    "google_genai": "gemini",
    "gcp.gemini": "gemini",
    "gcp.gen_ai": "gemini",
    "vertexai": "vertex_ai",
    "gcp.vertex_ai": "vertex_ai",
    "aws.bedrock": "bedrock",
    "bedrock_converse": "bedrock",
    "azure_openai": "azure",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure_ai",
    "x_ai": "xai",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "ibm.watsonx.ai": "watsonx",
    "openai_chat": "openai",
}

RATE_FIELDS: tuple[str, ...] = (
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

#: MLflow-catalog style keys (USD per million tokens) used by catalog files and overrides.
MILLION_KEYS: dict[str, str] = {
    "input_per_million_tokens": "input",
    "output_per_million_tokens": "output",
    "cache_read_per_million_tokens": "cache_read",
    "cache_write_per_million_tokens": "cache_write_5m",
    "cache_write_1hr_per_million_tokens": "cache_write_1h",
    "reasoning_per_million_tokens": "reasoning",
    "audio_input_per_million_tokens": "audio_input",
    "audio_output_per_million_tokens": "audio_output",
    "image_input_per_million_tokens": "image_input",
}


class CatalogError(ConfigError):
    """A price file is malformed; the message names the file, entry and field."""


def normalize_provider(provider: str | None) -> str | None:
    if provider is None:
        return None
    p = provider.strip().lower()
    if not p:
        return None
    return PROVIDER_ALIASES.get(p, p)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token per bucket; ``None`` means "no price published"."""

    input: Decimal | None = None
    cache_read: Decimal | None = None
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None
    output: Decimal | None = None
    reasoning: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_input: Decimal | None = None

    def over(self, base: Rates) -> Rates:
        """These rates, with missing ones taken from ``base``."""
        return Rates(
            **{
                f: getattr(self, f) if getattr(self, f) is not None else getattr(base, f)
                for f in RATE_FIELDS
            }
        )

    def scaled(self, factor: Decimal) -> Rates:
        return Rates(
            **{
                f: None if getattr(self, f) is None else getattr(self, f) * factor
                for f in RATE_FIELDS
            }
        )

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in RATE_FIELDS)

    def per_million(self) -> dict[str, Decimal]:
        return {f: getattr(self, f) * MILLION for f in RATE_FIELDS if getattr(self, f) is not None}


@dataclass(frozen=True, slots=True)
class LongContextTier:
    """Rates that apply to the whole request once its prompt exceeds ``threshold`` tokens."""

    threshold: int
    rates: Rates


@dataclass(frozen=True)
class PriceEntry:
    """The price of one model at one provider, from one source, from one date on."""

    provider: str
    model: str
    rates: Rates
    tiers: Mapping[str, Rates] = field(default_factory=dict)
    long_context: tuple[LongContextTier, ...] = ()
    tier_long_context: Mapping[str, tuple[LongContextTier, ...]] = field(default_factory=dict)
    effective_from: date | None = None
    source: str = ""
    discount_percent: Decimal | None = None  # relative to the lower-priority entry
    priority: int = 0

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def label(self) -> str:
        when = f"@{self.effective_from.isoformat()}" if self.effective_from else ""
        return f"{self.key}{when}"


@dataclass(frozen=True)
class Match:
    """How a (model, provider) pair was matched to a catalog key, or why it was not."""

    model: str
    provider: str | None
    key: tuple[str, str] | None  # (provider, model) in the catalog
    kind: str  # exact | provider-prefix | snapshot | alias | pattern | model-only | none
    candidates: tuple[str, ...] = ()
    provider_inferred: bool = False
    reason: str = ""

    @property
    def matched(self) -> bool:
        return self.key is not None

    @property
    def entry_key(self) -> str | None:
        return None if self.key is None else f"{self.key[0]}/{self.key[1]}"


_SNAPSHOT = re.compile(r"^(.+?)(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8})|-\d{4}|@\d{3}|-v\d+:\d+)$")


def strip_snapshot(model: str) -> str:
    """``gpt-4o-2024-08-06`` -> ``gpt-4o``; ``claude-3-5-haiku@20241022`` -> base name."""
    m = _SNAPSHOT.match(model)
    return m.group(1) if m else model


class PriceCatalog:
    """An immutable set of price entries with aliases and patterns, and its version."""

    def __init__(
        self,
        entries: Iterable[PriceEntry],
        *,
        aliases: Mapping[str, str] | None = None,
        patterns: Sequence[tuple[str, str]] = (),
        sources: Sequence[tuple[str, str]] = (),
    ) -> None:
        entries = list(entries)
        cased = _case_distinct_spellings(entries)
        self._versions: dict[tuple[str, str], list[PriceEntry]] = {}
        for e in entries:
            exact = e.model in cased.get((e.provider, e.model.lower()), ())
            key = (e.provider, e.model if exact else e.model.lower())
            self._versions.setdefault(key, []).append(e)
        for versions in self._versions.values():
            versions.sort(key=lambda e: (e.priority, e.effective_from or date.min))
        self._by_model: dict[str, list[str]] = {}
        for prov, model in self._versions:
            self._by_model.setdefault(model, []).append(prov)
        self.providers = frozenset(p for p, _ in self._versions)
        #: Keys with one undated entry: their price does not depend on the date.
        self.timeless: dict[tuple[str, str], PriceEntry] = {
            k: v[0]
            for k, v in self._versions.items()
            if len(v) == 1 and v[0].effective_from is None and v[0].discount_percent is None
        }
        self.aliases = {k.lower(): v for k, v in (aliases or {}).items()}
        self.patterns = tuple((re.compile(rx), target) for rx, target in patterns)
        self.sources = tuple(sources)
        h = hashlib.sha256()
        for name, digest in self.sources:
            h.update(f"{name}\0{digest}\n".encode())
        self.version = h.hexdigest()[:16]
        self._match_cache: dict[tuple[str, str | None], Match] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())

    def keys(self) -> list[tuple[str, str]]:
        return list(self._versions)

    def versions(self, key: tuple[str, str]) -> list[PriceEntry]:
        """Every entry for a key, lowest priority and earliest date first."""
        return list(self._versions.get(key, ()))

    def change_days(self, key: tuple[str, str]) -> tuple[date, ...]:
        """The days on which the entry in force for ``key`` may change, ascending.

        :meth:`entry_at` is constant from one of these days to the day before the
        next (it only depends on which versions have started), so a vectorised
        caller finds the entry of a day by a binary search over these days.
        """
        return tuple(
            sorted({e.effective_from for e in self._versions.get(key, ()) if e.effective_from})
        )

    # -- lookup by time ---------------------------------------------------
    def entry_at(self, key: tuple[str, str], at: date) -> PriceEntry | None:
        """The entry in force on day ``at``: highest priority, then latest date, not after ``at``."""
        versions = self._versions.get(key)
        if not versions:
            return None
        eligible = [e for e in versions if e.effective_from is None or e.effective_from <= at]
        if not eligible:
            return None
        best = eligible[-1]
        if best.discount_percent is not None:
            base = next(
                (e for e in reversed(eligible[:-1]) if e.discount_percent is None),
                None,
            )
            if base is None:
                return None
            factor = (Decimal(100) - best.discount_percent) / Decimal(100)
            best = replace(
                best,
                rates=base.rates.scaled(factor),
                tiers={k: v.scaled(factor) for k, v in base.tiers.items()},
                long_context=tuple(
                    LongContextTier(t.threshold, t.rates.scaled(factor)) for t in base.long_context
                ),
                tier_long_context={
                    k: tuple(LongContextTier(t.threshold, t.rates.scaled(factor)) for t in v)
                    for k, v in base.tier_long_context.items()
                },
            )
        return best

    # -- matching ---------------------------------------------------------
    def match(self, model: str | None, provider: str | None = None) -> Match:
        """Find the catalog key for a model name as spans report it; never guesses silently."""
        ck = (model or "", provider)
        hit = self._match_cache.get(ck)
        if hit is None:
            hit = self._match(model or "", normalize_provider(provider))
            if len(self._match_cache) > 100_000:
                self._match_cache.clear()
            self._match_cache[ck] = hit
        return hit

    def _match(self, model: str, provider: str | None) -> Match:
        m = model.strip()
        if not m:
            return Match(model, provider, None, "none", reason="no model name on the span")
        for alias in ((f"{provider}/{m}".lower() if provider else None), m.lower()):
            if alias and alias in self.aliases:
                target = self.aliases[alias]
                tp, tm = _split_target(target, provider)
                found = self._core(tm, tp)
                if found is not None:
                    return replace(found, model=model, provider=provider, kind="alias")
                return Match(
                    model, provider, None, "none", reason=f"alias {alias!r} -> {target!r}: no price"
                )
        found = self._core(m, provider)
        if found is not None:
            return replace(found, model=model, provider=provider)
        for rx, target in self.patterns:
            if rx.fullmatch(m):
                tp, tm = _split_target(target, provider)
                found = self._core(tm, tp)
                if found is not None:
                    return replace(found, model=model, provider=provider, kind="pattern")
                return Match(
                    model,
                    provider,
                    None,
                    "none",
                    reason=f"pattern {rx.pattern!r} -> {target!r}: no price",
                )
        ambiguous = self._ambiguous(m.lower())
        if ambiguous:
            return Match(
                model,
                provider,
                None,
                "none",
                candidates=ambiguous,
                reason="ambiguous: priced differently by " + ", ".join(ambiguous),
            )
        return Match(model, provider, None, "none", reason="no price for this model")

    def _core(self, model: str, provider: str | None, kind: str = "exact") -> Match | None:
        ml = model.lower()
        # A catalog may price case-distinct spellings differently: the exact spelling wins.
        names = [model, ml] if model != ml and model in self._by_model else [ml]
        base = strip_snapshot(ml)
        if base != ml:
            names.append(base)
        if provider:
            for name in names:
                if (provider, name) in self._versions:
                    k = "snapshot" if name not in (model, ml) else kind
                    return Match(model, provider, (provider, name), k)
        if "/" in ml:
            head, tail = ml.split("/", 1)
            head_n = normalize_provider(head)
            if head_n in self.providers:
                found = self._core(tail, head_n, "provider-prefix")
                if found is not None:
                    return found
        for name in names:
            chosen = self._choose_provider(name)
            if chosen is not None:
                prov, cands, inferred = chosen
                k = "snapshot" if name not in (model, ml) else ("model-only" if provider else kind)
                return Match(model, provider, (prov, name), k, cands, inferred)
        return None

    def _choose_provider(self, name: str) -> tuple[str, tuple[str, ...], bool] | None:
        provs = self._by_model.get(name)
        if not provs:
            return None
        if len(provs) == 1:
            return provs[0], (), False
        cands = tuple(sorted(provs))
        today = date.max
        prices = {p: self.entry_at((p, name), today) for p in provs}
        distinct = {None if e is None else _rates_fingerprint(e) for e in prices.values()}
        pref = [p for p in PREFERRED_PROVIDERS if p in provs]
        if len(distinct) == 1:
            return (pref[0] if pref else cands[0]), cands, False
        if pref:
            return pref[0], cands, True
        return None

    def _ambiguous(self, ml: str) -> tuple[str, ...]:
        for name in (ml, strip_snapshot(ml)):
            provs = self._by_model.get(name)
            if provs and len(provs) > 1:
                return tuple(sorted(provs))
        return ()


def _case_distinct_spellings(entries: Sequence[PriceEntry]) -> dict[tuple[str, str], set[str]]:
    """Spellings that one source lists side by side under names equal but for case.

    MLflow's catalog holds ``azure_ai/DeepSeek-V4-Flash-0731`` (0.44/1.32) beside
    ``azure_ai/deepseek-v4-flash-0731`` (0.19/0.51): those are two models, so each keeps
    its exact spelling as its key (the all-lowercase one keeps the lowercase key).
    """
    seen: dict[tuple[str, str, str, int], set[str]] = {}
    for e in entries:
        seen.setdefault((e.provider, e.model.lower(), e.source, e.priority), set()).add(e.model)
    out: dict[tuple[str, str], set[str]] = {}
    for (prov, ml, _, _), spellings in seen.items():
        if len(spellings) > 1:
            out.setdefault((prov, ml), set()).update(s for s in spellings if s != ml)
    if out:
        for e in entries:  # other sources' entries with the same exact spelling follow it
            if e.model != e.model.lower() and (e.provider, e.model.lower()) in out:
                out[(e.provider, e.model.lower())].add(e.model)
    return out


def _rates_fingerprint(e: PriceEntry) -> tuple:
    return (e.rates, tuple(sorted(e.tiers.items())), e.long_context)


def _split_target(target: str, provider: str | None) -> tuple[str | None, str]:
    if "/" in target:
        p, m = target.split("/", 1)
        return normalize_provider(p), m
    return provider, target


# ----------------------------------------------------------------------------
# Parsing helpers
# ----------------------------------------------------------------------------
def _number(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise CatalogError(f"{where}: must be a non-negative number, got {value!r}")
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise CatalogError(f"{where}: must be a non-negative number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise CatalogError(f"{where}: must be a non-negative number, got {value!r}")
    return d


def _date(value: Any, where: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CatalogError(f"{where}: must be a date YYYY-MM-DD, got {value!r}") from None


def _parse_million_rates(
    d: Mapping[str, Any], where: str, *, strict: bool, allowed_extra: frozenset[str] = frozenset()
) -> Rates:
    values: dict[str, Decimal] = {}
    for k, v in d.items():
        if k in MILLION_KEYS:
            values[MILLION_KEYS[k]] = _number(v, f"{where}, field {k!r}") / MILLION
        elif strict and k not in allowed_extra:
            raise CatalogError(
                f"{where}: unknown field {k!r}; expected one of {sorted(MILLION_KEYS)}"
            )
    return Rates(**values)


_MLFLOW_PRICING_EXTRA = frozenset({"service_tiers", "long_context", "modality", "tooling"})


def parse_mlflow_pricing(
    pricing: Any, where: str, *, strict: bool
) -> tuple[Rates, dict[str, Rates], tuple[LongContextTier, ...]]:
    """Parse an MLflow-catalog ``pricing`` mapping (also the overrides' price fields)."""
    if not isinstance(pricing, Mapping):
        raise CatalogError(f"{where}: 'pricing' must be a mapping, got {type(pricing).__name__}")
    rates = _parse_million_rates(pricing, where, strict=strict, allowed_extra=_MLFLOW_PRICING_EXTRA)
    modality = pricing.get("modality") or {}
    if isinstance(modality, Mapping):
        extra: dict[str, Decimal] = {}
        for media, target_in, target_out in (
            ("audio", "audio_input", "audio_output"),
            ("image", "image_input", None),
        ):
            md = modality.get(media)
            if isinstance(md, Mapping):
                if md.get("input_per_million_tokens") is not None:
                    extra[target_in] = (
                        _number(md["input_per_million_tokens"], f"{where}, modality.{media}")
                        / MILLION
                    )
                if target_out and md.get("output_per_million_tokens") is not None:
                    extra[target_out] = (
                        _number(md["output_per_million_tokens"], f"{where}, modality.{media}")
                        / MILLION
                    )
        if extra:
            rates = Rates(**extra).over(rates)
    tiers: dict[str, Rates] = {}
    st = pricing.get("service_tiers") or {}
    if not isinstance(st, Mapping):
        raise CatalogError(f"{where}, field 'service_tiers': must be a mapping of tier -> prices")
    for tier, tp in st.items():
        if not isinstance(tp, Mapping):
            raise CatalogError(f"{where}, field 'service_tiers.{tier}': must be a mapping")
        tiers[TIER_ALIASES.get(str(tier).lower(), str(tier).lower())] = _parse_million_rates(
            tp, f"{where}, service_tiers.{tier}", strict=strict
        )
    lcs: list[LongContextTier] = []
    lc = pricing.get("long_context") or []
    if not isinstance(lc, list):
        raise CatalogError(f"{where}, field 'long_context': must be a list of tiers")
    for i, t in enumerate(lc):
        w = f"{where}, long_context[{i}]"
        if not isinstance(t, Mapping) or "threshold_tokens" not in t:
            raise CatalogError(f"{w}: must be a mapping with 'threshold_tokens'")
        thr = _number(t["threshold_tokens"], f"{w}, field 'threshold_tokens'")
        lcs.append(
            LongContextTier(
                int(thr),
                _parse_million_rates(
                    t, w, strict=strict, allowed_extra=frozenset({"threshold_tokens"})
                ),
            )
        )
    lcs.sort(key=lambda t: t.threshold)
    return rates, tiers, tuple(lcs)


# ----------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------
#: what to do where MLflow's catalog is absent (``mlflow-tracing`` does not ship its JSON)
NO_BUNDLED_CATALOG_FIX = (
    "only full MLflow ships its price catalog (mlflow/utils/model_catalog/*.json; the light "
    "mlflow-tracing SDK does not): copy it with `mlflow-llmops costs export-catalog DIR` on "
    "the monitoring host and set pricing.mlflow_catalog_dir to DIR, or install "
    "'mlflow-llmops[monitor]'"
)


def mlflow_catalog_dir(override: str | Path | None = None) -> Path:
    """The directory of MLflow's per-provider catalog: ``override`` (a copy, for a service
    install), else the installed MLflow's bundled one (read offline, never fetched)."""
    if override is not None:
        d = Path(override)
        if not d.is_dir() or not any(d.glob("*.json")):
            raise CatalogError(
                f"pricing.mlflow_catalog_dir {str(d)!r} holds no *.json catalog "
                f"files: {NO_BUNDLED_CATALOG_FIX}"
            )
        return d
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError(f"mlflow is not installed; no price catalog: {NO_BUNDLED_CATALOG_FIX}")
    d = Path(next(iter(spec.submodule_search_locations))) / "utils" / "model_catalog"
    if not any(d.glob("*.json")):
        raise CatalogError(f"no price catalog in {d}: {NO_BUNDLED_CATALOG_FIX}")
    return d


def load_mlflow_format(
    path: str | Path, *, provider: str | None = None, priority: int = 0, strict: bool = True
) -> tuple[list[PriceEntry], str]:
    """Entries of one MLflow-format catalog file (``{"models": {name: {"pricing": ...}}}``)."""
    p = Path(path)
    raw = _read(p)
    try:
        data = json.loads(raw, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise CatalogError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
        raise CatalogError(f"{p}: expected an object with a 'models' mapping")
    prov = normalize_provider(provider or data.get("provider") or p.stem) or p.stem
    entries = []
    for name, e in data["models"].items():
        where = f"{p}: model {name!r}"
        if not isinstance(e, Mapping):
            raise CatalogError(f"{where}: must be a mapping")
        pricing = e.get("pricing")
        if pricing is None:
            continue
        rates, tiers, lcs = parse_mlflow_pricing(pricing, where, strict=strict)
        if rates.is_empty() and not tiers:
            continue
        entries.append(
            PriceEntry(
                prov,
                str(name),
                rates,
                tiers,
                lcs,
                effective_from=_date(e.get("effective_from"), f"{where}, field 'effective_from'"),
                source=str(p.name),
                priority=priority,
            )
        )
    return entries, hashlib.sha256(raw.encode()).hexdigest()


_BUNDLED: dict[str, tuple[list[PriceEntry], list[tuple[str, str]]]] = {}


def load_mlflow_catalog(
    *, priority: int = 0, directory: str | Path | None = None
) -> tuple[list[PriceEntry], list[tuple[str, str]]]:
    """MLflow's catalog (all providers; ``directory``: a copy of it), parsed once per process."""
    d = mlflow_catalog_dir(directory)
    cached = _BUNDLED.get(str(d))
    if cached is None:
        entries: list[PriceEntry] = []
        digests: list[tuple[str, str]] = []
        for f in sorted(d.glob("*.json")):
            es, digest = load_mlflow_format(f, priority=priority, strict=False)
            entries.extend(es)
            digests.append((f"mlflow:{f.name}", digest))
        cached = (entries, digests)
        _BUNDLED[str(d)] = cached
    if priority:
        return [replace(e, priority=priority) for e in cached[0]], cached[1]
    return cached


_LITELLM_ABOVE = re.compile(r"^(?P<base>.+?)_above_(?P<n>\d+)k_tokens(?:_(?P<tier>[a-z]+))?$")
_LITELLM_BASE = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "output_cost_per_reasoning_token": "reasoning",
    "input_cost_per_audio_token": "audio_input",
    "output_cost_per_audio_token": "audio_output",
    "input_cost_per_image_token": "image_input",
}
_LITELLM_TIERS = ("batches", "flex", "priority")


def load_litellm_json(path: str | Path, *, priority: int = 1) -> tuple[list[PriceEntry], str]:
    """Entries of a LiteLLM ``model_prices_and_context_window.json`` (USD per token)."""
    p = Path(path)
    raw = _read(p)
    try:
        data = json.loads(raw, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise CatalogError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(data, Mapping):
        raise CatalogError(f"{p}: expected an object of model name -> prices")
    entries = []
    for name, e in data.items():
        if name == "sample_spec":
            continue
        where = f"{p}: model {name!r}"
        if not isinstance(e, Mapping):
            raise CatalogError(f"{where}: must be an object")
        base: dict[str, Decimal] = {}
        tiers: dict[str, dict[str, Decimal]] = {}
        above: dict[tuple[str | None, int], dict[str, Decimal]] = {}
        for k, v in e.items():
            if not (k.endswith(("_cost", "_token", "_tokens", "_hr")) or "_cost_" in k):
                continue
            fw = f"{where}, field {k!r}"
            if k in _LITELLM_BASE:
                base[_LITELLM_BASE[k]] = _number(v, fw)
                continue
            m = _LITELLM_ABOVE.match(k)
            if m and m.group("base") in _LITELLM_BASE:
                tier = m.group("tier")
                if tier is not None and tier not in _LITELLM_TIERS:
                    continue
                tier = "batch" if tier == "batches" else tier
                above.setdefault((tier, int(m.group("n")) * 1000), {})[
                    _LITELLM_BASE[m.group("base")]
                ] = _number(v, fw)
                continue
            for t in _LITELLM_TIERS:
                if k.endswith("_" + t) and k[: -len(t) - 1] in _LITELLM_BASE:
                    tiers.setdefault("batch" if t == "batches" else t, {})[
                        _LITELLM_BASE[k[: -len(t) - 1]]
                    ] = _number(v, fw)
        lcs: list[LongContextTier] = []
        tiered = e.get("tiered_pricing")
        if tiered is not None:
            if not isinstance(tiered, list):
                raise CatalogError(f"{where}, field 'tiered_pricing': must be a list")
            for i, t in enumerate(tiered):
                w = f"{where}, tiered_pricing[{i}]"
                rng = t.get("range") if isinstance(t, Mapping) else None
                if not isinstance(rng, list) or len(rng) != 2:
                    raise CatalogError(f"{w}, field 'range': must be [low, high] token counts")
                low = int(_number(rng[0], f"{w}, field 'range'"))
                tr = {
                    _LITELLM_BASE[k]: _number(v, f"{w}, field {k!r}")
                    for k, v in t.items()
                    if k in _LITELLM_BASE
                }
                if low == 0:
                    base = {**base, **tr}
                else:
                    lcs.append(LongContextTier(low, Rates(**tr)))
        for (tier, thr), vals in above.items():
            if tier is None:
                lcs.append(LongContextTier(thr, Rates(**vals)))
        if not base and not tiers:
            continue
        tier_lcs: dict[str, tuple[LongContextTier, ...]] = {}
        for (tier, thr), vals in sorted(above.items(), key=lambda kv: kv[0][1]):
            if tier is not None:
                tier_lcs[tier] = (*tier_lcs.get(tier, ()), LongContextTier(thr, Rates(**vals)))
        prov_raw = e.get("litellm_provider")
        model = str(name)
        prov = normalize_provider(str(prov_raw)) if prov_raw else None
        if "/" in model and prov and normalize_provider(model.split("/", 1)[0]) == prov:
            model = model.split("/", 1)[1]
        entries.append(
            PriceEntry(
                prov or "litellm",
                model,
                Rates(**base),
                {t: Rates(**v) for t, v in tiers.items()},
                tuple(sorted(lcs, key=lambda t: t.threshold)),
                tier_lcs,
                effective_from=_date(e.get("effective_from"), f"{where}, field 'effective_from'"),
                source=p.name,
                priority=priority,
            )
        )
    return entries, hashlib.sha256(raw.encode()).hexdigest()


_OVERRIDE_MODEL_KEYS = frozenset(
    {"model", "provider", "effective_from", "discount_percent", "service_tiers", "long_context"}
    | set(MILLION_KEYS)
)


@dataclass
class Overrides:
    entries: list[PriceEntry]
    aliases: dict[str, str]
    patterns: list[tuple[str, str]]
    digest: str


def load_overrides_yaml(path: str | Path, *, priority: int = 3) -> Overrides:
    """User prices: own models, fine-tunes, negotiated discounts, aliases, regex patterns."""
    p = Path(path)
    raw = _read(p)
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise CatalogError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise CatalogError(f"{p}: the top level must be a mapping with 'models', 'aliases', ...")
    unknown = set(data) - {"models", "aliases", "patterns", "currency"}
    if unknown:
        raise CatalogError(
            f"{p}: unknown top-level key(s) {sorted(unknown)}; "
            "expected models, aliases, patterns, currency"
        )
    if str(data.get("currency", "USD")).upper() != "USD":
        raise CatalogError(
            f"{p}, field 'currency': only USD is supported, got {data['currency']!r}"
        )
    entries: list[PriceEntry] = []
    models = data.get("models") or []
    if not isinstance(models, list):
        raise CatalogError(f"{p}, field 'models': must be a list of entries")
    for i, m in enumerate(models):
        where = f"{p}: models[{i}]"
        if not isinstance(m, Mapping):
            raise CatalogError(f"{where}: must be a mapping with 'model' and prices")
        if not m.get("model"):
            raise CatalogError(f"{where}, field 'model': required; name the model to price")
        where = f"{p}: models[{i}] ({m['model']!r})"
        extra = set(m) - _OVERRIDE_MODEL_KEYS
        if extra:
            raise CatalogError(
                f"{where}: unknown field(s) {sorted(extra)}; expected one of "
                f"{sorted(_OVERRIDE_MODEL_KEYS)}"
            )
        model = str(m["model"])
        provider = normalize_provider(m.get("provider"))
        if provider is None and "/" in model:
            provider, model = _split_target(model, None)
        if provider is None:
            raise CatalogError(
                f"{where}, field 'provider': required (or write model as provider/model)"
            )
        rates, tiers, lcs = _override_rates(m, where)
        discount = None
        if m.get("discount_percent") is not None:
            discount = _number(m["discount_percent"], f"{where}, field 'discount_percent'")
            if discount > 100:
                raise CatalogError(f"{where}, field 'discount_percent': must be 0..100")
            if not rates.is_empty() or tiers or lcs:
                raise CatalogError(
                    f"{where}: give either prices or discount_percent (of the catalog price), "
                    "not both"
                )
        elif rates.is_empty() and not tiers:
            raise CatalogError(
                f"{where}: no price given; add e.g. input_per_million_tokens and "
                "output_per_million_tokens, or discount_percent"
            )
        entries.append(
            PriceEntry(
                provider,
                model,
                rates,
                tiers,
                lcs,
                effective_from=_date(m.get("effective_from"), f"{where}, field 'effective_from'"),
                source=p.name,
                discount_percent=discount,
                priority=priority,
            )
        )
    aliases: dict[str, str] = {}
    raw_aliases = data.get("aliases") or {}
    if isinstance(raw_aliases, Mapping):
        raw_aliases = [{"name": k, "model": v} for k, v in raw_aliases.items()]
    if not isinstance(raw_aliases, list):
        raise CatalogError(f"{p}, field 'aliases': must be a mapping name -> provider/model")
    for i, a in enumerate(raw_aliases):
        w = f"{p}: aliases[{i}]"
        if not isinstance(a, Mapping) or not a.get("name") or not a.get("model"):
            raise CatalogError(f"{w}: needs 'name' (as spans report it) and 'model' (target)")
        name = str(a["name"])
        if a.get("provider"):
            name = f"{normalize_provider(str(a['provider']))}/{name}"
        aliases[name] = str(a["model"])
    patterns: list[tuple[str, str]] = []
    raw_patterns = data.get("patterns") or []
    if not isinstance(raw_patterns, list):
        raise CatalogError(f"{p}, field 'patterns': must be a list of {{regex, model}}")
    for i, pt in enumerate(raw_patterns):
        w = f"{p}: patterns[{i}]"
        if not isinstance(pt, Mapping) or not pt.get("regex") or not pt.get("model"):
            raise CatalogError(f"{w}: needs 'regex' and 'model'")
        try:
            re.compile(str(pt["regex"]))
        except re.error as e:
            raise CatalogError(f"{w}, field 'regex': invalid regular expression: {e}") from None
        patterns.append((str(pt["regex"]), str(pt["model"])))
    return Overrides(entries, aliases, patterns, hashlib.sha256(raw.encode()).hexdigest())


def _override_rates(
    m: Mapping[str, Any], where: str
) -> tuple[Rates, dict[str, Rates], tuple[LongContextTier, ...]]:
    pricing = {
        k: v
        for k, v in m.items()
        if k not in ("model", "provider", "effective_from", "discount_percent")
    }
    return parse_mlflow_pricing(pricing, where, strict=True)


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{p}: price file not found; check the path in pricing config") from None
    except OSError as e:
        raise CatalogError(f"{p}: cannot read price file: {e}") from None


def build_catalog(
    *,
    include_mlflow_catalog: bool = True,
    mlflow_catalog_dir: str | Path | None = None,
    catalog_files: Sequence[str | Path] = (),
    litellm_files: Sequence[str | Path] = (),
    overrides_file: str | Path | None = None,
) -> PriceCatalog:
    """Assemble a catalog from sources; later sources win (overrides highest)."""
    entries: list[PriceEntry] = []
    sources: list[tuple[str, str]] = []
    if include_mlflow_catalog:
        es, digests = load_mlflow_catalog(priority=0, directory=mlflow_catalog_dir)
        entries.extend(es)
        sources.extend(digests)
    for f in catalog_files:
        es, digest = load_mlflow_format(f, priority=1)
        entries.extend(es)
        sources.append((f"catalog:{Path(f).name}", digest))
    for f in litellm_files:
        es, digest = load_litellm_json(f, priority=2)
        entries.extend(es)
        sources.append((f"litellm:{Path(f).name}", digest))
    aliases: dict[str, str] = {}
    patterns: list[tuple[str, str]] = []
    if overrides_file:
        ov = load_overrides_yaml(overrides_file, priority=3)
        entries.extend(ov.entries)
        aliases, patterns = ov.aliases, ov.patterns
        sources.append((f"overrides:{Path(overrides_file).name}", ov.digest))
    return PriceCatalog(entries, aliases=aliases, patterns=patterns, sources=sources)


__all__ = [
    "CatalogError",
    "LongContextTier",
    "Match",
    "PriceCatalog",
    "PriceEntry",
    "Rates",
    "build_catalog",
    "load_litellm_json",
    "load_mlflow_catalog",
    "load_overrides_yaml",
    "normalize_provider",
    "strip_snapshot",
]
