from __future__ import annotations

from datetime import timedelta

import pytest
from scoring_helpers import EPOCH

from mlflow_llmops.scoring import ScorerRegistry, ScorerRegistryError, ScorerSpec, parse_duration
from mlflow_llmops.statestore.state import StateStore


def _roundtrip(url: str) -> None:
    reg = ScorerRegistry(StateStore(url))
    spec = reg.register(
        ScorerSpec(name="lat", ref="builtin:latency_budget", params={"max_ms": 800},
                   sample_rate=0.5, filter_string="tags.env = 'prod'", schedule_s=300),
        now=EPOCH,
    )  # fmt: skip
    assert spec.version == 1 and spec.active and spec.kind == "builtin"
    # a second process sees the same registry
    again = ScorerRegistry(StateStore(url)).get("lat")
    assert again == spec
    # update keeps what is not given; a changed sample rate is not a new version
    u = reg.update("lat", now=EPOCH + timedelta(minutes=1), sample_rate=0.25)
    assert (u.version, u.sample_rate, u.filter_string, dict(u.params)) == (
        1, 0.25, "tags.env = 'prod'", {"max_ms": 800})  # fmt: skip
    # changed params: a new version (re-scoring due); same params again: no bump
    u = reg.update("lat", now=EPOCH, params={"max_ms": 500})
    assert u.version == 2 and u.sample_rate == 0.25
    assert reg.update("lat", now=EPOCH, params={"max_ms": 500}).version == 2
    assert reg.update("lat", now=EPOCH, new_version=True).version == 3
    assert reg.update("lat", now=EPOCH, filter_string=None).filter_string is None
    assert not reg.stop("lat", now=EPOCH).active
    assert [s.name for s in reg.list(active_only=True)] == []
    assert reg.start("lat", now=EPOCH).active
    reg.register(ScorerSpec(name="judge1", ref="judge"), now=EPOCH)
    assert [s.name for s in reg.list()] == ["judge1", "lat"]
    reg.delete("lat")
    with pytest.raises(ScorerRegistryError, match="no scorer named 'lat'"):
        reg.get("lat")


def test_registry_sqlite(state_url):
    _roundtrip(state_url)


def test_registry_postgres(pg_url):
    _roundtrip(pg_url)


def test_bad_definitions_say_what_to_fix(state_url):
    reg = ScorerRegistry(StateStore(state_url))
    with pytest.raises(ScorerRegistryError, match="sample_rate must be in"):
        reg.register(ScorerSpec(name="x", ref="builtin:refusal", sample_rate=1.5), now=EPOCH)
    with pytest.raises(ScorerRegistryError, match="ref 'nocolon' must be"):
        reg.register(ScorerSpec(name="x", ref="nocolon"), now=EPOCH)
    with pytest.raises(ScorerRegistryError, match="scorer name"):
        reg.register(ScorerSpec(name="9 bad", ref="judge"), now=EPOCH)
    reg.register(ScorerSpec(name="x", ref="judge"), now=EPOCH)
    with pytest.raises(ScorerRegistryError, match="already registered"):
        reg.register(ScorerSpec(name="x", ref="judge"), now=EPOCH)
    assert reg.list()[0].name == "x"  # nothing lost
    with pytest.raises(ScorerRegistryError, match="not a duration"):
        parse_duration("soon")
    assert parse_duration("5m") == 300 and parse_duration("1h") == 3600
