"""Alerting benchmark: time to detect and false alerts on 14 days of noisy traffic, and the
cost of one evaluation tick of 50 rules over N traces on PostgreSQL.

Part 1 replays 14 days of synthetic production traffic (daily and weekly pattern, noise,
a 2% background error rate) with four incidents (latency, errors, cost, quality) through
the alert engine every minute, with our rules (``for``, minimum samples, recovery
thresholds, baselines) and, side by side, the naive rules a static-threshold tool gives
you (same thresholds, no ``for``, a static cost threshold instead of a baseline). Our
cost/token baselines use the median of the same window over 7 days: "same hour
yesterday" pages every Monday on a weekly pattern. Signals come from the in-memory
source (the tests check it agrees with the SQL one). Time to detect includes the time
the windowed signal needs to cross the threshold, on top of ``for`` + one interval.

Part 2 bulk-loads N traces (default 1,000,000) into a fresh PostgreSQL MLflow database
and times evaluation ticks of 50 rules over the ``llmops_*`` views.

    python bench/bench_alerting.py [--traces 1000000] [--rate 6] [--ticks 3] [--skip-sql]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow_llmops.alerting.engine import AlertEngine  # noqa: E402
from mlflow_llmops.alerting.model import AlertState  # noqa: E402
from mlflow_llmops.alerting.rules import load_pack, parse_rules  # noqa: E402
from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent  # noqa: E402
from mlflow_llmops.testing.seed import Incident, synthetic_traffic  # noqa: E402

START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
DAYS = 14
H, M = timedelta(hours=1), timedelta(minutes=1)
INCIDENTS = {
    "latency": Incident(START + timedelta(days=3) + 14 * H, START + timedelta(days=3, hours=14,
                        minutes=30), "latency", 4.0),
    "errors": Incident(START + timedelta(days=4) + 11 * H, START + timedelta(days=4, hours=11,
                       minutes=20), "errors", 0.4),
    "cost": Incident(START + timedelta(days=8) + 15 * H, START + timedelta(days=8, hours=16),
                     "cost", 4.0),
    "quality": Incident(START + timedelta(days=11) + 11 * H, START + timedelta(days=11, hours=11,
                        minutes=40), "traffic", 1.0),  # scores drop; traffic x1 (a marker)
}  # fmt: skip
INTERVAL = M

OURS = [
    {"name": "latency_p95_high", "query": {"signal": "latency_p95", "window": "5m",
     "min_samples": 20}, "threshold": 10000, "recovery_threshold": 8000, "for": "3m",
     "keep_firing_for": "2m"},
    {"name": "error_rate_high", "query": {"signal": "error_rate", "window": "5m",
     "min_samples": 50}, "threshold": 0.1, "recovery_threshold": 0.05, "for": "2m",
     "keep_firing_for": "2m"},
    {"name": "cost_spike", "type": "baseline", "query": {"signal": "cost_usd", "window": "10m",
     "min_samples": 30}, "median_of_days": 7, "factor": 2, "for": "10m",
     "min_baseline_samples": 30},
    {"name": "tokens_spike", "type": "baseline", "query": {"signal": "tokens", "window": "10m",
     "min_samples": 30}, "median_of_days": 7, "factor": 2, "for": "10m",
     "min_baseline_samples": 30},
    {"name": "quality_low", "query": {"signal": "mean_score", "window": "15m",
     "min_samples": 10}, "op": "<", "threshold": 0.8, "recovery_threshold": 0.85, "for": "10m"},
]  # fmt: skip
KIND = {"latency_p95_high": "latency", "error_rate_high": "errors", "cost_spike": "cost",
        "tokens_spike": "cost", "quality_low": "quality",
        "llm_latency_p95_high": "latency", "llm_error_rate_high": "errors",
        "llm_cost_spike": "cost", "llm_token_usage_spike": "cost",
        "llm_quality_score_low": "quality"}  # fmt: skip
#: The shipped three-layer pack (the guide's windows, ``for`` and "same hour yesterday"
#: baselines) with only its two thresholds tuned to this traffic, as a user would.
PACK = {
    "name": "three-layer",
    "overrides": {
        "llm_latency_p95_high": {"threshold": 10000, "recovery_threshold": 8000},
        "llm_error_rate_high": {"threshold": 0.1, "recovery_threshold": 0.05},
    },
    "disable": ["llm_unpriced_usage"],
}


def naive_rules(static_cost: float, static_tokens: float) -> list[dict]:
    """What a static-threshold tool offers: same thresholds, no ``for``, no minimum sample,
    no recovery threshold, and a fixed cost/token threshold (2x the average)."""
    return [
        {"name": "latency_p95_high", "query": {"signal": "latency_p95", "window": "5m"},
         "threshold": 10000},
        {"name": "error_rate_high", "query": {"signal": "error_rate", "window": "5m"},
         "threshold": 0.1},
        {"name": "cost_spike", "query": {"signal": "cost_usd", "window": "10m"},
         "threshold": static_cost},
        {"name": "tokens_spike", "query": {"signal": "tokens", "window": "10m"},
         "threshold": static_tokens},
        {"name": "quality_low", "query": {"signal": "mean_score", "window": "15m"}, "op": "<",
         "threshold": 0.8},
    ]  # fmt: skip


def price_rates() -> dict[str, tuple[float, float]]:
    from mlflow_llmops.pricing import CostCalculator
    from mlflow_llmops.testing.seed import MODELS

    calc = CostCalculator.default()
    out = {}
    for model, provider, *_ in MODELS:
        r = calc.cost(model=model, provider=provider,
                      usage={"input_tokens": 1_000_000, "output_tokens": 0})  # fmt: skip
        o = calc.cost(model=model, provider=provider,
                      usage={"input_tokens": 0, "output_tokens": 1_000_000})  # fmt: skip
        if r.total is not None and o.total is not None:
            out[model] = (float(r.total) / 1e6, float(o.total) / 1e6)
    return out


def events(rate: float) -> list[TraceEvent]:
    rng = random.Random(5)
    rates = price_rates()
    q = INCIDENTS["quality"]
    out = []
    incidents = [i for k, i in INCIDENTS.items() if k != "quality"]
    for t in synthetic_traffic(START, DAYS, rate, seed=42, incidents=incidents):
        first = t.spans[0]
        inp = sum(s.input_tokens for s in t.spans)
        outp = sum(s.output_tokens for s in t.spans)
        r = rates.get(first.model)
        cost = None if r is None else inp * r[0] + outp * r[1]
        scores = {}
        if rng.random() < 0.3:  # the scorer samples 30% of traces
            bad = q.start.timestamp() * 1000 <= t.timestamp_ms < q.end.timestamp() * 1000
            mu = 0.55 if bad else 0.92
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
                cost_usd=cost,
                scores=scores,
            )
        )
    return out


def replay(rules: list, source: MemorySignalSource) -> dict[str, list[datetime]]:
    """Firing episodes (their start times) per rule, evaluating every minute for 14 days."""
    engine = AlertEngine(rules, source)
    fired: dict[str, list[datetime]] = {r.name: [] for r in rules}
    now = START + timedelta(days=1)  # baselines need a day of history
    end = START + timedelta(days=DAYS)
    while now < end:
        for a in engine.evaluate(now).alerts:
            if a.state == AlertState.FIRING and a.starts_at == now:
                fired[a.rule].append(now)
        now += INTERVAL
    return fired


def score(fired: dict[str, list[datetime]], rules: list) -> tuple[dict, dict]:
    """Time to detect per incident (first episode of a matching rule) and false episodes."""
    ttd: dict[str, float | None] = {}
    false: dict[str, int] = {}
    for r in rules:
        inc = INCIDENTS[KIND[r.name]]
        ok = [t for t in fired[r.name] if inc.start <= t <= inc.end + 30 * M]
        false[r.name] = len(fired[r.name]) - len(ok)
        ttd[r.name] = (ok[0] - inc.start).total_seconds() / 60 if ok else None
    return ttd, false


def part1(rate: float) -> None:
    t0 = time.perf_counter()
    evs = events(rate)
    print(f"14 days of traffic: {len(evs):,} traces at ~{rate}/min "
          f"({time.perf_counter() - t0:.0f}s to generate)", flush=True)  # fmt: skip
    source = MemorySignalSource(evs)
    normal = [e for e in evs
              if not any(i.start.timestamp() * 1000 <= e.timestamp_ms < i.end.timestamp() * 1000
                         for i in INCIDENTS.values())]  # fmt: skip
    windows = DAYS * 144  # 10-minute windows
    static_cost = 2 * sum(e.cost_usd or 0 for e in normal) / windows
    static_tokens = 2 * sum(e.total_tokens for e in normal) / windows
    ours = parse_rules(OURS, source="bench")
    naive = parse_rules(naive_rules(static_cost, static_tokens), source="bench")
    t0 = time.perf_counter()
    ours_fired = replay(ours, source)
    t_ours = time.perf_counter() - t0
    naive_fired = replay(naive, source)
    ticks = (DAYS - 1) * 1440
    print(f"replayed {ticks:,} one-minute ticks: ours {t_ours:.0f}s "
          f"({t_ours / ticks * 1000:.2f} ms per tick, in-memory signals)", flush=True)  # fmt: skip
    ttd_o, false_o = score(ours_fired, ours)
    ttd_n, false_n = score(naive_fired, naive)
    pack = load_pack(PACK)
    ttd_p, false_p = score(replay(pack, source), pack)
    print("\nthe shipped three-layer pack (thresholds tuned, nothing else):")
    for r in pack:
        v = ttd_p[r.name]
        print(f"  {r.name:<24} {KIND[r.name]:<8} TTD {'missed' if v is None else f'{v:.0f}m':>7} "
              f"false {false_p[r.name]}")  # fmt: skip
    print(
        f"RESULT pack_three_layer false_alerts_14d={sum(false_p.values())} "
        f"detected={sum(v is not None for v in ttd_p.values())}/{len(pack)}"
    )
    print(f"\n{'rule':<18} {'incident':<8} {'goal':>6} {'TTD ours':>9} {'TTD naive':>10} "
          f"{'false ours':>10} {'false naive':>11}")  # fmt: skip
    for r in ours:
        goal = (r.for_ + INTERVAL).total_seconds() / 60
        fmt = lambda v: "missed" if v is None else f"{v:.0f}m"  # noqa: E731
        print(f"{r.name:<18} {KIND[r.name]:<8} {goal:>5.0f}m {fmt(ttd_o[r.name]):>9} "
              f"{fmt(ttd_n[r.name]):>10} {false_o[r.name]:>10} {false_n[r.name]:>11}")  # fmt: skip
    total_o, total_n = sum(false_o.values()), sum(false_n.values())
    detected = sum(v is not None for v in ttd_o.values())
    print(
        f"RESULT false_alerts_14d ours={total_o} naive_static={total_n} "
        f"(goal 0; naive/ours={'inf' if total_o == 0 else f'{total_n / total_o:.1f}'})"
    )
    print(
        f"RESULT detected ours={detected}/{len(ours)} naive={sum(v is not None for v in ttd_n.values())}/{len(naive)}"
    )  # noqa: E501
    for r in ours:
        o, n = ttd_o[r.name], ttd_n[r.name]
        goal = (r.for_ + INTERVAL).total_seconds() / 60
        print(f"RESULT ttd_{r.name}_min ours={'missed' if o is None else f'{o:.0f}'} "
              f"naive={'missed' if n is None else f'{n:.0f}'} goal<={goal:.0f}")  # fmt: skip


def fifty_rules() -> list:
    rules = []
    signals = ["error_rate", "latency_p95", "latency_p99", "tokens", "cost_usd",
               "request_count", "unpriced_share", "ttft_p95"]  # fmt: skip
    for sig in signals:
        for group in ((), ("model",), ("route",)):
            for window in ("5m", "1h"):
                if len(rules) >= 46:
                    break
                rules.append({"name": f"{sig}_{'_'.join(group) or 'all'}_{window}",
                              "query": {"signal": sig, "window": window, "group_by": list(group)},
                              "threshold": 1e12})  # fmt: skip
    rules += [
        {"name": "tokens_dod", "type": "baseline", "query": {"signal": "tokens", "window": "1h"}},
        {"name": "cost_dod_model", "type": "baseline",
         "query": {"signal": "cost_usd", "window": "1h", "group_by": ["model"]}},
        {"name": "slo_errors", "type": "burn_rate", "sli": "errors", "objective": 0.99},
        {"name": "slo_latency", "type": "burn_rate", "sli": "latency", "objective": 0.95,
         "latency_threshold_ms": 10000},
    ]  # fmt: skip
    return parse_rules(rules, source="bench")


def part2(n_traces: int, ticks: int) -> None:
    import sqlalchemy as sa
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_llmops.alerting.signals import SqlSignalSource
    from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available

    if not pg_available():
        print("PostgreSQL not reachable: part 2 skipped")
        return
    url = create_database("llmops_bench_alerting")
    engine = None
    try:
        store = SqlAlchemyStore(url, "/tmp/llmops-bench-alerting-artifacts")
        exp_id = store.create_experiment("bench-alerting")
        store.engine.dispose()
        engine = sa.create_engine(url)
        from mlflow_llmops.testing.seed import bulk_load

        rate = n_traces / (DAYS * 1440)
        t0 = time.perf_counter()
        n = bulk_load(engine, exp_id, synthetic_traffic(START, DAYS, rate, seed=9), seed=3)
        with engine.begin() as c:
            c.execute(sa.text("ANALYZE"))
        print(f"\nloaded {n:,} traces into PostgreSQL in {time.perf_counter() - t0:.0f}s",
              flush=True)  # fmt: skip
        rules = fifty_rules()
        first = START + timedelta(days=DAYS - 1, hours=14)
        medians = {}
        # A monitor evaluates every minute: the first tick reads every window in full, the
        # next ones read long (burn-rate) windows from cached hourly buckets and short
        # ones from trace rows cached per minute, plus the newest minutes.
        for cache in (False, True):
            alert_engine = AlertEngine(rules, SqlSignalSource(engine, bucket_cache=cache))
            times = []
            for k in range(ticks + 1):
                now = first + k * INTERVAL
                t0 = time.perf_counter()
                ev = alert_engine.evaluate(now)
                times.append(time.perf_counter() - t0)
                print(f"  bucket cache {'on ' if cache else 'off'} tick at {now:%H:%M}: "
                      f"{times[-1]:.2f}s, {len(ev.errors)} rule errors", flush=True)  # fmt: skip
            medians[cache] = (times[0], statistics.median(times[1:]))
        (_, off), (cold_on, on) = medians[False], medians[True]
        print(f"RESULT tick_50_rules_{n // 1000}k_traces_pg steady median={on:.2f}s "
              f"(first tick {cold_on:.2f}s; without the bucket cache {off:.2f}s, "
              f"ratio {off / on:.1f}x) goal<1s (baseline: none, MLflow has no alerting)")  # fmt: skip
    finally:
        if engine is not None:
            engine.dispose()
        drop_database(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000, help="traces for the SQL tick")
    ap.add_argument("--rate", type=float, default=20.0, help="requests/min in the 14-day replay")
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--skip-sql", action="store_true")
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    if not args.skip_replay:
        part1(args.rate)
    if not args.skip_sql:
        part2(args.traces, args.ticks)


if __name__ == "__main__":
    main()
