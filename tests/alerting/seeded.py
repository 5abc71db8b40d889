"""Seeded MLflow tracking databases for the alerting tests (bulk-loaded real MLflow rows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from mlflow_llmops.alerting.signals import TraceEvent
from mlflow_llmops.core.clock import to_ms
from mlflow_llmops.testing.seed import Incident, SeedTrace, bulk_load, synthetic_traffic

#: "now" of the seeded scenario: a Tuesday at noon
NOON = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)

INCIDENTS = (
    Incident(NOON - timedelta(minutes=100), NOON - timedelta(minutes=80), "latency", 6.0),
    Incident(NOON - timedelta(minutes=60), NOON - timedelta(minutes=40), "errors", 0.5),
    Incident(NOON - timedelta(minutes=30), NOON, "cost", 4.0),
)


def scenario_traffic(rate_per_min: float = 8.0) -> list[SeedTrace]:
    """Two hours yesterday (the baseline) and two hours today with three incidents."""
    yesterday = synthetic_traffic(NOON - timedelta(days=1, hours=2), 2 / 24, rate_per_min, seed=1)
    today = synthetic_traffic(
        NOON - timedelta(hours=2), 2 / 24, rate_per_min, seed=2, incidents=INCIDENTS
    )
    return [*yesterday, *today]


def init_mlflow_db(url: str, artifact_root: str, experiment: str = "alerts") -> str:
    """Create MLflow's schema (its own store code) and an experiment; return its id."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(url, artifact_root)
    exp_id = store.create_experiment(experiment)
    store.engine.dispose()
    return exp_id


def load(engine, exp_id: str, traces: Iterable[SeedTrace]) -> int:  # noqa: ANN001
    return bulk_load(engine, exp_id, traces, seed=7)


def as_events(traces: Iterable[SeedTrace]) -> list[TraceEvent]:
    """The same traces as the in-memory source sees them (model = first LLM span's)."""
    out = []
    for t in traces:
        first = t.spans[0] if t.spans else None
        labels = {
            k: v
            for k, v in {
                "model": first.model if first else None,
                "route": t.route,
                "task_type": t.task_type,
                "environment": t.environment,
                "tenant": t.tenant,
                "service": t.service,
            }.items()
            if v is not None
        }
        inp = sum(s.input_tokens for s in t.spans)
        outp = sum(s.output_tokens for s in t.spans)
        out.append(
            TraceEvent(
                timestamp_ms=t.timestamp_ms,
                status=t.status,
                latency_ms=float(t.latency_ms),
                labels=labels,
                total_tokens=inp + outp,
                input_tokens=inp,
                output_tokens=outp,
                sample_weight=float(t.sample_weight or 1),
                ttft_ms=first.ttft_ms if first else None,
            )
        )
    return out


def add_scores(url: str, artifact_root: str, since_ms: int, until_ms: int, bad_from_ms: int) -> int:
    """Log ``correctness`` feedback (CODE) on every third trace in [since, until): 0.9 before
    ``bad_from_ms``, 0.3 after; plus one HUMAN thumbs-down per 15 traces. Through MLflow's
    own store API. Returns how many assessments were written."""
    import sqlalchemy as sa
    from mlflow.entities import AssessmentSource, Feedback
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(url, artifact_root)
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT request_id, timestamp_ms FROM trace_info WHERE timestamp_ms >= :a "
                "AND timestamp_ms < :b ORDER BY timestamp_ms"
            ),
            {"a": since_ms, "b": until_ms},
        ).all()
    n = 0
    for i, (trace_id, ts) in enumerate(rows):
        if i % 3 == 0:
            store.create_assessment(
                Feedback(
                    trace_id=trace_id,
                    name="correctness",
                    value=0.3 if ts >= bad_from_ms else 0.9,
                    source=AssessmentSource(source_type="CODE", source_id="correctness@v1"),
                )
            )
            n += 1
        if i % 15 == 0:
            store.create_assessment(
                Feedback(
                    trace_id=trace_id,
                    name="thumbs",
                    value=False,
                    source=AssessmentSource(source_type="HUMAN", source_id="user-1"),
                )
            )
            n += 1
    store.engine.dispose()
    return n


class Seeded:
    def __init__(self, url: str, engine: sa.Engine, exp_id: str, traces: list) -> None:
        self.url, self.engine, self.exp_id, self.traces = url, engine, exp_id, traces


def make_seeded(url: str, root: Path, rate: float = 8.0) -> Seeded:
    exp_id = init_mlflow_db(url, str(root / "artifacts"))
    engine = sa.create_engine(url)
    traces = scenario_traffic(rate)
    load(engine, exp_id, traces)
    add_scores(
        url,
        str(root / "artifacts"),
        to_ms(NOON - timedelta(minutes=40)),
        to_ms(NOON),
        to_ms(NOON - timedelta(minutes=20)),
    )
    return Seeded(url, engine, exp_id, traces)
