"""CostCalculator: golden cases from providers' published prices, agreement with MLflow,
properties (hypothesis), and the vectorised path against the scalar one."""

from __future__ import annotations

import random
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow.utils.providers import cost_per_token as mlflow_cost_per_token

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CostCalculator, TokenUsage, sum_usd
from mlflow_llmops.pricing.calculator import PICO

D = Decimal


@pytest.fixture(scope="module")
def calc() -> CostCalculator:
    return CostCalculator.default(clock=FakeClock())


# -- golden cases (prices as published by the providers, USD per 1M tokens) ---------------
def test_openai_cached_input_is_discounted_not_double_counted(calc):
    # gpt-4o: input $2.50, cached input $1.25, output $10.00 (openai.com/api/pricing)
    r = calc.cost(
        model="gpt-4o",
        provider="openai",
        usage={"input_tokens": 1000, "output_tokens": 500, "cache_read_input_tokens": 400},
    )
    assert r.status == "priced"
    assert r.breakdown == {"input": D("0.0015"), "cache_read": D("0.0005"), "output": D("0.005")}
    assert r.total == D("0.007")
    assert r.currency == "USD" and r.catalog_version == calc.catalog_version
    assert r.matched_entry == "openai/gpt-4o"


def test_anthropic_5m_and_1h_cache_writes(calc):
    # Claude Sonnet 4.5: input $3, 5m cache write $3.75, 1h cache write $6, cache read $0.30,
    # output $15 (anthropic.com/pricing). MLflow's usage counts cache tokens inside input.
    usage = {
        "input_tokens": 10_000,
        "output_tokens": 1_000,
        "cache_read_input_tokens": 3_000,
        "cache_creation_input_tokens": 5_000,
        "cache_creation_input_tokens_above_1hr": 2_000,
    }
    r = calc.cost(model="claude-sonnet-4-5", provider="anthropic", usage=usage)
    assert r.breakdown == {
        "input": D("0.006"),
        "cache_read": D("0.0009"),
        "cache_write_5m": D("0.01125"),
        "cache_write_1h": D("0.012"),
        "output": D("0.015"),
    }
    assert r.total == D("0.04515")
    # Anthropic's native usage (cache tokens outside input_tokens) gives the same cost.
    native = {
        "input_tokens": 2_000,
        "output_tokens": 1_000,
        "cache_read_input_tokens": 3_000,
        "cache_creation_input_tokens": 5_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 3_000, "ephemeral_1h_input_tokens": 2_000},
    }
    u = TokenUsage.from_provider_usage("anthropic", native)
    assert calc.cost(model="claude-sonnet-4-5", provider="anthropic", usage=u).total == r.total


def test_gemini_long_context_above_200k(calc):
    # Gemini 2.5 Pro: prompts <= 200k: $1.25 in / $10 out; > 200k: $2.50 in / $15 out.
    short = calc.cost(
        model="gemini-2.5-pro",
        provider="gemini",
        usage={"input_tokens": 200_000, "output_tokens": 1_000},
    )
    assert short.total == D("0.25") + D("0.01") and short.long_context_threshold is None
    long = calc.cost(
        model="gemini-2.5-pro",
        provider="gemini",
        usage={"input_tokens": 250_000, "output_tokens": 1_000},
    )
    assert long.total == D("0.625") + D("0.015")
    assert long.long_context_threshold == 200_000


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        (None, D("0.0025") + D("0.005")),  # standard $2.50 / $10
        ("default", D("0.0025") + D("0.005")),
        ("batch", D("0.00125") + D("0.0025")),  # Batch API: 50% off, $1.25 / $5
        ("priority", D("0.00425") + D("0.0085")),  # Priority: $4.25 / $17
    ],
)
def test_batch_and_priority_tiers(calc, tier, expected):
    r = calc.cost(
        model="gpt-4o",
        provider="openai",
        usage={"input_tokens": 1000, "output_tokens": 500},
        service_tier=tier,
    )
    assert r.total == expected
    assert r.service_tier == (tier if tier in ("batch", "priority") else None)


def test_unknown_tier_uses_standard_and_says_so(calc):
    r = calc.cost(
        model="gpt-4o", provider="openai", usage={"input_tokens": 10}, service_tier="ultra"
    )
    assert r.service_tier is None and any("ultra" in n for n in r.notes)


def test_unknown_model_is_unpriced_never_zero(calc):
    r = calc.cost(model="acme-llm-9000", provider="acme", usage={"input_tokens": 10})
    assert r.status == "unpriced" and r.total is None and r.breakdown == {}
    assert "no price" in r.reason


def test_missing_bucket_price_makes_partial(calc):
    # gpt-image-1 publishes no text-output price: those tokens are listed, not priced at $0.
    r = calc.cost(
        model="gpt-image-1",
        provider="openai",
        usage={"input_tokens": 1000, "output_tokens": 10},
    )
    assert r.status == "partial"
    assert r.unpriced_tokens == {"output": 10}
    assert r.total == r.breakdown["input"] > 0


def test_otel_genai_attributes_and_openai_shapes(calc):
    otel = {
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500,
        "gen_ai.usage.cache_read.input_tokens": 400,
    }
    openai_native = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 400},
        "completion_tokens_details": {"reasoning_tokens": 100},
    }
    a = calc.cost(model="gpt-4o", provider="openai", usage=otel)
    b = calc.cost(model="gpt-4o", provider="openai", usage=openai_native)
    assert a.total == b.total == D("0.007")
    assert b.usage.reasoning == 100


# -- agreement with MLflow's own cost_per_token ----------------------------------------------
def test_agrees_with_mlflow_cost_per_token_on_every_plainly_priced_model(calc):
    checked = 0
    for provider, model in calc.catalog.keys():
        entry = calc.catalog.entry_at((provider, model), FakeClock().now().date())
        if entry is None or entry.rates.input is None or entry.rates.output is None:
            continue
        if "/" in model:
            # MLflow's lookup strips everything up to the first "/", so it prices
            # azure "eu/codex-mini" as "codex-mini": no agreement to expect there.
            continue
        theirs = mlflow_cost_per_token(
            model=entry.model,
            prompt_tokens=1234,
            completion_tokens=567,
            custom_llm_provider=provider,
        )
        assert theirs is not None, (provider, model)
        ours = calc.cost(
            model=model,
            provider=provider,
            usage=TokenUsage(input=1234, output=567),
        )
        assert ours.status == "priced", (provider, model)
        assert float(ours.total) == pytest.approx(sum(theirs), rel=1e-12, abs=1e-15), (
            provider,
            model,
        )
        checked += 1
    assert checked > 1500


# -- properties -------------------------------------------------------------------------------
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-haiku-4-5"),
    ("gemini", "gemini-2.5-pro"),
    ("gemini", "gemini-2.5-flash"),
    ("deepseek", "deepseek-v4-flash"),
]
counts = st.integers(min_value=0, max_value=400_000)
usages = st.builds(
    TokenUsage,
    input=counts,
    cache_read=counts,
    cache_write_5m=counts,
    cache_write_1h=counts,
    output=counts,
)
TIERS = st.sampled_from([None, "batch", "priority", "flex"])
FIELDS = ["input", "cache_read", "cache_write_5m", "cache_write_1h", "output"]


def _add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(**{f: getattr(a, f) + getattr(b, f) for f in FIELDS})


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(MODELS), usages, st.sampled_from(FIELDS), st.integers(1, 300_000), TIERS)
def test_cost_is_monotone_and_never_negative(calc, pm, u, field, extra, tier):
    provider, model = pm
    base = calc.cost(model=model, provider=provider, usage=u, service_tier=tier)
    more = calc.cost(
        model=model,
        provider=provider,
        usage=TokenUsage(**{f: getattr(u, f) + (extra if f == field else 0) for f in FIELDS}),
        service_tier=tier,
    )
    assert base.total is not None and base.total >= 0
    assert more.total >= base.total
    assert all(v >= 0 for v in base.breakdown.values())


small = st.integers(min_value=0, max_value=25_000)
small_usages = st.builds(
    TokenUsage, input=small, cache_read=small, cache_write_5m=small, cache_write_1h=small,
    output=small,
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(MODELS), small_usages, small_usages, TIERS)
def test_cost_is_additive_over_splits(calc, pm, a, b, tier):
    # Below every long-context threshold (a long prompt is priced as a whole, by design).
    provider, model = pm
    entry = calc.catalog.entry_at((provider, model), FakeClock().now().date())
    thresholds = [t.threshold for t in entry.long_context]
    assume(_add(a, b).prompt_tokens <= min(thresholds, default=10**9))
    ca = calc.cost(model=model, provider=provider, usage=a, service_tier=tier)
    cb = calc.cost(model=model, provider=provider, usage=b, service_tier=tier)
    cab = calc.cost(model=model, provider=provider, usage=_add(a, b), service_tier=tier)
    assert ca.total + cb.total == cab.total


# -- vectorised path --------------------------------------------------------------------------
def test_vectorised_matches_scalar_exactly(calc):
    rng = random.Random(7)
    names = [*MODELS, ("acme", "unknown-model"), ("openrouter", "google/gemini-2.5-flash"),
             ("openai", "gpt-image-1"), ("azure", "gpt-4o-2024-08-06")]  # fmt: skip
    rows = []
    for _ in range(3000):
        provider, model = rng.choice(names)
        rows.append(
            {
                "model": model,
                "provider": provider,
                "service_tier": rng.choice([None, "batch", "priority"]),
                "timestamp_ms": 1_780_000_000_000 + rng.randrange(10**10),
                "input_tokens": rng.choice([0, rng.randrange(300_000)]),
                "cache_read_tokens": rng.randrange(5_000),
                "cache_write_5m_tokens": rng.choice([0, rng.randrange(5_000)]),
                "cache_write_1h_tokens": rng.choice([0, rng.randrange(5_000)]),
                "output_tokens": rng.randrange(5_000),
            }
        )
    df = pd.DataFrame(rows)
    df["reasoning_tokens"] = (df["output_tokens"] // 3).astype("int64")
    out = calc.cost_frame(df)
    assert out.attrs["catalog_version"] == calc.catalog_version
    expected_total = D(0)
    for i, row in enumerate(rows):
        r = calc.cost(
            model=row["model"],
            provider=row["provider"],
            usage=TokenUsage(
                input=row["input_tokens"],
                cache_read=row["cache_read_tokens"],
                cache_write_5m=row["cache_write_5m_tokens"],
                cache_write_1h=row["cache_write_1h_tokens"],
                output=row["output_tokens"],
                reasoning=int(df["reasoning_tokens"].iat[i]),
            ),
            service_tier=row["service_tier"],
            at=row["timestamp_ms"],
        )
        assert out["status"].iat[i] == r.status, row
        if r.total is None:
            assert pd.isna(out["total_cost_pusd"].iat[i])
        else:
            exact = out["total_cost_exact"].iat[i] if "total_cost_exact" in out else None
            got = (
                exact
                if exact is not None and not pd.isna(exact)
                else (D(int(out["total_cost_pusd"].iat[i])) / PICO)
            )
            assert got == r.total, row
            expected_total += r.total
    assert sum_usd(out) == expected_total
    assert set(out["status"]) == {"priced", "unpriced", "partial"}


def test_exact_decimal_sum_has_no_float_drift(calc):
    n = 200_000
    df = pd.DataFrame({"model": ["gpt-4o-mini"] * n, "provider": ["openai"] * n,
                       "input_tokens": [1] * n, "output_tokens": [1] * n})  # fmt: skip
    out = calc.cost_frame(df)
    assert sum_usd(out) == n * (D("0.15") + D("0.6")) / D(1_000_000)
    assert float(out["total_cost_usd"].sum()) != 0
