"""The scalar path's caches and fast constructors: same answers as the slow path,
bounded, and never stale when the catalog or the date changes."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CostCalculator, TokenUsage
from mlflow_llmops.pricing import calculator as calc_mod
from mlflow_llmops.pricing.calculator import CostResult, _day_ordinal, _to_day
from mlflow_llmops.pricing.catalog import PriceCatalog, PriceEntry, Rates
from mlflow_llmops.pricing.usage import coerce_usage

D = Decimal
MILLION = D(1_000_000)


def _catalog(input_usd: str, *, dated: bool = False) -> PriceCatalog:
    rates = Rates(input=D(input_usd) / MILLION, output=D(input_usd) * 4 / MILLION)
    entries = [PriceEntry("acme", "m1", rates, source="test")]
    if dated:
        entries.append(
            PriceEntry(
                "acme", "m1", Rates(input=D(1) / MILLION), effective_from=date(2026, 6, 1),
                source="test", priority=3,
            )
        )  # fmt: skip
    return PriceCatalog(entries, sources=[("test", f"{input_usd}{dated}")])


def test_a_new_catalog_is_used_at_once_not_the_cached_prices():
    calc = CostCalculator(_catalog("2"), clock=FakeClock())
    u = {"input_tokens": 1_000_000}
    assert calc.cost(model="m1", provider="acme", usage=u).total == D(2)
    calc.catalog = _catalog("3")
    r = calc.cost(model="m1", provider="acme", usage=u)
    assert r.total == D(3) and r.catalog_version == calc.catalog_version
    calc.catalog = _catalog("3", dated=True)
    assert calc.cost(model="m1", provider="acme", usage=u, at=date(2026, 5, 31)).total == D(3)
    assert calc.cost(model="m1", provider="acme", usage=u, at=date(2026, 6, 1)).total == D(1)


def test_dated_prices_follow_the_day_of_each_call():
    calc = CostCalculator(_catalog("2", dated=True), clock=FakeClock(datetime(2026, 5, 31, 23)))
    u = {"input_tokens": 1_000_000}
    assert calc.cost(model="m1", provider="acme", usage=u).total == D(2)  # the clock's day
    calc.clock.advance(hours=1)
    assert calc.cost(model="m1", provider="acme", usage=u).total == D(1)
    last_ms_of_may = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000) - 1
    assert calc.cost(model="m1", provider="acme", usage=u, at=last_ms_of_may).total == D(2)
    assert calc.cost(model="m1", provider="acme", usage=u, at=last_ms_of_may + 1).total == D(1)


def test_caches_stay_bounded(monkeypatch):
    monkeypatch.setattr(calc_mod, "_MAX_PLANS", 5)
    monkeypatch.setattr(calc_mod, "_MAX_DAYS_PER_PLAN", 3)
    calc = CostCalculator(_catalog("2", dated=True), clock=FakeClock())
    for i in range(50):
        r = calc.cost(model=f"m{i}", provider="acme", usage={"input_tokens": 1}, at=i * 86_400_000)
        assert r.status == ("priced" if i == 1 else "unpriced")
    assert len(calc._plans) <= 5
    for day in range(50):
        calc.cost(model="m1", provider="acme", usage={"input_tokens": 1}, at=day * 86_400_000)
    assert all(len(p.days) <= 3 for p in calc._plans.values())


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=-(10**12), max_value=253_402_300_799_999),
        st.integers(min_value=0, max_value=10**6).map(lambda d: d * 86_400_000 + 86_399_999),
        st.integers(min_value=0, max_value=10**6).map(lambda d: d * 86_400_000),
    )
)
def test_day_of_epoch_ms_is_the_same_day_as_through_datetime(ms):
    clock = FakeClock()
    assert _day_ordinal(ms, clock) == _to_day(ms, clock).toordinal()


def test_fast_constructed_values_are_ordinary_frozen_instances():
    calc = CostCalculator.default(clock=FakeClock())
    u = coerce_usage({"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 200})
    assert type(u) is TokenUsage and u == TokenUsage(input=1000, cache_read=200, output=300)
    assert hash(u) == hash(TokenUsage(input=1000, cache_read=200, output=300))
    r = calc.cost(model="gpt-4o-mini", provider="openai", usage=u)
    assert type(r) is CostResult
    assert r == CostResult(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)})
    for obj, name in ((u, "input"), (r, "total")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)
    assert pickle.loads(pickle.dumps(r)) == r
    assert dataclasses.replace(u, output=1).output == 1
