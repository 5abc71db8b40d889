"""Every trace accounted for: a backfill's failures end as one error Feedback after
``max_attempts``, a claim left by a dead worker on another host is taken over (never
counted as scored), traces that arrive an hour late are scored by their arrival time, and
a job's judge spend is the ledger's, whatever the crashes."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
import sqlalchemy as sa
from scoring_helpers import EPOCH, EPOCH_MS, config_for, make_traces
from test_scoring_backfill import (
    JUDGE_BACKFILL,
    _cli,
    _judge,
    _write_config,
    judge_backfill_setup,
    kill_when_done,
)
from test_scoring_retry import _assessments, _ledger

from mlflow_llmops.scoring import ScorerRegistry, ScorerSpec, backfill, run_due_scorers
from mlflow_llmops.scoring.ledger import Ledger, LedgerKey
from mlflow_llmops.scoring.registry import SCORING_MIGRATIONS, backfill_jobs_table, ledger_table
from mlflow_llmops.statestore.state import StateStore
from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer
from mlflow_llmops.testing.seed import SeedSpan, SeedTrace

WINDOW = {"since_ms": EPOCH_MS, "until_ms": EPOCH_MS + 10**8}


def _ids(mlflow_db) -> list[str]:
    engine = sa.create_engine(mlflow_db.uri)
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(sa.text("SELECT request_id FROM trace_info"))]
    finally:
        engine.dispose()


def test_a_judge_answering_500_ends_in_error_feedbacks_and_retry_errors_replaces_them(
    mlflow_db, store, state_url
):
    n = 8
    mlflow_db.load(make_traces(n))
    cfg = config_for(mlflow_db.uri, state_url, concurrency=4, max_attempts=3,
                     backfill_retry_backoff=0.02,
                     judge={"max_retries": 0, "timeout_s": 10})  # fmt: skip
    from test_scoring_judge import grader

    judge = FakeLLMServer(FakeLLMConfig(responder=grader, error_rate=1.0, error_status=500))
    judge.start()
    _judge(store, judge.base_url)
    first = backfill(cfg, store, scorer="quality", progress=False, **WINDOW)
    calls = sum(r.path.endswith("/chat/completions") for r in judge.requests)
    assert (first.status, first.scored, first.errors, first.job_errors) == ("done", 0, n, n)
    assert first.retried == 2 * n and calls == 3 * n  # three attempts each, in this one run
    assert first.all_failed and f"done with {n} errors" in first.summary()
    ledger = _ledger(store, "quality")
    assert {(s, a) for s, a, _ in ledger.values()} == {("failed", 3)}
    errors = _assessments(mlflow_db.uri, ledger, "quality")
    assert Counter(a.trace_id for a in errors) == {t: 1 for t in ledger}  # one each
    assert all(a.error is not None and "gave up after 3 attempts" in a.error.error_message
               for a in errors)  # fmt: skip

    again = backfill(cfg, store, scorer="quality", progress=False, **WINDOW)
    assert (again.already_done, again.scored, again.errors) == (n, 0, 0)  # nothing new logged
    assert len(_assessments(mlflow_db.uri, ledger, "quality")) == n

    judge.config.error_rate = 0.0  # the judge is back
    try:
        fixed = backfill(cfg, store, scorer="quality", retry_errors=True, progress=False,
                         **WINDOW)  # fmt: skip
    finally:
        judge.stop()
    assert (fixed.scored, fixed.errors, fixed.job_errors, fixed.status) == (n, 0, 0, "done")
    after = _assessments(mlflow_db.uri, ledger, "quality")
    valid = [a for a in after if a.valid is not False]
    assert len(valid) == n and all(a.error is None for a in valid)
    assert {a.overrides for a in valid} == {a.assessment_id for a in errors}  # replaced
    assert {s for s, _, _ in _ledger(store, "quality").values()} == {"done"}


def test_cli_backfill_exits_non_zero_when_every_trace_failed(mlflow_db, store, state_url,
                                                              tmp_path):  # fmt: skip
    from mlflow_llmops.testing.ports import free_port

    mlflow_db.load(make_traces(3))
    _judge(store, f"http://127.0.0.1:{free_port()}/v1", name="broken")  # nothing listens
    cfg = _write_config(tmp_path / "c.yaml", mlflow_db.uri, state_url)
    text = cfg.read_text().replace("completion_buffer: 0", "completion_buffer: 0\n"
                                   "  backfill_retry_backoff: 0.01\n"
                                   "  judge: {max_retries: 0, timeout_s: 5}")  # fmt: skip
    cfg.write_text(text)
    proc = _cli(cfg, "scorers", "backfill", "--scorer", "broken", "--since", "2026-03-01",
                "--until", "2026-03-02", "--no-progress")  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "done with 3 errors" in out


def _claim_as_another_host(state_url: str, ids: list[str], scorer: str) -> None:
    """A worker on another host (its pid cannot be checked from here) claims and dies."""
    other = StateStore(state_url)  # a connection of its own, as another machine would have
    try:
        other.ensure_schema(SCORING_MIGRATIONS)
        ledger = Ledger(other, "other-host.example:4242:deadbeef", lease_ttl_ms=1500)
        now = int(time.time() * 1000)
        claims = ledger.claim_many([(LedgerKey(t, scorer, 1), EPOCH_MS, None) for t in ids],
                                   now_ms=now)  # fmt: skip
        assert {c.kind for c in claims} == {"new"}
    finally:
        other.dispose()


def _foreign_claims(mlflow_db, store, state_url, n: int, claimed: int):  # noqa: ANN202
    """``n`` traces and a ``paris`` scorer; the first ``claimed`` held by a dead foreign
    worker whose claims go stale after 1.5 s. Returns the trace ids and the config."""
    mlflow_db.load(make_traces(n))
    ids = _ids(mlflow_db)
    ScorerRegistry(store).register(ScorerSpec(name="paris", ref="scoring_helpers:mentions_paris"),
                                   now=EPOCH)  # fmt: skip
    _claim_as_another_host(state_url, ids[:claimed], "paris")
    return ids, config_for(mlflow_db.uri, state_url, lease_ttl=1.5)


def test_a_claim_of_a_dead_worker_on_another_host_is_taken_over_by_the_backfill(
    mlflow_db, store, state_url
):
    ids, cfg = _foreign_claims(mlflow_db, store, state_url, 6, 4)
    r = backfill(cfg, store, scorer="paris", progress=False, **WINDOW)
    # the four are not "already scored": they waited for the claim to go stale, then scored
    assert (r.scored, r.skipped, r.held, r.status) == (6, 0, 0, "done")
    ledger = _ledger(store, "paris")
    assert {s for s, _, _ in ledger.values()} == {"done"}
    assert Counter(t for t, name, _ in mlflow_db.assessments() if name == "paris") == {
        t: 1 for t in ids}  # fmt: skip


def test_a_claim_of_a_dead_worker_on_another_host_holds_the_runner_watermark(
    mlflow_db, store, state_url
):
    _, cfg = _foreign_claims(mlflow_db, store, state_url, 5, 2)
    first = run_due_scorers(cfg, store, EPOCH + timedelta(days=1), force=True).scorers[0]
    assert (first.scored, first.held) == (3, 2)
    time.sleep(1.6)  # the other host's claims go stale
    second = run_due_scorers(cfg, store, EPOCH + timedelta(days=1, minutes=5), force=True)
    assert second.scorers[0].scored == 2
    assert {s for s, _, _ in _ledger(store, "paris").values()} == {"done"}
    assert len([1 for _, name, _ in mlflow_db.assessments() if name == "paris"]) == 5


def test_traces_that_arrive_an_hour_late_are_scored(tracing_to, mlflow_db, store, state_url):
    """A store outage: the service spools and writes traces an hour after they started.
    The runner has long passed that time; it finds them by their arrival minute."""
    ScorerRegistry(store).register(ScorerSpec(name="paris", ref="scoring_helpers:mentions_paris"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, completion_buffer=0, initial_lookback=600,
                     late_arrival=900)  # fmt: skip
    now = datetime.now(UTC)
    assert run_due_scorers(cfg, store, now, force=True).scorers[0].scored == 0
    handle = tracing_to(mlflow_db)
    started = time.time_ns() - 3600 * 10**9  # an hour ago
    for i in range(10):
        root = mlflow.start_span_no_context(f"late-{i}", start_time_ns=started + i * 10**6,
                                            inputs={"q": "capital of France?"})  # fmt: skip
        root.set_outputs({"response": "Paris."})
        root.end(end_time_ns=started + i * 10**6 + 5 * 10**6)
    assert handle.flush(60)
    assert handle.stats()["exported"] == 10
    r = run_due_scorers(cfg, store, datetime.now(UTC), force=True).scorers[0]
    assert (r.late, r.scored) == (10, 10), r
    again = run_due_scorers(cfg, store, datetime.now(UTC) + timedelta(minutes=1), force=True)
    assert (again.scorers[0].late, again.scorers[0].scored) == (0, 0)  # each once
    assert len([1 for _, name, _ in mlflow_db.assessments() if name == "paris"]) == 10


@pytest.fixture
def tracing_to():
    from mlflow_state import mlflow_globals_restored

    from mlflow_llmops.tracing import setup_production_tracing

    handles = []

    def make(mlflow_db):
        h = setup_production_tracing("exp", "late-svc", tracking_uri=mlflow_db.uri,
                                     install_signal_handlers=False)  # fmt: skip
        handles.append(h)
        return h

    with mlflow_globals_restored():
        yield make
        for h in handles:
            h.shutdown(10)
        mlflow.tracing.reset()


def _equal_traces(n: int) -> list[SeedTrace]:
    """Traces whose judge prompts all have the same length: every judge call costs the same."""
    return [SeedTrace(timestamp_ms=EPOCH_MS + i * 1000, latency_ms=300,
                      request=f"question {i:04d}", response="Paris is the capital of France.",
                      spans=(SeedSpan(model="gpt-4o-mini", input_tokens=100, output_tokens=20),))
            for i in range(n)]  # fmt: skip


def test_job_spend_is_the_ledger_sum_and_counts_calls_lost_in_a_crash(
    judge_llm,
    mlflow_db,
    store,
    state_url,
    tmp_path,
):
    n, concurrency = 90, 4
    cfg = judge_backfill_setup(judge_llm, mlflow_db, store, state_url, tmp_path,
                               _equal_traces(n))  # fmt: skip
    args = JUDGE_BACKFILL
    for fraction in (4, 2):  # two crashes, then a run to the end
        kill_when_done(store, cfg, args, n // fraction)
    last = _cli(cfg, *args)
    out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err
    t = ledger_table.c
    with store.engine.connect() as c:
        costs = [r[0] for r in c.execute(sa.select(t.cost_usd).where(t.scorer == "quality"))]
        spent = c.execute(sa.select(backfill_jobs_table.c.spent_usd)).scalar_one()
    assert len(costs) == n and all(x and x > 0 for x in costs)
    assert spent == pytest.approx(sum(costs), rel=1e-12)  # the job's spend is the ledger's
    assert f"spent so far ${sum(costs):.4f}" in out
    unit = min(costs)
    paid_calls = round(sum(costs) / unit)
    assert sum(costs) == pytest.approx(paid_calls * unit, rel=1e-9)  # whole calls only
    answered = sum(1 for r in judge_llm.requests if r.path.endswith("/chat/completions"))
    # every answered call is paid, but for those whose answer reached a process as it was
    # killed (at most one per judge thread per kill)
    assert n <= paid_calls <= answered <= paid_calls + 2 * concurrency
    assert Counter(t for t, name, _ in mlflow_db.assessments() if name == "quality") == {
        tid: 1 for tid in _ids(mlflow_db)}  # fmt: skip
    json.dumps(costs)  # plain floats


def test_a_backfill_with_a_run_name_sits_beside_evaluate_runs(mlflow_db, store, state_url):
    from mlflow import MlflowClient

    mlflow_db.load(make_traces(10))
    ids = _ids(mlflow_db)
    ScorerRegistry(store).register(ScorerSpec(name="paris", ref="scoring_helpers:mentions_paris"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url)
    r = backfill(cfg, store, scorer="paris", progress=False, run_name="paris-march", **WINDOW)
    assert r.status == "done" and r.run_id and f"MLflow run {r.run_id}" in r.summary()
    client = MlflowClient(mlflow_db.uri)
    run = client.get_run(r.run_id)
    assert (run.info.run_name, run.info.status) == ("paris-march", "FINISHED")
    assert run.data.metrics["scored"] == 10 and run.data.params["scorer"] == "paris"
    assert run.data.metrics["paris/pass_rate"] == pytest.approx(
        sum("paris" in a.lower() for a in [t.response for t in make_traces(10)]) / 10
    )
    linked = client.search_traces(locations=[mlflow_db.experiment_id], run_id=r.run_id,
                                  max_results=100)  # fmt: skip
    assert {t.info.trace_id for t in linked} == set(ids)
    found = _assessments(mlflow_db.uri, ids, "paris")
    assert len(found) == 10 and {a.run_id for a in found} == {r.run_id}
    again = backfill(cfg, store, scorer="paris", progress=False, run_name="paris-march",
                     **WINDOW)  # fmt: skip
    assert again.run_id == r.run_id  # one run per job


def test_failures_written_while_the_loop_looks_away_are_still_retried(
    mlflow_db, store, state_url, monkeypatch
):
    """The pipeline may finish a batch (all failed) between the loop's feeding and its
    check for pending work; those failures must still be tried again, not left leased."""
    from mlflow_llmops.scoring import backfill_job

    mlflow_db.load(make_traces(6))
    ScorerRegistry(store).register(ScorerSpec(name="broken", ref="scoring_helpers:exploding"),
                                   now=EPOCH)  # fmt: skip
    feed = backfill_job._BackfillLoop._feed

    def feed_then_wait(self, pipe):  # noqa: ANN001, ANN202 - the widest possible window
        feed(self, pipe)
        deadline = time.monotonic() + 30
        while pipe.pending and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(backfill_job._BackfillLoop, "_feed", feed_then_wait)
    cfg = config_for(mlflow_db.uri, state_url, backfill_retry_backoff=0.01)
    r = backfill(cfg, store, scorer="broken", progress=False, **WINDOW)
    assert (r.status, r.errors, r.job_errors, r.retried) == ("done", 6, 6, 12)
