"""Alerting benchmark: time to detect and false alerts on 14 days of noisy traffic, and the
cost of one evaluation tick of 50 rules over N traces on PostgreSQL.

Part 1 replays 14 days of synthetic production traffic (daily and weekly pattern, noise,
a 2% background error rate) with four incidents (latency, errors, cost, quality) through
the alert engine every minute, with the shipped three-layer pack as is (no threshold
tuned; its informational unpriced-model rule is left out: one synthetic model really has
no price) and, side by side, the naive rules a static-threshold tool gives you (no
``for``, no minimum sample, a static cost threshold instead of a baseline). Goal per
incident: detected within the rule's ``for`` plus one interval, and no false alert in 14
days. "Closest call" is the longest an instance stayed pending outside incidents (it
fires at ``for``). Signals come from the in-memory source (the tests check it agrees with
the SQL one). The scenario is mlflow_llmops/testing/incident_replay.py, shared with
tests/alerting/test_pack_detection.py.

Part 2 bulk-loads N traces (default 1,000,000) into a fresh PostgreSQL MLflow database
and times evaluation ticks of 50 rules over the ``llmops_*`` views.

    python bench/bench_alerting.py [--traces 1000000] [--rate 20] [--ticks 3] [--skip-sql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow_llmops.alerting.engine import AlertEngine  # noqa: E402
from mlflow_llmops.alerting.rules import load_pack, parse_rules  # noqa: E402
from mlflow_llmops.alerting.signals import MemorySignalSource  # noqa: E402
from mlflow_llmops.testing.incident_replay import (  # noqa: E402
    FOURTEEN_DAYS,
    INTERVAL,
    PACK_KIND,
    START,
    events,
    goal_minutes,
    replay,
    score,
)
from mlflow_llmops.testing.seed import synthetic_traffic  # noqa: E402

DAYS = 14
INCIDENTS = FOURTEEN_DAYS
#: the shipped pack, untuned
PACK = {"name": "three-layer", "disable": ["llm_unpriced_usage"]}


def naive_rules(static_cost: float, static_tokens: float) -> list[dict]:
    """What a static-threshold tool offers: fixed thresholds, no ``for``, no minimum
    sample, no recovery threshold, and a fixed cost/token threshold (2x the average)."""
    return [
        {"name": "llm_latency_p95_high", "query": {"signal": "latency_p95", "window": "5m"},
         "threshold": 10000},
        {"name": "llm_error_rate_high", "query": {"signal": "error_rate", "window": "5m"},
         "threshold": 0.1},
        {"name": "llm_cost_spike", "query": {"signal": "cost_usd", "window": "10m"},
         "threshold": static_cost},
        {"name": "llm_token_usage_spike", "query": {"signal": "tokens", "window": "10m"},
         "threshold": static_tokens},
        {"name": "llm_quality_score_low", "query": {"signal": "mean_score", "window": "15m"},
         "op": "<", "threshold": 0.8},
    ]  # fmt: skip


def part1(rate: float) -> None:
    t0 = time.perf_counter()
    evs = events(START, DAYS, rate, INCIDENTS)
    print(f"14 days of traffic: {len(evs):,} traces at ~{rate}/min "
          f"({time.perf_counter() - t0:.0f}s to generate)", flush=True)  # fmt: skip
    source = MemorySignalSource(evs)
    normal = [e for e in evs
              if not any(i.start.timestamp() * 1000 <= e.timestamp_ms < i.end.timestamp() * 1000
                         for i in INCIDENTS.values())]  # fmt: skip
    windows = DAYS * 144  # 10-minute windows
    static_cost = 2 * sum(e.cost_usd or 0 for e in normal) / windows
    static_tokens = 2 * sum(e.total_tokens for e in normal) / windows
    pack = load_pack(PACK)
    naive = {
        r.name: r for r in parse_rules(naive_rules(static_cost, static_tokens), source="bench")
    }
    begin, end = START + timedelta(days=1), START + timedelta(days=DAYS)
    t0 = time.perf_counter()
    ours = replay(pack, source, begin, end, INCIDENTS)
    t_ours = time.perf_counter() - t0
    theirs = replay(list(naive.values()), source, begin, end, INCIDENTS)
    ticks = (DAYS - 1) * 1440
    print(f"replayed {ticks:,} one-minute ticks: the pack {t_ours:.0f}s "
          f"({t_ours / ticks * 1000:.2f} ms per tick, in-memory signals)", flush=True)  # fmt: skip
    ttd_o, false_o = score(ours, pack, INCIDENTS)
    ttd_n, false_n = score(theirs, list(naive.values()), INCIDENTS)
    fmt = lambda v: "missed" if v is None else f"{v:.0f}m"  # noqa: E731
    print(f"\n{'rule (three-layer pack)':<24} {'incident':<8} {'goal':>5} {'TTD pack':>9} "
          f"{'TTD naive':>10} {'false pack':>10} {'false naive':>11} {'closest call':>12}")  # fmt: skip
    for r in pack:
        closest = ours.closest[r.name].total_seconds() / 60
        print(f"{r.name:<24} {PACK_KIND[r.name]:<8} {goal_minutes(r):>4.0f}m "
              f"{fmt(ttd_o[r.name]):>9} {fmt(ttd_n[r.name]):>10} {false_o[r.name]:>10} "
              f"{false_n[r.name]:>11} {closest:>10.0f}m")  # fmt: skip
    total_o, total_n = sum(false_o.values()), sum(false_n.values())
    within = sum(v is not None and v <= goal_minutes(r) for r, v in zip(pack, ttd_o.values(),
                                                                      strict=True))  # fmt: skip
    print(
        f"RESULT false_alerts_14d pack={total_o} naive_static={total_n} "
        f"(goal 0; naive/pack={'inf' if total_o == 0 else f'{total_n / total_o:.1f}'})"
    )
    print(f"RESULT detected_within_goal pack={within}/{len(pack)} "
          f"naive_detected={sum(v is not None for v in ttd_n.values())}/{len(naive)}")  # fmt: skip
    for r in pack:
        o, n = ttd_o[r.name], ttd_n[r.name]
        print(f"RESULT ttd_{r.name}_min pack={'missed' if o is None else f'{o:.0f}'} "
              f"naive={'missed' if n is None else f'{n:.0f}'} goal<={goal_minutes(r):.0f}")  # fmt: skip


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
