"""Demo step 50: inject a latency spike, an error burst and a cost jump, then run the
monitor cycle by cycle on a fake clock and show that it detects each one (and nothing
else). The alerts go to ``ctx.data["alerts"]`` for the notification step."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

ORDER = 50

EXPERIMENT = "llmops-demo-incidents"


def busy_afternoon(now: datetime) -> datetime:
    """The latest Tuesday-to-Friday 15:00 UTC before ``now``. The synthetic traffic follows
    the time of day (4x fewer requests at night, fewer at weekends, and the day before must
    be a weekday too for the cost baseline): replaying the same busy afternoon makes every
    run of the demo see the same traffic, whatever the hour it runs at."""
    end = now.replace(hour=15, minute=0, second=0, microsecond=0)
    if end > now:
        end -= timedelta(days=1)
    while end.weekday() not in (1, 2, 3, 4):
        end -= timedelta(days=1)
    return end


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from mlflow_llmops.alerting import ConsoleSink, Monitor
    from mlflow_llmops.alerting.model import AlertState
    from mlflow_llmops.clock import FakeClock
    from mlflow_llmops.config import load_config
    from mlflow_llmops.store.state import StateStore
    from mlflow_llmops.testing.seed import Incident, bulk_load, synthetic_traffic

    ctx.banner("Monitor: detect a latency spike, an error burst and a cost jump")
    # Two hours of traffic, and the same two hours the day before (the cost baseline).
    end = busy_afternoon(datetime.now(UTC))
    start = end - timedelta(hours=2)
    m = timedelta(minutes=1)
    incidents = [
        Incident(start + 20 * m, start + 40 * m, "latency", 5.0),
        Incident(start + 55 * m, start + 75 * m, "errors", 0.4),
        Incident(start + 76 * m, start + 120 * m, "cost", 6.0),
    ]
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    engine = sa.create_engine(ctx.tracking_uri)
    t0 = time.perf_counter()
    n = bulk_load(engine, exp_id, synthetic_traffic(start - timedelta(days=1), 2 / 24, 8, seed=11))
    n += bulk_load(
        engine, exp_id, synthetic_traffic(start, 2 / 24, 8, seed=12, incidents=incidents)
    )
    engine.dispose()
    print(f"injected {n} traces into experiment {EXPERIMENT!r} ({time.perf_counter() - t0:.1f}s):")
    for inc in incidents:
        print(f"  {inc.kind:<8} x{inc.factor:<4g} {inc.start:%H:%M}-{inc.end:%H:%M} UTC")

    config = load_config(
        overrides={
            "tracking": {"uri": ctx.tracking_uri},
            "state_store": {"url": ctx.state_url},
            "alerting": {
                "evaluation_interval": "2m",
                "experiment_ids": [exp_id],
                "packs": [
                    {
                        "name": "three-layer",
                        # tuned to this service: 2% of its requests fail on a normal day
                        "overrides": {"llm_error_rate_high": {"threshold": 0.1}},
                        "disable": ["llm_quality_score_low"],
                    }
                ],
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
    print(f"{len(monitor.rules)} rules ({', '.join(r.name for r in monitor.rules)})")
    alerts, first_fired, cycles = [], {}, 0
    t0 = time.perf_counter()
    while clock.now() <= end:
        if monitor.try_lead():
            report = monitor.cycle()
            cycles += 1
            if report.failed_steps:
                print(f"  {report.summary()}")
            for a in report.alerts:
                if a.state == AlertState.FIRING and a.name not in first_fired:
                    first_fired[a.name] = clock.now()
                    alerts.append(a)
                elif a.state == AlertState.RESOLVED:
                    alerts.append(a)
        clock.advance(120)
    print(f"{cycles} monitor cycles over 110 simulated minutes in {time.perf_counter() - t0:.1f}s")
    print(out.getvalue(), end="")
    print("time to detect:")
    expected = {"latency": "llm_latency_p95_high", "errors": "llm_error_rate_high",
                "cost": "llm_cost_spike"}  # fmt: skip
    for inc in incidents:
        rule = expected[inc.kind]
        when = first_fired.get(rule)
        ttd = f"{(when - inc.start).total_seconds() / 60:.0f} min" if when else "NOT DETECTED"
        print(f"  {inc.kind:<8} -> {rule:<24} {ttd}")
    missed = [k for k, r in expected.items() if r not in first_fired]
    if missed:
        raise RuntimeError(f"the monitor missed the {', '.join(missed)} incident(s)")
    ctx.data["alerts"] = alerts
    store.dispose()
