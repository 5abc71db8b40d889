"""Re-pricing in batches through the vectorised path gives the scalar path's rows exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CostCalculator, TokenUsage
from mlflow_llmops.pricing.job import cost_row, price_spans
from mlflow_llmops.pricing.spans import LlmSpan

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
  - model: acme-input-only
    provider: acme
    input_per_million_tokens: 3.00
    image_input_per_million_tokens: 2.50
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
  - model: gpt-4o-mini
    provider: openai
    effective_from: 2026-06-01
    discount_percent: 20
"""

NOW = datetime(2026, 12, 7, tzinfo=UTC)
MODELS = [
    ("acme", "acme-tiered"), ("acme", "acme-input-only"), ("acme", "acme-fine"),
    ("acme", "acme-dated"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4o-2024-08-06"),
    ("anthropic", "claude-sonnet-4-5"), ("gemini", "gemini-2.5-pro"), (None, "gpt-4o"),
    ("vllm", "in-house-llm"), (None, None), ("openai", "gpt-image-1"),
    ("azure_ai", "DeepSeek-V4-Flash-0731"),
]  # fmt: skip
DAY_MS = 86_400_000
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)

counts = st.one_of(st.just(0), st.integers(1, 300), st.integers(300, 400_000))


@st.composite
def spans(draw: st.DrawFn, i: int = 0) -> LlmSpan:
    provider, model = draw(st.sampled_from(MODELS))
    if draw(st.integers(0, 19)) == 0:
        usage = None
    else:
        output = draw(counts)
        usage = TokenUsage(
            input=draw(counts),
            cache_read=draw(counts),
            cache_write_5m=draw(counts),
            cache_write_1h=draw(counts),
            output=output,
            reasoning=draw(st.integers(0, output)),
            audio_input=draw(st.sampled_from([0, 0, 0, 17])),
            image_input=draw(st.sampled_from([0, 0, 0, 23])),
        )
    return LlmSpan(
        f"tr-{draw(st.integers(0, 10**9))}",
        "s1",
        "1",
        T0 + draw(st.integers(0, 340)) * DAY_MS + draw(st.integers(0, DAY_MS - 1)),
        model,
        provider,
        draw(st.sampled_from([None, None, "flex", "priority", "batch", "Priority", "bogus"])),
        usage,
        None if usage is not None else "inconsistent usage",
    )


@pytest.fixture(scope="module")
def calc(tmp_path_factory) -> CostCalculator:
    f = tmp_path_factory.mktemp("prices") / "prices.yaml"
    f.write_text(OVERRIDES)
    return CostCalculator.from_files(overrides_file=f, clock=FakeClock())


def _scalar(calc: CostCalculator, s: LlmSpan) -> dict:
    r = None
    if s.usage is not None:
        r = calc.cost(model=s.model, provider=s.provider, usage=s.usage,
                      service_tier=s.service_tier, at=s.trace_timestamp_ms)  # fmt: skip
    return cost_row(s, r, "v1", NOW)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(st.lists(spans(), min_size=1, max_size=40))
def test_vectorised_rows_equal_scalar_rows(calc, batch):
    got = price_spans(calc, batch, "v1", NOW)
    want = [_scalar(calc, s) for s in batch]
    for g, w, s in zip(got, want, batch, strict=True):
        assert g == w, s


def test_every_status_and_fallback_is_exercised(calc):
    """The cases the property test must reach: priced, partial, unpriced by model, by date,
    by broken usage, a rate finer than a pico-dollar, a tier and a long context."""
    u = TokenUsage(input=2000, output=10, cache_read=5)
    media = TokenUsage(input=2000, output=10, audio_input=7, image_input=9)
    at_ms = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp() * 1000)
    early = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp() * 1000)
    cases = [
        LlmSpan("a", "1", "1", at_ms, "acme-tiered", "acme", "priority", u),
        LlmSpan("b", "1", "1", at_ms, "acme-input-only", "acme", None, media),
        LlmSpan("c", "1", "1", at_ms, "in-house-llm", "vllm", None, u),
        LlmSpan("d", "1", "1", early, "acme-dated", "acme", None, u),
        LlmSpan("e", "1", "1", at_ms, "gpt-4o", None, None, None, "bad usage"),
        LlmSpan("f", "1", "1", at_ms, "acme-fine", "acme", None, u),
        LlmSpan("g", "1", "1", at_ms, "acme-dated", "acme", None, u),
    ]
    got = price_spans(calc, cases, "v1", NOW)
    assert got == [_scalar(calc, s) for s in cases]
    assert [r["status"] for r in got] == [
        "priced", "partial", "unpriced", "unpriced", "unpriced", "priced", "priced",
    ]  # fmt: skip
    assert got[0]["service_tier"] == "priority" and got[3]["matched_entry"] == "acme/acme-dated"
    assert got[1]["output_cost_usd"] is None and got[1]["input_cost_usd"] > 0
    assert got[1]["other_cost_usd"] > 0  # image input priced, audio input not: a partial part
