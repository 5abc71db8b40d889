"""The three-layer pack, untuned, on noisy traffic: no false alert, and every incident
detected within its rule's ``for`` plus one evaluation interval (the goal of issue 12).

The fast test replays one full day (night and day traffic) after three days of history
(what the pack's 5-day median baselines need), with one incident of each class; the slow
one is the 14-day scenario of bench/bench_alerting.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlflow_llmops.alerting.engine import AlertEngine
from mlflow_llmops.alerting.model import AlertState
from mlflow_llmops.alerting.rules import load_pack, parse_rules
from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
from mlflow_llmops.core.clock import FakeClock, to_ms
from mlflow_llmops.testing.incident_replay import (
    FOURTEEN_DAYS,
    PACK_KIND,
    START,
    at,
    events,
    goal_minutes,
    replay,
    score,
)
from mlflow_llmops.testing.seed import Incident

PACK = {"name": "three-layer", "disable": ["llm_unpriced_usage"]}

#: a Thursday after Monday to Wednesday of history, one incident of each class
ONE_DAY = {
    "latency": Incident(at(3, 9), at(3, 9, 30), "latency", 4.0),
    "errors": Incident(at(3, 11), at(3, 11, 20), "errors", 0.4),
    "cost": Incident(at(3, 14), at(3, 15), "cost", 4.0),
    "quality": Incident(at(3, 17), at(3, 17, 40), "traffic", 1.0),
}


def check(rules, result, incidents) -> None:  # noqa: ANN001
    ttd, false = score(result, rules, incidents)
    assert sorted(PACK_KIND) == sorted(r.name for r in rules)
    assert false == {r.name: 0 for r in rules}, result.fired
    late = {
        r.name: (ttd[r.name], goal_minutes(r))
        for r in rules
        if ttd[r.name] is None or ttd[r.name] > goal_minutes(r)
    }
    assert late == {}, f"(time to detect, goal) in minutes: {late}"


def test_pack_on_a_noisy_day_pages_only_on_incidents_and_within_for_plus_one_interval():
    rules = load_pack(PACK)
    source = MemorySignalSource(events(START, 4, 20.0, ONE_DAY, seed=7))
    check(rules, replay(rules, source, at(3, 0), at(4, 0), ONE_DAY), ONE_DAY)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 400,000 traces, 18,720 evaluations: minutes on a busy machine
def test_pack_on_the_14_day_benchmark_replay():
    rules = load_pack(PACK)
    source = MemorySignalSource(events(START, 14, 20.0, FOURTEEN_DAYS))
    result = replay(rules, source, at(1, 0), at(14, 0), FOURTEEN_DAYS)
    check(rules, result, FOURTEEN_DAYS)


def test_an_unknown_evaluation_does_not_confirm_a_pending_alert():
    """``for`` means true at every evaluation: a window with too few samples between two
    breaching ones sends the instance back to inactive (Prometheus drops a pending alert
    whose series is gone), so two noisy minutes far apart never add up to a page."""
    [rule] = parse_rules(
        [{"name": "errors_high", "query": {"signal": "error_rate", "window": "1m",
          "min_samples": 10}, "threshold": 0.2, "for": "2m"}],
        source="test",
    )  # fmt: skip
    clock, source = FakeClock(), MemorySignalSource()
    engine = AlertEngine([rule], source)

    def minute(requests: int, failing: int) -> list:
        base = to_ms(clock.now())
        source.add(*(TraceEvent(base + i * 100, status="ERROR" if i < failing else "OK")
                     for i in range(requests)))  # fmt: skip
        clock.advance(60)
        return [(i.state, i.active_at) for i in engine.evaluate(clock.now()).instances]

    first = clock.now() + timedelta(minutes=1)
    assert minute(20, 10) == [(AlertState.PENDING, first)]
    assert minute(3, 3) == []  # too few samples: unknown, the pending alert is dropped
    again = clock.now() + timedelta(minutes=1)
    assert minute(20, 10) == [(AlertState.PENDING, again)]  # `for` starts over
    assert minute(20, 10)[0][0] == AlertState.PENDING
    assert minute(20, 10)[0][0] == AlertState.FIRING  # true three times in a row
    # a firing alert is not resolved by an unknown evaluation
    assert minute(3, 0)[0][0] == AlertState.FIRING
