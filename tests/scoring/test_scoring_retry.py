"""A scorer that failed is tried again on later runs, up to ``scoring.max_attempts``; then
the failure is logged once on the trace as an MLflow Feedback error."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import scoring_helpers
import sqlalchemy as sa
from mlflow.tracing.client import TracingClient
from scoring_helpers import EPOCH, EPOCH_MS, config_for, make_traces

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.scoring import (
    ScorerRegistry,
    ScorerSpec,
    backfill,
    quality_aggregates,
    run_due_scorers,
)
from mlflow_llmops.scoring.registry import SCORING_MIGRATIONS, ledger_table
from mlflow_llmops.statestore.state import StateStore, schema_versions


@pytest.fixture
def flaky_fails():
    scoring_helpers.FLAKY["fail"] = True
    yield scoring_helpers.FLAKY
    scoring_helpers.FLAKY["fail"] = True


def _ledger(store, scorer: str) -> dict[str, tuple[str, int | None, str | None]]:
    t = ledger_table.c
    with store.engine.connect() as c:
        rows = c.execute(sa.select(t.trace_id, t.state, t.attempts, t.assessment_id)
                         .where(t.scorer == scorer))  # fmt: skip
        return {r.trace_id: (r.state, r.attempts, r.assessment_id) for r in rows}


def _assessments(uri: str, trace_ids, name: str) -> list:
    client = TracingClient(uri)
    return [a for tid in trace_ids for a in client.get_trace_info(tid).assessments
            if a.name == name]  # fmt: skip


def test_transient_error_is_retried_after_the_backoff(mlflow_db, store, state_url, flaky_fails):
    mlflow_db.load(make_traces(5))
    ScorerRegistry(store).register(ScorerSpec(name="flaky", ref="scoring_helpers:flaky"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, retry_backoff=300)
    clock = FakeClock(EPOCH + timedelta(days=1))

    def run():  # noqa: ANN202
        return run_due_scorers(cfg, store, clock.now(), clock=clock, force=True).scorers[0]

    first = run()
    assert (first.scored, first.errors, first.gave_up) == (0, 5, 0)
    assert mlflow_db.assessments() == []  # nothing logged yet: it will be tried again
    assert {s for s, _, _ in _ledger(store, "flaky").values()} == {"error"}
    flaky_fails["fail"] = False  # the upstream recovers
    clock.advance(minutes=1)
    early = run()
    assert (early.retried, early.scored) == (0, 0)  # still within the backoff
    clock.advance(minutes=5)
    report = run_due_scorers(cfg, store, clock.now(), clock=clock, force=True)
    later = report.scorers[0]
    assert (later.retried, later.scored, later.errors) == (5, 5, 0)
    assert (
        "scored 5, errors 0" in report.summary() and "retried 5 earlier errors" in report.summary()
    )
    ledger = _ledger(store, "flaky")
    assert {(s, n) for s, n, _ in ledger.values()} == {("done", 2)}
    found = _assessments(mlflow_db.uri, ledger, "flaky")
    assert len(found) == 5 and all(a.value is True and a.error is None for a in found)
    clock.advance(minutes=10)
    assert run().retried == 0


def test_permanent_error_gives_up_after_max_attempts_with_one_error_feedback(
    mlflow_db, store, state_url, flaky_fails
):
    mlflow_db.load(make_traces(4))
    reg = ScorerRegistry(store)
    reg.register(ScorerSpec(name="broken", ref="scoring_helpers:exploding"), now=EPOCH)
    reg.register(ScorerSpec(name="flaky", ref="scoring_helpers:flaky"), now=EPOCH)
    cfg = config_for(mlflow_db.uri, state_url, retry_backoff=60, max_attempts=3)
    clock = FakeClock(EPOCH + timedelta(days=1))
    runs = []
    for _ in range(5):
        r = run_due_scorers(cfg, store, clock.now(), clock=clock, force=True)
        runs.append({s.scorer: s for s in r.scorers})
        clock.advance(minutes=2)
    broken = [r["broken"] for r in runs]
    assert [(s.retried, s.errors, s.gave_up) for s in broken] == [
        (0, 4, 0), (4, 4, 0), (4, 4, 4), (0, 0, 0), (0, 0, 0)]  # fmt: skip
    ledger = _ledger(store, "broken")
    assert {(s, n) for s, n, _ in ledger.values()} == {("failed", 3)}
    found = _assessments(mlflow_db.uri, ledger, "broken")
    assert Counter(a.trace_id for a in found) == {t: 1 for t in ledger}  # one, not three
    for a in found:
        assert a.value is None and a.error.error_code == "ValueError"
        assert (
            "boom" in a.error.error_message and "gave up after 3 attempts" in a.error.error_message
        )
        assert a.source.source_id == "broken@v1"
        assert a.metadata["llmops.scorer_version"] == "1" and a.metadata["llmops.attempts"] == "3"
        assert ledger[a.trace_id][2] == a.assessment_id
    agg = quality_aggregates(store, EPOCH_MS, EPOCH_MS + 10**8, "broken")[0]
    assert (agg.errors, agg.scored) == (4, 0)

    # the flaky one gave up too; an explicit --retry-errors after the fix replaces the logged
    # error with the real result (the error Feedback is marked invalid, not duplicated)
    assert {(s, n) for s, n, _ in _ledger(store, "flaky").values()} == {("failed", 3)}
    flaky_errors = _assessments(mlflow_db.uri, ledger, "flaky")
    assert len(flaky_errors) == 4 and all(a.error is not None for a in flaky_errors)
    flaky_fails["fail"] = False
    b = backfill(cfg, store, scorer="flaky", retry_errors=True, progress=False, clock=clock)
    assert (b.scored, b.errors, b.skipped) == (4, 0, 0)
    after = _assessments(mlflow_db.uri, ledger, "flaky")
    assert len(after) == 8
    valid = [a for a in after if a.valid is not False]
    assert len(valid) == 4 and all(a.value is True and a.error is None for a in valid)
    assert {a.overrides for a in valid} == {a.assessment_id for a in flaky_errors}
    assert {s for s, _, _ in _ledger(store, "flaky").values()} == {"done"}


def test_a_backfill_retries_a_trace_the_runner_failed_on(mlflow_db, store, state_url, flaky_fails):
    mlflow_db.load(make_traces(3))
    ScorerRegistry(store).register(ScorerSpec(name="flaky", ref="scoring_helpers:flaky"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url)
    assert run_due_scorers(cfg, store, EPOCH + timedelta(days=1)).errors == 3
    flaky_fails["fail"] = False
    r = backfill(cfg, store, scorer="flaky", progress=False)
    assert (r.scored, r.skipped, r.errors) == (3, 0, 0)
    assert len(mlflow_db.assessments()) == 3


def test_schema_v1_ledger_gains_the_attempts_column(tmp_path):
    """A state store created before retries existed is upgraded in place."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = StateStore(url)
    try:
        old = sa.MetaData()
        sa.Table(
            ledger_table.name, old,
            *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
              for c in ledger_table.columns if c.name != "attempts"),
        )  # fmt: skip
        with store.engine.begin() as c:
            old.create_all(c)
            c.execute(ledger_table.insert().values(
                trace_id="tr-1", scorer="s", version=1, state="error", holder="h",
                claimed_ms=1, trace_timestamp_ms=1, error="429"))  # fmt: skip
            c.execute(schema_versions.insert().values(component="scoring", version=1,
                                                      applied_at=EPOCH))  # fmt: skip
        fresh = StateStore(url)
        fresh.ensure_schema(SCORING_MIGRATIONS)
        assert fresh.schema_version("scoring") == 3
        cols = {c["name"] for c in sa.inspect(fresh.engine).get_columns(ledger_table.name)}
        assert "attempts" in cols
        indexes = {i["name"] for i in sa.inspect(fresh.engine).get_indexes(ledger_table.name)}
        assert "ix_llmops_scoring_ledger_job" in indexes  # version 3: spend by job
        from mlflow_llmops.scoring.ledger import Ledger

        assert Ledger(fresh, "me", lease_ttl_ms=1000, max_attempts=2).retry_due(
            "s", 1, before_ms=10, limit=10) == ["tr-1"]  # fmt: skip
        fresh.dispose()
    finally:
        store.dispose()
