"""Quality aggregates for alerting: pass rate and mean score per scorer per window.

Read from the scoring ledger in the state store (one row per trace, scorer and
version, with its numeric value and pass flag), so alert rules need no scan of
MLflow's assessments. Windows are by the trace's own timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from mlflow_llmops.scoring.registry import SCORING_MIGRATIONS, ledger_table
from mlflow_llmops.statestore.state import StateStore


@dataclass(frozen=True)
class QualityAggregate:
    """One scorer version over one window ``[window_start_ms, window_end_ms)``."""

    scorer: str
    version: int
    window_start_ms: int
    window_end_ms: int
    scored: int  # traces with a numeric value
    judged: int  # traces with a pass/fail verdict
    passed: int
    errors: int  # traces the scorer failed on (last attempt), retried or given up on
    mean_score: float | None

    @property
    def pass_rate(self) -> float | None:
        return None if self.judged == 0 else self.passed / self.judged

    @property
    def error_rate(self) -> float | None:
        total = self.scored + self.errors
        return None if total == 0 else self.errors / total


def quality_aggregates(
    store: StateStore,
    since_ms: int,
    until_ms: int,
    scorer: str | None = None,
    *,
    bucket_ms: int | None = None,
) -> list[QualityAggregate]:
    """Per scorer and version (and per ``bucket_ms`` window if given) over traces with
    ``since_ms <= timestamp < until_ms``: pass rate, mean score, error count."""
    if until_ms <= since_ms:
        raise ValueError(f"until_ms ({until_ms}) must be after since_ms ({since_ms})")
    if bucket_ms is not None and bucket_ms <= 0:
        raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
    store.ensure_schema(SCORING_MIGRATIONS)
    t = ledger_table.c
    width = bucket_ms or (until_ms - since_ms)
    bucket = ((t.trace_timestamp_ms - since_ms) // width).label("bucket")
    done = t.state == "done"
    q = (
        sa.select(
            t.scorer,
            t.version,
            bucket,
            sa.func.sum(sa.case((sa.and_(done, t.value_num.is_not(None)), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(done, t.passed.is_(True)), 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(done, t.passed.is_not(None)), 1), else_=0)),
            sa.func.sum(sa.case((t.state.in_(("error", "failed")), 1), else_=0)),
            sa.func.avg(sa.case((done, t.value_num), else_=None)),
        )
        .where(t.trace_timestamp_ms >= since_ms, t.trace_timestamp_ms < until_ms)
        .group_by(t.scorer, t.version, bucket)
        .order_by(t.scorer, t.version, bucket)
    )
    if scorer is not None:
        q = q.where(t.scorer == scorer)
    out = []
    with store.engine.connect() as conn:
        for name, version, b, scored, passed, known, errors, mean in conn.execute(q):
            start = since_ms + int(b) * width
            out.append(
                QualityAggregate(
                    scorer=name,
                    version=int(version),
                    window_start_ms=start,
                    window_end_ms=min(start + width, until_ms),
                    scored=int(scored or 0),
                    judged=int(known or 0),
                    passed=int(passed or 0),
                    errors=int(errors or 0),
                    mean_score=None if mean is None else float(mean),
                )
            )
    return out
