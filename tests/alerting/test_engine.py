"""The engine's state machine with a fake clock and an in-memory signal source."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlflow_llmops.alerting.engine import AlertEngine, replay
from mlflow_llmops.alerting.model import AlertState
from mlflow_llmops.alerting.rules import parse_rules
from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
from mlflow_llmops.core.clock import FakeClock, to_ms
from mlflow_llmops.statestore.state import StateStore


def rule(**kw):
    base = {
        "name": "errors_high",
        "query": {"signal": "error_rate", "window": "1m"},
        "threshold": 0.1,
        "for": "2m",
    }
    base.update(kw)
    return parse_rules([base], source="test")[0]


class Traffic:
    """One request per second with a chosen error share, written as the clock moves."""

    def __init__(self, clock: FakeClock, source: MemorySignalSource) -> None:
        self.clock, self.source = clock, source

    def run(self, seconds: int, error_every: int = 0, model: str = "m1") -> None:
        for _ in range(seconds):
            t = self.clock.advance(1)
            ms = to_ms(t) - 1
            bad = error_every and (ms // 1000) % error_every == 0
            self.source.add(
                TraceEvent(ms, status="ERROR" if bad else "OK", labels={"model": model})
            )


@pytest.fixture
def setup():
    clock = FakeClock()
    source = MemorySignalSource()
    return clock, source, Traffic(clock, source)


def states(ev):
    return [(i.labels.get("model", ""), i.state) for i in ev.instances]


def test_pending_until_for_then_firing_then_resolved(setup):
    clock, source, traffic = setup
    eng = AlertEngine([rule()], source)
    traffic.run(120)
    assert eng.evaluate(clock.now()).instances == []
    traffic.run(60, error_every=2)  # 50% errors
    ev = eng.evaluate(clock.now())
    assert [i.state for i in ev.instances] == [AlertState.PENDING] and ev.alerts == []
    traffic.run(60, error_every=2)
    ev = eng.evaluate(clock.now())
    assert [i.state for i in ev.instances] == [AlertState.PENDING]  # 1m of 2m
    traffic.run(60, error_every=2)
    ev = eng.evaluate(clock.now())
    assert [a.state for a in ev.alerts] == [AlertState.FIRING]
    assert ev.alerts[0].episode == 1 and ev.alerts[0].value == pytest.approx(0.5, abs=0.02)
    assert ev.alerts[0].labels == {"alertname": "errors_high", "severity": "warning"}
    traffic.run(60)
    ev = eng.evaluate(clock.now())
    assert [a.state for a in ev.alerts] == [AlertState.RESOLVED]
    assert ev.alerts[0].ends_at == clock.now()
    traffic.run(60)
    assert eng.evaluate(clock.now()).alerts == []  # resolved is sent once


def test_pending_that_clears_sends_nothing(setup):
    clock, source, traffic = setup
    eng = AlertEngine([rule()], source)
    traffic.run(60, error_every=2)
    assert [i.state for i in eng.evaluate(clock.now()).instances] == [AlertState.PENDING]
    traffic.run(60)
    ev = eng.evaluate(clock.now())
    assert ev.alerts == [] and ev.instances == []
    # the next breach starts ``for`` afresh
    traffic.run(60, error_every=2)
    ev = eng.evaluate(clock.now())
    assert [i.state for i in ev.instances] == [AlertState.PENDING]
    traffic.run(60, error_every=2)
    assert [i.state for i in eng.evaluate(clock.now()).instances] == [AlertState.PENDING]


def test_keep_firing_for_and_rebreach_is_new_episode(setup):
    clock, source, traffic = setup
    eng = AlertEngine([rule(**{"for": "0s", "keep_firing_for": "3m"})], source)
    traffic.run(60, error_every=2)
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.FIRING
    for _ in range(2):  # condition gone for 1m, 2m: still firing
        traffic.run(60)
        ev = eng.evaluate(clock.now())
        assert [a.state for a in ev.alerts] == [AlertState.FIRING]
    traffic.run(60, error_every=2)  # flaps back: keeps firing, same episode
    ev = eng.evaluate(clock.now())
    assert [(a.state, a.episode) for a in ev.alerts] == [(AlertState.FIRING, 1)]
    # as Prometheus: keep_firing_for counts from the first evaluation that found the
    # condition gone, so three false minutes (0, 1m, 2m of grace) still fire
    for _ in range(3):
        traffic.run(60)
        ev = eng.evaluate(clock.now())
        assert [(a.state, a.episode) for a in ev.alerts] == [(AlertState.FIRING, 1)]
    traffic.run(60)
    ev = eng.evaluate(clock.now())
    assert [(a.state, a.episode) for a in ev.alerts] == [(AlertState.RESOLVED, 1)]
    traffic.run(60, error_every=2)
    ev = eng.evaluate(clock.now())
    assert [(a.state, a.episode) for a in ev.alerts] == [(AlertState.FIRING, 2)]


def test_recovery_threshold_hysteresis(setup):
    clock, source, traffic = setup
    r = rule(**{"for": "0s", "threshold": 0.3, "recovery_threshold": 0.1})
    eng = AlertEngine([r], source)
    traffic.run(60, error_every=2)  # 50%
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.FIRING
    traffic.run(60, error_every=5)  # 20%: under threshold, above recovery
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.FIRING
    traffic.run(60, error_every=20)  # 5%: recovered
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.RESOLVED


def test_evaluation_error_never_resolves(setup):
    clock, source, traffic = setup
    eng = AlertEngine([rule(**{"for": "0s"})], source)
    traffic.run(60, error_every=2)
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.FIRING
    source.fail = RuntimeError("database is down")
    for _ in range(3):
        traffic.run(60)
        ev = eng.evaluate(clock.now())
        assert ev.errors == {"errors_high": "RuntimeError: database is down"}
        assert [a.state for a in ev.alerts] == [AlertState.FIRING]
    source.fail = None
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.RESOLVED


def test_on_error_alerting_and_no_data_policies(setup):
    clock, source, traffic = setup
    rules = [
        rule(name="err_policy", on_error="alerting", **{"for": "0s"}),
        rule(name="nodata", no_data="alerting", **{"for": "1m"}),
    ]
    eng = AlertEngine(rules, source)
    clock.advance(60)
    ev = eng.evaluate(clock.now())
    assert [(i.rule, i.labels["reason"], i.state) for i in ev.instances] == [
        ("nodata", "no_data", AlertState.PENDING)
    ]
    source.fail = RuntimeError("boom")
    clock.advance(60)
    ev = eng.evaluate(clock.now())
    got = {(a.rule, a.labels["reason"]) for a in ev.alerts}
    assert got == {("err_policy", "evaluation_error")}  # nodata kept its state (error)
    source.fail = None
    clock.advance(60)
    ev = eng.evaluate(clock.now())
    assert {(a.rule, a.labels["reason"], a.state) for a in ev.alerts} == {
        ("err_policy", "evaluation_error", AlertState.RESOLVED),
        ("nodata", "no_data", AlertState.FIRING),
    }


def test_group_by_instances_are_independent(setup):
    clock, source, traffic = setup
    r = rule(query={"signal": "error_rate", "window": "1m", "group_by": ["model"]}, **{"for": "0s"})
    eng = AlertEngine([r], source)
    traffic.run(60, error_every=2, model="bad")
    traffic.run(60, model="good")
    clock.set(clock.now() - timedelta(seconds=60))
    ev = eng.evaluate(clock.now())
    assert [a.labels["model"] for a in ev.alerts] == ["bad"]


def test_restart_from_store_neither_repages_nor_resets_for(setup, state_url):
    clock, source, traffic = setup
    store = StateStore(state_url)
    r = rule(**{"for": "2m"})
    traffic.run(60, error_every=2)
    ev = AlertEngine([r], source, store).evaluate(clock.now())
    assert [i.state for i in ev.instances] == [AlertState.PENDING]
    # a new process (new engine, new store handle) continues the same ``for``
    traffic.run(120, error_every=2)
    ev = AlertEngine([r], source, StateStore(state_url)).evaluate(clock.now())
    assert [(a.state, a.episode) for a in ev.alerts] == [(AlertState.FIRING, 1)]
    fired_at = ev.alerts[0].starts_at
    traffic.run(60, error_every=2)
    ev = AlertEngine([r], source, StateStore(state_url)).evaluate(clock.now())
    assert [(a.state, a.episode, a.starts_at) for a in ev.alerts] == [
        (AlertState.FIRING, 1, fired_at)
    ]


def test_dry_run_does_not_touch_the_store(setup, state_url):
    clock, source, traffic = setup
    store = StateStore(state_url)
    traffic.run(60, error_every=2)
    ev = AlertEngine([rule(**{"for": "0s"})], source, store, persist=False).evaluate(clock.now())
    assert len(ev.alerts) == 1
    assert AlertEngine([rule()], source, store).instances() == []


def test_replay_reconstructs_pending_and_firing(setup):
    clock, source, traffic = setup
    traffic.run(600)
    start = clock.now()
    traffic.run(300, error_every=2)
    r = rule()
    assert replay([r], source, start + timedelta(seconds=60), timedelta(minutes=1)).pending
    ev = replay([r], source, start + timedelta(seconds=300), timedelta(minutes=1))
    assert [i.state for i in ev.instances] == [AlertState.FIRING]
    assert ev.alerts[0].starts_at == start + timedelta(seconds=180)  # active 1m in, + for 2m


def test_too_few_samples_neither_fires_nor_resolves(setup):
    clock, source, traffic = setup
    r = rule(query={"signal": "error_rate", "window": "1m", "min_samples": 30}, **{"for": "0s"})
    eng = AlertEngine([r], source)
    for i in range(20):  # 20 requests, all failing: not enough to judge
        source.add(TraceEvent(to_ms(clock.now()) + i, status="ERROR"))
    clock.advance(60)
    assert eng.evaluate(clock.now()).instances == []
    traffic.run(60, error_every=2)
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.FIRING
    for i in range(5):  # traffic drops to a trickle of successes: still firing
        source.add(TraceEvent(to_ms(clock.now()) + i))
    clock.advance(60)
    ev = eng.evaluate(clock.now())
    assert [a.state for a in ev.alerts] == [AlertState.FIRING] and ev.alerts[0].value == 0.0
    traffic.run(60)
    assert eng.evaluate(clock.now()).alerts[0].state == AlertState.RESOLVED


def test_firing_baseline_alert_stays_firing_when_the_baseline_becomes_insufficient(setup):
    """An insufficient baseline is unknown, like too few samples: it never resolves."""
    clock, source, traffic = setup
    [r] = parse_rules(
        [{"name": "traffic_spike", "type": "baseline", "query": {"signal": "request_count",
          "window": "1m"}, "offset": "10m", "factor": 2, "min_baseline_samples": 30}],
        source="test",
    )  # fmt: skip
    eng = AlertEngine([r], source)
    traffic.run(600)  # the baseline: one request per second
    for i in range(180):  # now three per second
        ms = to_ms(clock.now()) + i * 1000
        source.add(*(TraceEvent(ms + k) for k in range(3)))
    clock.advance(180)
    ev = eng.evaluate(clock.now())
    assert [a.state for a in ev.alerts] == [AlertState.FIRING]
    assert ev.alerts[0].baseline == 60
    # later, ten minutes before now there was no traffic at all: nothing to compare with
    clock.advance(820)
    for i in range(60):
        source.add(*(TraceEvent(to_ms(clock.now()) - 60_000 + i * 1000 + k) for k in range(3)))
    ev = eng.evaluate(clock.now())
    assert [a.state for a in ev.alerts] == [AlertState.FIRING]
    assert ev.instances[0].annotations["note"] == "insufficient baseline"
