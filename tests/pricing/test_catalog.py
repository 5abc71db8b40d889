"""Catalog sources, matching rules, effective dates, usage normalisation, clear errors."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CatalogError, CostCalculator, TokenUsage, UsageError
from mlflow_llmops.pricing.catalog import (
    PriceCatalog,
    build_catalog,
    load_mlflow_catalog,
    strip_snapshot,
)

D = Decimal


@pytest.fixture(scope="module")
def calc() -> CostCalculator:
    return CostCalculator.default(clock=FakeClock())


# -- matching ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "provider", "key", "kind"),
    [
        ("gpt-4o", "openai", "openai/gpt-4o", "exact"),
        ("GPT-4o", "openai", "openai/gpt-4o", "exact"),
        ("openai/gpt-4o", None, "openai/gpt-4o", "provider-prefix"),
        ("gpt-4o-2024-08-06", "openai", "openai/gpt-4o-2024-08-06", "exact"),
        ("gpt-4o-2099-01-01", "openai", "openai/gpt-4o", "snapshot"),
        ("claude-sonnet-4-5-20991231", "anthropic", "anthropic/claude-sonnet-4-5", "snapshot"),
        ("gemini-2.5-pro", "gcp.gemini", "gemini/gemini-2.5-pro", "exact"),
    ],
)
def test_matching_rules(calc, model, provider, key, kind):
    m = calc.match(model, provider)
    assert (m.entry_key, m.kind) == (key, kind)


def test_bare_name_priced_by_several_providers_is_reported_not_hidden(calc):
    m = calc.match("gpt-4o")
    assert m.entry_key == "openai/gpt-4o" and m.provider_inferred
    assert "azure" in m.candidates
    r = calc.cost(model="gpt-4o", usage={"input_tokens": 1})
    assert any("provider inferred" in n for n in r.notes)


def test_ambiguous_without_a_maker_is_unpriced_with_candidates(tmp_path):
    a = tmp_path / "alpha.json"
    b = tmp_path / "beta.json"
    for f, price in ((a, 1), (b, 2)):
        f.write_text(json.dumps({"models": {"shared-llm": {"pricing": {
            "input_per_million_tokens": price, "output_per_million_tokens": price}}}}))  # fmt: skip
    calc = CostCalculator.from_files(include_mlflow_catalog=False, catalog_files=[a, b])
    m = calc.match("shared-llm")
    assert not m.matched and m.candidates == ("alpha", "beta") and "ambiguous" in m.reason
    assert calc.cost(model="shared-llm", usage={"input_tokens": 5}).status == "unpriced"
    assert calc.cost(model="shared-llm", provider="beta", usage={"input_tokens": 10**6}).total == 2


def test_every_bundled_catalog_entry_prices_at_its_own_rates():
    """Case-distinct spellings are distinct models (azure_ai/DeepSeek-V4-Flash-0731 0.44/1.32
    beside azure_ai/deepseek-v4-flash-0731 0.19/0.51): the exact spelling wins."""
    entries, digests = load_mlflow_catalog()
    cat = PriceCatalog(entries, sources=digests)
    wrong = []
    for e in entries:
        m = cat.match(e.model, e.provider)
        got = cat.entry_at(m.key, date(2026, 12, 1)) if m.key else None
        if got is None or got.rates != e.rates:
            wrong.append((e.key, m.entry_key))
    assert len(entries) > 3000 and wrong == []
    calc = CostCalculator.default(clock=FakeClock())
    usage = {"input_tokens": 10**6, "output_tokens": 10**6}
    upper = calc.cost(model="DeepSeek-V4-Flash-0731", provider="azure_ai", usage=usage)
    lower = calc.cost(model="deepseek-v4-flash-0731", provider="azure_ai", usage=usage)
    assert (upper.total, lower.total) == (D("1.76"), D("0.70"))
    assert calc.match("GPT-4o", "openai").entry_key == "openai/gpt-4o"


def test_strip_snapshot():
    assert strip_snapshot("gpt-4o-2024-08-06") == "gpt-4o"
    assert strip_snapshot("claude-3-5-haiku-20241022") == "claude-3-5-haiku"
    assert strip_snapshot("claude-3-5-haiku@20241022") == "claude-3-5-haiku"
    assert strip_snapshot("gpt-4o") == "gpt-4o"


# -- overrides: own models, aliases, patterns, discounts, effective dates ---------------------
OVERRIDES = """
models:
  - model: acme-ft-support
    provider: acme
    input_per_million_tokens: 0.30
    output_per_million_tokens: 1.20
    service_tiers:
      batch: {input_per_million_tokens: 0.15, output_per_million_tokens: 0.60}
  - model: gpt-4o-mini
    provider: openai
    effective_from: 2026-06-01
    discount_percent: 20
  - model: openai/gpt-4o
    effective_from: 2026-09-01
    input_per_million_tokens: 2.00
    output_per_million_tokens: 8.00
aliases:
  - {name: prod-chat-deployment, provider: azure, model: openai/gpt-4o-mini}
  - {name: support-bot, model: acme/acme-ft-support}
patterns:
  - {regex: "ft:gpt-4o-mini-2024-07-18:acme:.*", model: acme/acme-ft-support}
"""


@pytest.fixture
def ov_calc(tmp_path) -> CostCalculator:
    f = tmp_path / "prices.yaml"
    f.write_text(OVERRIDES)
    return CostCalculator.from_files(overrides_file=f, clock=FakeClock())


def test_own_model_alias_and_pattern(ov_calc):
    u = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert ov_calc.cost(model="acme-ft-support", provider="acme", usage=u).total == D("1.5")
    r = ov_calc.cost(model="support-bot", usage=u, service_tier="batch")
    assert r.total == D("0.75") and r.service_tier == "batch"
    r = ov_calc.cost(model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123", usage=u)
    assert r.matched_entry == "acme/acme-ft-support" and r.total == D("1.5")
    r = ov_calc.cost(model="prod-chat-deployment", provider="azure", usage=u, at=date(2026, 1, 1))
    assert r.matched_entry == "openai/gpt-4o-mini" and r.total == D("0.75")  # $0.15 + $0.60


def test_effective_dates_and_discount(ov_calc):
    u = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    before = ov_calc.cost(model="gpt-4o-mini", provider="openai", usage=u, at=date(2026, 5, 31))
    after = ov_calc.cost(model="gpt-4o-mini", provider="openai", usage=u, at=date(2026, 6, 1))
    assert before.total == D("0.75") and after.total == D("0.60")
    assert after.matched_entry == "openai/gpt-4o-mini@2026-06-01"
    old = ov_calc.cost(model="gpt-4o", provider="openai", usage=u, at=date(2026, 8, 31))
    new = ov_calc.cost(model="gpt-4o", provider="openai", usage=u, at=date(2026, 9, 1))
    assert (old.total, new.total) == (D("12.5"), D("10"))
    # the batch tier of the discounted entry is discounted too
    b = ov_calc.cost(model="gpt-4o-mini", provider="openai", usage=u, service_tier="batch",
                     at=date(2026, 7, 1))  # fmt: skip
    assert b.total == D("0.30")


def test_catalog_version_is_a_content_hash(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text(OVERRIDES)
    v1 = build_catalog(overrides_file=f).version
    assert build_catalog(overrides_file=f).version == v1
    f.write_text(OVERRIDES.replace("0.30", "0.31"))
    assert build_catalog(overrides_file=f).version != v1
    assert build_catalog().version not in (v1,)


# -- LiteLLM import ---------------------------------------------------------------------------
LITELLM = {
    "sample_spec": {"input_cost_per_token": 0},
    "claude-sonnet-4-5": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "input_cost_per_token_above_200k_tokens": 6e-06,
        "output_cost_per_token_above_200k_tokens": 2.25e-05,
        "input_cost_per_token_batches": 1.5e-06,
        "output_cost_per_token_batches": 7.5e-06,
    },
    "gpt-5-mini": {
        "litellm_provider": "openai",
        "input_cost_per_token": 2.5e-07,
        "output_cost_per_token": 2e-06,
        "input_cost_per_token_flex": 1.25e-07,
        "output_cost_per_token_flex": 1e-06,
        "input_cost_per_token_priority": 4.5e-07,
        "output_cost_per_token_priority": 3.6e-06,
    },
    "dashscope/qwen-flash": {
        "litellm_provider": "dashscope",
        "tiered_pricing": [
            {"input_cost_per_token": 5e-08, "output_cost_per_token": 4e-07, "range": [0, 256000]},
            {
                "input_cost_per_token": 2.5e-07,
                "output_cost_per_token": 2e-06,
                "range": [256000, 1000000],
            },
        ],  # fmt: skip
    },
}


def test_litellm_json_import(tmp_path):
    f = tmp_path / "model_prices_and_context_window.json"
    f.write_text(json.dumps(LITELLM))
    calc = CostCalculator.from_files(include_mlflow_catalog=False, litellm_files=[f])
    u = {
        "input_tokens": 10_000,
        "output_tokens": 1_000,
        "cache_read_input_tokens": 3_000,
        "cache_creation_input_tokens": 5_000,
        "cache_creation_input_tokens_above_1hr": 2_000,
    }
    assert calc.cost(model="claude-sonnet-4-5", provider="anthropic", usage=u).total == D("0.04515")
    long = calc.cost(model="anthropic/claude-sonnet-4-5",
                     usage={"input_tokens": 300_000, "output_tokens": 1000})  # fmt: skip
    assert long.total == D("1.8") + D("0.0225")
    assert calc.cost(model="gpt-5-mini", provider="openai", service_tier="flex",
                     usage={"input_tokens": 10**6}).total == D("0.125")  # fmt: skip
    assert calc.cost(model="gpt-5-mini", provider="openai", service_tier="priority",
                     usage={"output_tokens": 10**6}).total == D("3.6")  # fmt: skip
    q = calc.cost(model="qwen-flash", provider="dashscope",
                  usage={"input_tokens": 300_000, "output_tokens": 0})  # fmt: skip
    assert q.total == D("0.075")


# -- malformed files: the error names file, entry and field ----------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  - model: x\n    provider: acme\n    input_per_million_tokens: cheap\n",
         ["prices.yaml", "models[0]", "'x'", "input_per_million_tokens", "cheap"]),
        ("models:\n  - model: x\n    provider: acme\n    inptu_per_million_tokens: 1\n",
         ["prices.yaml", "models[0]", "inptu_per_million_tokens", "unknown field"]),
        ("models:\n  - provider: acme\n    input_per_million_tokens: 1\n",
         ["prices.yaml", "models[0]", "'model'", "required"]),
        ("models:\n  - model: x\n    provider: acme\n    input_per_million_tokens: 1\n"
         "    effective_from: last tuesday\n",
         ["prices.yaml", "'x'", "effective_from", "YYYY-MM-DD"]),
        ("models:\n  - model: x\n    input_per_million_tokens: 1\n",
         ["prices.yaml", "'provider'"]),
        ("models:\n  - model: x\n    provider: acme\n    input_per_million_tokens: -1\n",
         ["prices.yaml", "non-negative"]),
        ("patterns:\n  - {regex: 'ft:(', model: acme/x}\n",
         ["prices.yaml", "patterns[0]", "regex"]),
        ("modelz: []\n", ["prices.yaml", "modelz"]),
        ("models: [\n", ["prices.yaml", "YAML"]),
    ],
)  # fmt: skip
def test_malformed_overrides_name_file_entry_and_field(tmp_path, text, expected):
    f = tmp_path / "prices.yaml"
    f.write_text(text)
    with pytest.raises(CatalogError) as e:
        build_catalog(include_mlflow_catalog=False, overrides_file=f)
    for part in expected:
        assert part in str(e.value), str(e.value)


def test_malformed_catalog_and_litellm_files(tmp_path):
    f = tmp_path / "acme.json"
    f.write_text(json.dumps({"models": {"m1": {"pricing": {"output_per_million_tokens": "x"}}}}))
    with pytest.raises(CatalogError, match=r"acme\.json: model 'm1'.*output_per_million_tokens"):
        build_catalog(include_mlflow_catalog=False, catalog_files=[f])
    g = tmp_path / "litellm.json"
    g.write_text(json.dumps({"m2": {"input_cost_per_token": [1]}}))
    with pytest.raises(CatalogError, match=r"litellm\.json: model 'm2'.*input_cost_per_token"):
        build_catalog(include_mlflow_catalog=False, litellm_files=[g])
    g.write_text("{not json")
    with pytest.raises(CatalogError, match=r"litellm\.json: not valid JSON"):
        build_catalog(include_mlflow_catalog=False, litellm_files=[g])
    with pytest.raises(CatalogError, match="not found"):
        build_catalog(include_mlflow_catalog=False, litellm_files=[tmp_path / "missing.json"])


# -- usage normalisation ----------------------------------------------------------------------
def test_mlflow_usage_counts_cache_inside_input():
    u = TokenUsage.from_mlflow(
        '{"input_tokens": 100, "output_tokens": 7, "cache_read_input_tokens": 30,'
        ' "cache_creation_input_tokens": 20, "cache_creation_input_tokens_above_1hr": 5}'
    )
    assert (u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h) == (50, 30, 15, 5)
    assert u.prompt_tokens == 100


def test_inconsistent_usage_is_an_error_not_a_clamp():
    with pytest.raises(UsageError, match="inconsistent"):
        TokenUsage.from_mlflow({"input_tokens": 10, "cache_read_input_tokens": 30})
    with pytest.raises(UsageError, match="must not be negative"):
        TokenUsage.from_mlflow({"input_tokens": -1})
    with pytest.raises(UsageError):
        TokenUsage(output=1, reasoning=2)


def test_anthropic_native_usage_keeps_cache_outside_input():
    u = TokenUsage.from_provider_usage(
        "anthropic",
        {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
         "cache_creation_input_tokens": 40, "cache_creation": {"ephemeral_1h_input_tokens": 15}},
    )  # fmt: skip
    assert (u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h) == (10, 100, 25, 15)


def test_openai_responses_api_usage_shape():
    u = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "input_tokens_details": {"cached_tokens": 400},
        "output_tokens_details": {"reasoning_tokens": 120},
    }
    r = CostCalculator.default(clock=FakeClock()).cost(model="gpt-4o", provider="openai", usage=u)
    assert r.total == D("0.007") and r.usage.reasoning == 120


def test_calculator_from_config_section(tmp_path):
    from mlflow_llmops.config import load_config
    from mlflow_llmops.errors import ConfigError

    prices = tmp_path / "prices.yaml"
    prices.write_text(OVERRIDES)
    cfg_file = tmp_path / "mlflow-llmops.yaml"
    cfg_file.write_text(f"pricing:\n  overrides_file: {prices}\n  lookback: 1m\n")
    cfg = load_config(cfg_file, env={})
    calc = CostCalculator.from_config(cfg.pricing)
    assert calc.match("support-bot").entry_key == "acme/acme-ft-support"
    cfg_file.write_text("pricing:\n  overides_file: x.yaml\n")
    with pytest.raises(ConfigError, match="pricing.overides_file"):
        load_config(cfg_file, env={})
