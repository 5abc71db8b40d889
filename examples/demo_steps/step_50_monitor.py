"""Demo step 50: inject a latency spike, an error burst and a cost jump, then run the
monitor (the three-layer pack, untuned) cycle by cycle on a fake clock and show that it
detects each one within its bound, ``for`` plus one evaluation interval, and nothing else.
The alerts go to ``ctx.data["alerts"]`` for the notification step."""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime, timedelta

ORDER = 50

EXPERIMENT = "llmops-demo-incidents"
#: requests per minute on average (about 36/min on a weekday afternoon)
RATE = 20
#: the pack's baselines are the median over 5 days and need 3 of them: Monday to Thursday
HISTORY_DAYS = 4
SPAN = timedelta(minutes=90)
INTERVAL = timedelta(minutes=1)
DAY = timedelta(days=1)


def busy_afternoon(now: datetime) -> datetime:
    """The latest Friday 15:00 UTC before ``now``. The synthetic traffic follows the time of
    day and the day of the week (4x fewer requests at night, fewer at weekends): replaying
    the same busy afternoon after four weekdays makes every run of the demo see the same
    traffic, whatever the day and hour it runs at."""
    end = now.replace(hour=15, minute=0, second=0, microsecond=0)
    if end > now:
        end -= timedelta(days=1)
    while end.weekday() != 4:
        end -= timedelta(days=1)
    return end


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from mlflow_llmops.alerting import ConsoleSink
    from mlflow_llmops.alerting.model import AlertState
    from mlflow_llmops.config import load_config
    from mlflow_llmops.core.clock import FakeClock
    from mlflow_llmops.monitor import Monitor
    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.seed import Incident, bulk_load, synthetic_traffic

    ctx.banner("Monitor: detect a latency spike, an error burst, a cost jump, a quality drop")
    # 90 minutes of traffic, and the same 90 minutes on each of the 4 days before: the
    # pack's latency, token and cost baselines are the median of the same window over 5 days.
    end = busy_afternoon(datetime.now(UTC))
    start = end - SPAN
    m = timedelta(minutes=1)
    incidents = [
        Incident(start + 15 * m, start + 30 * m, "latency", 5.0),
        Incident(start + 40 * m, start + 55 * m, "errors", 0.4),
        Incident(start + 60 * m, start + 90 * m, "cost", 6.0),
    ]
    quality = (start + 62 * m, start + 82 * m)  # the scorer's verdicts drop from 0.9 to 0.3
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    engine = sa.create_engine(ctx.tracking_uri)
    t0 = time.perf_counter()
    n = 0
    for day in range(HISTORY_DAYS, 0, -1):
        n += bulk_load(engine, exp_id, synthetic_traffic(start - timedelta(days=day), SPAN / DAY,
                                                         RATE, seed=10 + day))  # fmt: skip
    n += bulk_load(
        engine, exp_id, synthetic_traffic(start, SPAN / DAY, RATE, seed=3, incidents=incidents)
    )
    # scores from 15 minutes before the drop (a score takes ~40 ms to write here)
    scored = score_traces(ctx.tracking_uri, engine, exp_id, quality[0] - 15 * m, end, quality)
    engine.dispose()
    print(f"injected {n} traces into experiment {EXPERIMENT!r}, {scored} scores "
          f"({time.perf_counter() - t0:.1f}s):")  # fmt: skip
    for inc in incidents:
        print(f"  {inc.kind:<8} x{inc.factor:<4g} {inc.start:%H:%M}-{inc.end:%H:%M} UTC")
    print(
        f"  quality  0.3   {quality[0]:%H:%M}-{quality[1]:%H:%M} UTC (correctness score, else 0.9)"
    )

    config = load_config(
        overrides={
            "tracking": {"uri": ctx.tracking_uri},
            "state_store": {"url": ctx.state_url},
            "alerting": {
                "evaluation_interval": f"{INTERVAL.seconds}s",
                "experiment_ids": [exp_id],
                # the pack as shipped; the scores are written above, as a scorer would
                "packs": ["three-layer"],
                "monitor": {"score": False},
                # alerts link to their traces (on the alert's window) and to a runbook
                "notifications": {
                    "mlflow_ui_url": "http://localhost:5000",
                    "runbook_url": "https://runbooks.example/llmops#{alertname}",
                },
            },
        },
        env={},
    )
    clock = FakeClock(start + 10 * m)
    out = io.StringIO()
    store = StateStore(ctx.state_url)
    monitor = Monitor(config, store=store, clock=clock, sink=ConsoleSink(out), holder="demo")
    # one log line per cycle is too much here: the alerts and detection times follow
    logging.getLogger("mlflow_llmops.monitor.cycle").setLevel(logging.WARNING)
    print(f"{len(monitor.rules)} rules ({', '.join(r.name for r in monitor.rules)}), "
          f"every {INTERVAL.seconds // 60} min")  # fmt: skip
    rules = {r.name: r for r in monitor.rules}
    alerts, fired, seen, cycles = [], [], set(), 0
    t0 = time.perf_counter()
    while clock.now() <= end:
        if monitor.try_lead():
            report = monitor.cycle()
            cycles += 1
            # every trace was loaded up front and the first cycle priced them all
            monitor.steps.pop("reprice", None)
            if report.failed_steps:
                print(f"  {report.summary()}")
            for a in report.alerts:
                episode = (a.fingerprint, a.episode)
                if a.state == AlertState.FIRING and episode not in seen:
                    seen.add(episode)
                    fired.append((a.name, clock.now()))
                    alerts.append(a)
                elif a.state == AlertState.RESOLVED:
                    alerts.append(a)
        clock.advance(INTERVAL.seconds)
    print(f"{cycles} monitor cycles over {(end - start) / m - 10:.0f} simulated minutes in "
          f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
    print(out.getvalue(), end="")
    periods = [(i.kind, i.start, i.end) for i in incidents] + [("quality", *quality)]
    check_detection(periods, rules, fired)
    ctx.data["alerts"] = alerts
    store.dispose()


#: the pack's rules for each incident kind; an episode of one of them outside its incident
#: is a false alert. llm_unpriced_usage (info) is a true finding here: one model of the
#: synthetic traffic has no price.
EXPECTED = {"latency": ["llm_latency_p95_high"], "errors": ["llm_error_rate_high"],
            "cost": ["llm_cost_spike", "llm_token_usage_spike"],
            "quality": ["llm_quality_score_low"]}  # fmt: skip


def score_traces(tracking_uri, engine, exp_id, since, until, bad) -> int:  # noqa: ANN001
    """Log a ``correctness`` score (CODE source, as a scorer does) on every third trace
    in [since, until): 0.9, or 0.3 during ``bad``. Through MLflow's own store API."""
    import sqlalchemy as sa
    from mlflow.entities import AssessmentSource, Feedback
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_llmops.core.clock import to_ms

    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT request_id, timestamp_ms FROM trace_info WHERE experiment_id = :e "
                "AND timestamp_ms >= :a AND timestamp_ms < :b ORDER BY timestamp_ms"
            ),
            {"e": int(exp_id), "a": to_ms(since), "b": to_ms(until)},
        ).all()
    store = SqlAlchemyStore(tracking_uri, None)
    source = AssessmentSource(source_type="CODE", source_id="correctness@v1")
    lo, hi = to_ms(bad[0]), to_ms(bad[1])
    for trace_id, ts in rows[::3]:
        value = 0.3 if lo <= ts < hi else 0.9
        store.create_assessment(
            Feedback(trace_id=trace_id, name="correctness", value=value, source=source)
        )
    store.engine.dispose()
    return len(rows[::3])


def check_detection(periods, rules, fired) -> None:  # noqa: ANN001
    """Print each incident's time to detect beside its bound (``for`` + one interval) and
    the false alerts; raise if one is late, missed or false."""
    print("time to detect (bound: the rule's `for` plus one evaluation interval):")
    problems = []
    for kind, begin, finish in periods:
        for name in EXPECTED[kind]:
            bound = (rules[name].for_ + INTERVAL).total_seconds() / 60
            hits = [t for n, t in fired if n == name and begin <= t <= finish]
            if not hits:
                problems.append(f"{name} missed the {kind} incident")
                print(f"  {kind:<8} -> {name:<24} NOT DETECTED (bound {bound:.0f} min)")
                continue
            ttd = (hits[0] - begin).total_seconds() / 60
            if ttd > bound:
                problems.append(f"{name} took {ttd:.0f} min (bound {bound:.0f})")
            verdict = "ok" if ttd <= bound else "LATE"
            print(f"  {kind:<8} -> {name:<24} {ttd:.0f} min (bound {bound:.0f} min) {verdict}")
    false = [
        f"{n} at {t:%H:%M}"
        for n, t in fired
        if n != "llm_unpriced_usage"
        and not any(n in EXPECTED[k] and begin <= t <= finish for k, begin, finish in periods)
    ]
    print(f"false alerts: {len(false)}{' (' + ', '.join(false) + ')' if false else ''}")
    problems += [f"false alert {f}" for f in false]
    if problems:
        raise RuntimeError("; ".join(problems))
