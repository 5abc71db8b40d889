"""Noisy traffic with incidents, replayed through the alert engine minute by minute.

Shared by the alerting benchmark (14 days) and the pack's regression tests (a shorter
replay), so both measure the same thing: false alerts (firing episodes outside the
incident a rule is meant for) and time to detect (from an incident's start to the first
firing episode of a rule meant for it), against the goal ``for`` plus one interval.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mlflow_llmops.alerting.engine import AlertEngine
from mlflow_llmops.alerting.model import AlertState
from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
from mlflow_llmops.testing.seed import MODELS, Incident, synthetic_traffic

#: a Monday
START = datetime(2026, 3, 2, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)
H, M = timedelta(hours=1), timedelta(minutes=1)
#: the scorer's mean score is 0.92 (sd 0.1) normally and this during a quality incident
BAD_SCORE = 0.55


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return START + timedelta(days=day, hours=hour, minutes=minute)


#: the 14-day scenario of the benchmark: one incident of each class on a weekday
FOURTEEN_DAYS: dict[str, Incident] = {
    "latency": Incident(at(3, 14), at(3, 14, 30), "latency", 4.0),
    "errors": Incident(at(4, 11), at(4, 11, 20), "errors", 0.4),
    "cost": Incident(at(8, 15), at(8, 16), "cost", 4.0),
    # scores drop (see BAD_SCORE); traffic x1 only marks the period
    "quality": Incident(at(11, 11), at(11, 11, 40), "traffic", 1.0),
}

#: which incident class each rule of the three-layer pack is meant for
PACK_KIND: dict[str, str] = {
    "llm_latency_p95_high": "latency",
    "llm_error_rate_high": "errors",
    "llm_cost_spike": "cost",
    "llm_token_usage_spike": "cost",
    "llm_quality_score_low": "quality",
}


def price_rates() -> dict[str, tuple[float, float]]:
    """USD per input and output token of each synthetic model (the bundled catalog)."""
    from mlflow_llmops.pricing import CostCalculator

    calc = CostCalculator.default()
    out = {}
    for model, provider, *_ in MODELS:
        i = calc.cost(
            model=model, provider=provider, usage={"input_tokens": 1_000_000, "output_tokens": 0}
        )
        o = calc.cost(
            model=model, provider=provider, usage={"input_tokens": 0, "output_tokens": 1_000_000}
        )
        if i.total is not None and o.total is not None:
            out[model] = (float(i.total) / 1e6, float(o.total) / 1e6)
    return out


def events(
    start: datetime,
    days: float,
    rate: float,
    incidents: Mapping[str, Incident],
    *,
    seed: int = 42,
) -> list[TraceEvent]:
    """Synthetic traffic as the in-memory source sees it: priced, and scored on 30% of the
    traces (mean 0.92, or ``BAD_SCORE`` during the ``quality`` incident)."""
    rng = random.Random(seed + 1)  # the scorer's draws
    rates = price_rates()
    q = incidents.get("quality")
    out = []
    traffic = [i for k, i in incidents.items() if k != "quality"]
    for t in synthetic_traffic(start, days, rate, seed=seed, incidents=traffic):
        first = t.spans[0]
        inp = sum(s.input_tokens for s in t.spans)
        outp = sum(s.output_tokens for s in t.spans)
        r = rates.get(first.model)
        scores = {}
        if rng.random() < 0.3:  # the scorer samples 30% of traces
            bad = q is not None and q.start.timestamp() * 1000 <= t.timestamp_ms < (
                q.end.timestamp() * 1000
            )
            mu = BAD_SCORE if bad else 0.92
            scores["correctness"] = min(1.0, max(0.0, rng.gauss(mu, 0.1)))
        out.append(
            TraceEvent(
                timestamp_ms=t.timestamp_ms,
                status=t.status,
                latency_ms=float(t.latency_ms),
                labels={"model": first.model, "route": t.route or ""},
                total_tokens=inp + outp,
                input_tokens=inp,
                output_tokens=outp,
                cost_usd=None if r is None else inp * r[0] + outp * r[1],
                scores=scores,
            )
        )
    return out


@dataclass
class Replay:
    """Firing episodes (their start times) per rule, and the longest time an instance
    stayed pending outside incidents (how close the noise came to a false alert)."""

    fired: dict[str, list[datetime]]
    closest: dict[str, timedelta]


def replay(
    rules: Sequence,
    source: MemorySignalSource,
    start: datetime,
    end: datetime,
    incidents: Mapping[str, Incident] = {},  # noqa: B006 - read only
    interval: timedelta = INTERVAL,
) -> Replay:
    """Evaluate ``rules`` every ``interval`` from ``start`` to ``end``, as a monitor would."""
    engine = AlertEngine(rules, source)
    fired: dict[str, list[datetime]] = {r.name: [] for r in rules}
    closest: dict[str, timedelta] = {r.name: timedelta(0) for r in rules}
    seen: set[tuple[str, int]] = set()
    now = start
    while now < end:
        ev = engine.evaluate(now)
        for a in ev.alerts:
            if a.state == AlertState.FIRING and (a.fingerprint, a.episode) not in seen:
                seen.add((a.fingerprint, a.episode))
                fired[a.rule].append(now)
        calm = not any(i.start <= now <= i.end + 30 * M for i in incidents.values())
        for inst in ev.pending:
            if calm and inst.active_at is not None:
                closest[inst.rule] = max(closest[inst.rule], now - inst.active_at + interval)
        now += interval
    return Replay(fired, closest)


def score(
    result: Replay,
    rules: Sequence,
    incidents: Mapping[str, Incident],
    kind_of: Mapping[str, str] = PACK_KIND,
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Time to detect in minutes (None: missed) and false episodes, per rule: an episode
    is on time if it starts during its incident or up to 30 minutes after it."""
    ttd: dict[str, float | None] = {}
    false: dict[str, int] = {}
    for r in rules:
        inc = incidents.get(kind_of[r.name])
        times = result.fired[r.name]
        ok = [t for t in times if inc is not None and inc.start <= t <= inc.end + 30 * M]
        false[r.name] = len(times) - len(ok)
        ttd[r.name] = (ok[0] - inc.start).total_seconds() / 60 if ok and inc else None
    return ttd, false


def goal_minutes(rule, interval: timedelta = INTERVAL) -> float:  # noqa: ANN001
    """The time-to-detect goal: the rule's ``for`` plus one evaluation interval."""
    return (rule.for_ + interval).total_seconds() / 60
