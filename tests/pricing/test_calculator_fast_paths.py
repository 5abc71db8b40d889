"""The array-speed paths give the plain definition's answers, digit for digit.

``cost()`` prices the common text call inline and ``cost_frame`` prices rows through
look-up tables; both are checked here against a reference written the plain way
(``resolve_rates`` of the entry in force, one ``Decimal`` product per bucket, ``sum``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CostCalculator, TokenUsage
from mlflow_llmops.pricing.calculator import FRAME_TOKEN_COLUMNS, PICO, resolve_rates

OVERRIDES = """
models:
  - model: acme-tiered
    provider: acme
    input_per_million_tokens: 1.00
    output_per_million_tokens: 4.00
    cache_read_per_million_tokens: 0.10
    service_tiers:
      flex: {input_per_million_tokens: 0.50}
      priority: {input_per_million_tokens: 2.00, output_per_million_tokens: 8.00}
    long_context:
      - {threshold_tokens: 1000, input_per_million_tokens: 2.00, output_per_million_tokens: 6.00}
      - {threshold_tokens: 5000, input_per_million_tokens: 3.00, output_per_million_tokens: 9.00}
  - model: acme-reasoner
    provider: acme
    input_per_million_tokens: 1.10
    output_per_million_tokens: 4.40
    reasoning_per_million_tokens: 2.20
  - model: acme-same-reasoning
    provider: acme
    input_per_million_tokens: 1.5
    output_per_million_tokens: 6
    reasoning_per_million_tokens: 6.000
  - model: acme-huge
    provider: acme
    input_per_million_tokens: "2E+7"
    output_per_million_tokens: 30000000
  - model: acme-no-output
    provider: acme
    input_per_million_tokens: 3.00
  - model: acme-fine
    provider: acme
    input_per_million_tokens: 0.0000003
    output_per_million_tokens: 0.0000007
  - model: acme-dated
    provider: acme
    effective_from: 2026-03-01
    input_per_million_tokens: 5.00
    output_per_million_tokens: 15.00
  - model: acme-dated
    provider: acme
    effective_from: 2026-06-01
    discount_percent: 20
  - model: acme-dated
    provider: acme
    effective_from: 2026-09-15
    input_per_million_tokens: 4.00
    output_per_million_tokens: 12.00
  - model: gpt-4o-mini
    provider: openai
    effective_from: 2026-06-01
    discount_percent: 20
"""

MODELS = [
    ("acme", "acme-tiered"), ("acme", "acme-reasoner"), ("acme", "acme-same-reasoning"),
    ("acme", "acme-no-output"), ("acme", "acme-fine"),
    ("acme", "acme-dated"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-pro"), ("vllm", "in-house"),
    (None, None), ("azure_ai", "DeepSeek-V4-Flash-0731"), ("azure_ai", "deepseek-v4-flash-0731"),
]  # fmt: skip
#: $20 a token: a rate with a positive exponent (``cost()`` takes its general path there).
#: Scalar only: a frame's int64 pico-dollars would overflow at these prices.
HUGE = ("acme", "acme-huge")
TIERS = [None, "flex", "priority", "Priority", "batch", "bogus", ""]
DAY_MS = 86_400_000
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
#: Days around each price change of acme-dated, and the change days themselves.
EDGE_DAYS = [date(2026, 2, 28), date(2026, 3, 1), date(2026, 5, 31), date(2026, 6, 1),
             date(2026, 9, 14), date(2026, 9, 15)]  # fmt: skip

counts = st.one_of(st.just(0), st.integers(1, 300), st.integers(300, 400_000))


@pytest.fixture(scope="module")
def calc(tmp_path_factory) -> CostCalculator:
    f = tmp_path_factory.mktemp("prices") / "prices.yaml"
    f.write_text(OVERRIDES)
    return CostCalculator.from_files(overrides_file=f, clock=FakeClock())


def _reference(calc: CostCalculator, model, provider, u: TokenUsage, tier, at):  # noqa: ANN001, ANN202
    """(status, total, breakdown, unpriced tokens) the plain way."""
    _, entry = calc.entry_for(model, provider, at)
    if entry is None:
        return "unpriced", None, {}, {}
    rates = resolve_rates(entry, tier, u.prompt_tokens).rates
    tokens = {
        "input": u.input, "cache_read": u.cache_read, "cache_write_5m": u.cache_write_5m,
        "cache_write_1h": u.cache_write_1h, "output": u.output - u.reasoning,
        "reasoning": u.reasoning, "audio_input": u.audio_input, "audio_output": u.audio_output,
        "image_input": u.image_input,
    }  # fmt: skip
    breakdown: dict[str, Decimal] = {}
    missing: dict[str, int] = {}
    for bucket, n in tokens.items():
        if n:
            if rates[bucket] is None:
                missing[bucket] = n
            else:
                breakdown[bucket] = rates[bucket] * n
    if rates["reasoning"] == rates["output"] and "reasoning" in breakdown:
        breakdown["output"] = breakdown.get("output", Decimal(0)) + breakdown.pop("reasoning")
    if missing and not breakdown:
        return "unpriced", None, {}, missing
    total = sum(breakdown.values(), Decimal(0))
    return ("partial" if missing else "priced"), total, breakdown, missing


@st.composite
def calls(draw: st.DrawFn, models: list = MODELS) -> tuple:  # noqa: B006
    provider, model = draw(st.sampled_from(models))
    output = draw(counts)
    u = TokenUsage(
        input=draw(counts),
        cache_read=draw(counts),
        cache_write_5m=draw(st.one_of(st.just(0), counts)),
        cache_write_1h=draw(st.one_of(st.just(0), counts)),
        output=output,
        reasoning=draw(st.one_of(st.just(0), st.integers(0, output))),
        audio_input=draw(st.sampled_from([0, 0, 0, 17])),
        image_input=draw(st.sampled_from([0, 0, 0, 23])),
    )
    if draw(st.booleans()):
        at = T0 + draw(st.integers(0, 340)) * DAY_MS + draw(st.integers(0, DAY_MS - 1))
    else:
        day = draw(st.sampled_from(EDGE_DAYS))
        at = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        at += draw(st.sampled_from([0, DAY_MS - 1]))
    return model, provider, u, draw(st.sampled_from(TIERS)), at


def _as_mlflow_dict(u: TokenUsage) -> dict[str, int]:
    """MLflow's usage record (input includes cached) of a text-only usage."""
    d = {
        "input_tokens": u.input + u.cache_read + u.cache_write_5m + u.cache_write_1h,
        "output_tokens": u.output,
        "total_tokens": u.input + u.cache_read + u.output,
    }
    if u.cache_read:
        d["cache_read_input_tokens"] = u.cache_read
    if u.cache_write_5m or u.cache_write_1h:
        d["cache_creation_input_tokens"] = u.cache_write_5m + u.cache_write_1h
        d["cache_creation_input_tokens_above_1hr"] = u.cache_write_1h
    if u.reasoning:
        d["reasoning_tokens"] = u.reasoning
    return d


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(calls([*MODELS, HUGE]))
def test_scalar_cost_is_the_plain_definition_digit_for_digit(calc, call):
    model, provider, u, tier, at = call
    status, total, breakdown, missing = _reference(calc, model, provider, u, tier, at)
    shapes = [u]
    if not (u.audio_input or u.image_input):
        shapes.append(_as_mlflow_dict(u))
    for usage in shapes:
        r = calc.cost(model=model, provider=provider, usage=usage, service_tier=tier, at=at)
        assert r.usage == u
        assert (r.status, r.unpriced_tokens) == (status, missing)
        # str(): the same digits and exponent, not only the same value
        assert {k: str(v) for k, v in r.breakdown.items()} == {
            k: str(v) for k, v in breakdown.items()
        }
        assert str(r.total) == str(total)


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": [m for m, *_ in rows],
            "provider": [p for _, p, *_ in rows],
            "service_tier": [t for *_, t, _ in rows],
            "timestamp_ms": np.array([a for *_, a in rows], dtype=np.int64),
            **{
                col: np.array([getattr(u, b) for _, _, u, _, _ in rows], dtype=np.int64)
                for b, col in FRAME_TOKEN_COLUMNS.items()
            },
        }
    )


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(st.lists(calls(), min_size=1, max_size=60))
def test_frame_rows_are_the_scalar_results(calc, rows):
    df = _frame(rows)
    out = calc.cost_frame(df)
    detail = calc.cost_frame(df, detail=True)
    for i, (model, provider, u, tier, at) in enumerate(rows):
        r = calc.cost(model=model, provider=provider, usage=u, service_tier=tier, at=at)
        assert out["status"].iat[i] == r.status
        assert detail["status"].iat[i] == r.status
        if r.total is None:
            assert pd.isna(out["total_cost_pusd"].iat[i])
            assert np.isnan(out["total_cost_usd"].iat[i])
            continue
        assert out["matched_entry"].iat[i] == r.matched_entry
        applied = out["service_tier_applied"].iat[i]
        assert (None if pd.isna(applied) else applied) == r.service_tier
        if detail["inexact"].iat[i]:
            assert out["total_cost_exact"].iat[i] == r.total
            continue
        assert Decimal(int(out["total_cost_pusd"].iat[i])) / PICO == r.total
        bd = r.breakdown
        for col, buckets in (
            ("input_cost_pusd", ("input",)),
            ("cache_read_cost_pusd", ("cache_read",)),
            ("cache_write_cost_pusd", ("cache_write_5m", "cache_write_1h")),
            ("output_cost_pusd", ("output", "reasoning")),
            ("other_cost_pusd", ("audio_input", "audio_output", "image_input")),
        ):
            want = sum((bd.get(b, Decimal(0)) for b in buckets), Decimal(0)) * PICO
            assert out[col].iat[i] == want, col
        missing_bits = sum(1 << j for j, b in enumerate(_BUCKETS) if b in r.unpriced_tokens)
        assert detail["missing_bits"].iat[i] == missing_bits


_BUCKETS = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "reasoning",
            "audio_input", "audio_output", "image_input")  # fmt: skip


def test_category_object_and_string_columns_price_alike(calc):
    rng = np.random.default_rng(3)
    n = 5_000
    pick = rng.integers(0, len(MODELS), n)
    df = pd.DataFrame(
        {
            "model": [MODELS[i][1] for i in pick],
            "provider": [MODELS[i][0] for i in pick],
            "service_tier": [TIERS[i] for i in rng.integers(0, len(TIERS), n)],
            "timestamp_ms": T0 + rng.integers(0, 340 * DAY_MS, n),
            "input_tokens": rng.integers(0, 20_000, n),
            "cache_read_tokens": rng.integers(0, 2_000, n),
            "output_tokens": rng.integers(0, 3_000, n),
        }
    )
    want = calc.cost_frame(df, detail=True)
    for dtype in ("category", object):
        other = df.astype({"model": dtype, "provider": dtype, "service_tier": dtype})
        got = calc.cost_frame(other, detail=True)
        for col in want.columns:
            assert got[col].astype(object).equals(want[col].astype(object)), (dtype, col)
    assert set(want["status"]) == {"priced", "partial", "unpriced"}


def test_no_timestamp_column_prices_every_row_at_the_given_day(calc):
    df = pd.DataFrame({"model": ["acme-dated"] * 3, "provider": ["acme"] * 3,
                       "input_tokens": [1_000_000] * 3})  # fmt: skip
    for day, usd in ((date(2026, 2, 28), None), (date(2026, 3, 1), "5"),
                     (date(2026, 6, 1), "4"), (date(2026, 9, 15), "4")):  # fmt: skip
        out = calc.cost_frame(df, at=day)
        if usd is None:
            assert out["status"].tolist() == ["unpriced"] * 3
        else:
            assert out["total_cost_pusd"].tolist() == [int(Decimal(usd) * PICO)] * 3


def test_empty_frame(calc):
    out = calc.cost_frame(_frame([]), detail=True)
    assert len(out) == 0 and "total_cost_pusd" in out and "missing_bits" in out
