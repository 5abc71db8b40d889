"""Batched scoring writes: assessments in one MLflow transaction per batch (and the same rows
as ``log_assessment``), ledger claims and confirmations in one statement per batch, and the
scorer threads kept apart from the single writer thread. Idempotent after a crash between a
batch's MLflow write and its ledger confirmation."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentSource, Feedback
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE
from mlflow.tracing.client import TracingClient
from scoring_helpers import EPOCH, EPOCH_MS, MlflowDb, config_for, make_traces

from mlflow_llmops.core.clock import FakeClock, SystemClock
from mlflow_llmops.scoring import ScorerRegistry, ScorerSpec, backfill, mlflow_io, run_due_scorers
from mlflow_llmops.scoring.backfill_job import BackfillJob
from mlflow_llmops.scoring.ledger import Confirmation, Ledger, LedgerKey
from mlflow_llmops.scoring.mlflow_io import AssessmentWriter, load_traces
from mlflow_llmops.scoring.pipeline import ScoringPipeline
from mlflow_llmops.scoring.registry import SCORING_MIGRATIONS, ledger_table
from mlflow_llmops.scoring.resolver import ResolvedScorer, ScoreOutput
from mlflow_llmops.scoring.runner import TraceScorer
from mlflow_llmops.statestore.state import StateStore


def _ids(db) -> list[str]:
    return [t.info.trace_id for t in TracingClient(db.uri).search_traces(
        locations=[db.experiment_id], include_spans=False, order_by=["timestamp_ms ASC"], max_results=1000)]  # fmt: skip


def _rows(uri: str, name: str) -> list[dict]:
    engine = sa.create_engine(uri)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT * FROM assessments WHERE name = :n ORDER BY trace_id"),
                             {"n": name}).mappings().all()  # fmt: skip
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def _feedback(name: str, value, **kw) -> Feedback:  # noqa: ANN001
    meta = {"llmops.scorer": "judge", "llmops.scorer_version": "1", "llmops.judge.relevance": "0.5"}
    return Feedback(name=name, value=value, rationale="because", metadata=meta,
                    source=AssessmentSource("LLM_JUDGE", f"{name}@v1"), **kw)  # fmt: skip


def test_a_batch_writes_the_same_rows_as_log_assessment(mlflow_db):
    """The guard of the batch path: if MLflow changes what create_assessment stores, this
    fails on the upgrade instead of the batch path drifting silently."""
    mlflow_db.load(make_traces(4))
    ids = _ids(mlflow_db)
    client = TracingClient(mlflow_db.uri)
    writer = AssessmentWriter(client)
    assert writer.batched
    values = [True, 0.75, "yes", {"k": [1, 2]}]
    batch = writer.log_many(
        [(t, _feedback("viabatch", v)) for t, v in zip(ids, values, strict=True)]
    )
    one = [
        client.log_assessment(t, _feedback("viaone", v)) for t, v in zip(ids, values, strict=True)
    ]
    assert writer.batches == 1 and writer.fallbacks == 0
    skip = {"assessment_id", "name", "created_timestamp", "last_updated_timestamp", "source_id"}
    got, want = _rows(mlflow_db.uri, "viabatch"), _rows(mlflow_db.uri, "viaone")
    assert len(got) == len(want) == 4
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in skip} == {
            k: v for k, v in w.items() if k not in skip
        }
    for b, o in zip(batch, one, strict=True):
        assert b.trace_id == o.trace_id and b.value == o.value and b.metadata == o.metadata
        assert b.rationale == o.rationale and b.source.source_type == o.source.source_type
    # read back through MLflow: each trace carries both, valid, equal values
    for t, v in zip(ids, values, strict=True):
        by_name = {a.name: a for a in client.get_trace_info(t).assessments}
        assert by_name["viabatch"].value == by_name["viaone"].value == v
        assert by_name["viabatch"].valid is not False


def test_rows_are_built_by_mlflows_own_mapping_without_the_orm(mlflow_db):
    """The batch path runs ``SqlAssessments.from_mlflow_entity`` on a plain row class: the
    same column values as the ORM object, for values, errors, metadata and overrides."""
    from mlflow.entities import AssessmentError
    from mlflow.store.tracking.dbmodels.models import SqlAssessments

    to_row = mlflow_io._sql_store_parts(TracingClient(mlflow_db.uri).store)["to_row"]
    assert to_row is not SqlAssessments.from_mlflow_entity  # the fast path, not the fallback
    err = AssessmentError(error_code="E", error_message="judge down")
    entities = [_feedback("v", 0.5), _feedback("v", {"k": [1]}),
                Feedback(name="e", error=err, source=AssessmentSource("CODE", "x"),
                         metadata={"llmops.attempts": "3"})]  # fmt: skip
    entities[1].overrides = "a-earlier"
    columns = [p.key for p in sa.inspect(SqlAssessments).column_attrs]
    for a in entities:
        a.trace_id, a.assessment_id = "tr-1", f"a-{uuid.uuid4().hex}"
        a.create_time_ms = a.last_update_time_ms = EPOCH_MS
        plain, orm = to_row(a), SqlAssessments.from_mlflow_entity(a)
        assert not isinstance(plain, SqlAssessments)
        assert {c: getattr(plain, c) for c in columns} == {c: getattr(orm, c) for c in columns}


@pytest.fixture(params=["sqlite", "postgres"])
def tracking_db(request, tmp_path, template_db) -> MlflowDb:
    """An MLflow store on SQLite, or a fresh experiment in the PostgreSQL store of the
    session's ``mlflow server`` (read and written in this process, as a backfill does)."""
    if request.param == "sqlite":
        return request.getfixturevalue("mlflow_db")
    from mlflow import MlflowClient

    url = request.getfixturevalue("mlflow_server_pg").database_url
    exp_id = MlflowClient(url).create_experiment(f"readers-{uuid.uuid4().hex[:8]}")
    # a shared database: trace ids of its own (the loader derives them from the seed)
    return MlflowDb(url, exp_id, tmp_path, seed=uuid.uuid4().int % 2**31)


def _exp_ids(db: MlflowDb) -> list[str]:
    return [t.info.trace_id for t in TracingClient(db.uri).search_traces(
        locations=[db.experiment_id], include_spans=False, order_by=["timestamp_ms ASC"])]  # fmt: skip


def test_bulk_written_assessments_read_back_as_log_feedback_ones(tracking_db):
    """The batch path's one-statement insert (column arrays on PostgreSQL, executemany on
    SQLite) against ``mlflow.log_feedback``: MLflow's own readers (``get_trace``,
    ``search_traces``, ``mlflow.get_assessment``) return the same fields, and the stored rows match
    column by column, MLflow 3.17's analytics columns included."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import AssessmentError
    from mlflow_state import use_tracking_uri

    db = tracking_db
    db.load(make_traces(5))
    ids = _exp_ids(db)
    values = [True, 0.75, "yes", {"k": [1, 2]}, None]
    error = AssessmentError(error_code="TimeoutError", error_message="judge timed out")
    writer = AssessmentWriter(TracingClient(db.uri))
    assert writer.batched
    bulk = [_feedback("bulk", v, error=error if v is None else None) for v in values]
    written = writer.log_many(list(zip(ids, bulk, strict=True)))
    assert writer.batches == 1 and writer.fallbacks == 0
    with use_tracking_uri(db.uri):
        for t, v in zip(ids, values, strict=True):
            f = _feedback("api", v)
            mlflow.log_feedback(trace_id=t, name="api", value=v, rationale=f.rationale,
                                source=bulk[0].source, metadata=f.metadata,
                                error=error if v is None else None)  # fmt: skip
    client = MlflowClient(db.uri)
    found = {t.info.trace_id: t for t in client.search_traces(locations=[db.experiment_id])}
    skip = {"assessment_id", "assessment_name", "create_time", "last_update_time"}

    def fields(a) -> dict:  # noqa: ANN001
        return {k: v for k, v in a.to_dictionary().items() if k not in skip}

    for t, w in zip(ids, written, strict=True):
        got = {a.name: a for a in client.get_trace(t).info.assessments}
        assert set(got) == {"bulk", "api"}
        assert fields(got["bulk"]) == fields(got["api"])
        assert got["bulk"].assessment_id == w.assessment_id and got["bulk"].valid is True
        assert got["bulk"].create_time_ms == w.create_time_ms
        searched = {a.name: a for a in found[t].info.assessments}
        assert searched["bulk"].to_dictionary() == got["bulk"].to_dictionary()
        with use_tracking_uri(db.uri):
            one = mlflow.get_assessment(t, w.assessment_id)
        assert one.to_dictionary() == got["bulk"].to_dictionary()
    columns = {"assessment_id", "name", "created_timestamp", "last_updated_timestamp"}
    rows_bulk, rows_api = _rows(db.uri, "bulk"), _rows(db.uri, "api")
    assert len(rows_bulk) == len(rows_api) == len(ids)
    for b, a in zip(rows_bulk, rows_api, strict=True):
        assert {k: v for k, v in b.items() if k not in columns} == {
            k: v for k, v in a.items() if k not in columns
        }
    # MLflow 3.17's denormalised analytics columns, as create_assessment fills them
    value_of = dict(zip(ids, [(1.0, False), (0.75, True), (1.0, False), (None, False),
                              (None, False)], strict=True))  # fmt: skip
    assert {r["trace_id"]: (r["aggregate_value"], bool(r["is_numeric_value"]))
            for r in rows_bulk} == value_of  # fmt: skip
    assert all(str(r["experiment_id"]) == db.experiment_id and r["trace_timestamp_ms"]
               for r in rows_bulk)  # fmt: skip


def test_a_deleted_trace_fails_alone_and_a_broken_batch_path_falls_back(mlflow_db, monkeypatch):
    mlflow_db.load(make_traces(3))
    ids = _ids(mlflow_db)
    writer = AssessmentWriter(TracingClient(mlflow_db.uri))
    out = writer.log_many([(ids[0], _feedback("x", True)), ("tr-gone", _feedback("x", True)),
                           (ids[1], _feedback("x", False))])  # fmt: skip
    assert isinstance(out[1], MlflowException) and out[1].error_code == "RESOURCE_DOES_NOT_EXIST"
    assert out[0].trace_id == ids[0] and out[2].value is False

    def broken(items):  # noqa: ANN001, ANN202 - as if MLflow renamed something we use
        raise MlflowException("no such column: assessments.aggregate_value", BAD_REQUEST)

    monkeypatch.setattr(writer, "_log_sql", broken)
    again = writer.log_many([(ids[2], _feedback("y", 1.0)), (ids[0], _feedback("y", 0.0))])
    assert [a.value for a in again] == [1.0, 0.0]
    assert writer.fallbacks == 1 and not writer.batched  # one at a time from now on
    assert Counter(r["trace_id"] for r in _rows(mlflow_db.uri, "y")) == {ids[0]: 1, ids[2]: 1}
    other = AssessmentWriter(TracingClient(mlflow_db.uri))

    def changed(items):  # noqa: ANN001, ANN202 - as if a store method changed its signature
        raise TypeError("ManagedSessionMaker() got an unexpected keyword argument 'read_only'")

    monkeypatch.setattr(other, "_log_sql", changed)
    assert [a.value for a in other.log_many([(ids[1], _feedback("w", 0.5))])] == [0.5]
    assert not other.batched and len(_rows(mlflow_db.uri, "w")) == 1


def test_a_store_outage_raises_instead_of_writing_twice(mlflow_db, monkeypatch):
    mlflow_db.load(make_traces(2))
    writer = AssessmentWriter(TracingClient(mlflow_db.uri))

    def down(items):  # noqa: ANN001, ANN202
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(writer, "_log_sql", down)
    with pytest.raises(MlflowException, match="locked"):
        writer.log_many([(t, _feedback("z", True)) for t in _ids(mlflow_db)])
    assert _rows(mlflow_db.uri, "z") == [] and writer.batched


def test_other_stores_log_one_at_a_time():
    writer = AssessmentWriter(TracingClient("http://127.0.0.1:9"))
    assert not writer.batched and writer._parallel > 1


def test_load_traces_falls_back_to_the_client_when_the_store_cannot(mlflow_db, monkeypatch):
    from mlflow.exceptions import MlflowTracingException

    mlflow_db.load(make_traces(5))
    ids = _ids(mlflow_db)
    client = TracingClient(mlflow_db.uri)
    assert {t.info.trace_id for t in load_traces(client, ids + ["tr-gone"])} == set(ids)

    def artifact_backed(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise MlflowTracingException("Trace data not stored in tracking store")

    monkeypatch.setattr(client.store, "batch_get_traces", artifact_backed)
    monkeypatch.setattr(mlflow_io, "_read_sql_traces", artifact_backed)
    used = []
    monkeypatch.setattr(client, "batch_get_traces",
                        lambda chunk: used.append(chunk) or [])  # fmt: skip
    assert load_traces(client, ids) == [] and used == [ids]


def test_the_fast_trace_read_returns_what_batch_get_traces_returns(mlflow_db):
    """The guard of ``_read_sql_traces``: same traces, same order, same content (tags,
    metadata with MLflow's promoted token columns, assessments, spans)."""
    import mlflow

    mlflow_db.load(make_traces(6))
    ids = _ids(mlflow_db)
    client = TracingClient(mlflow_db.uri)
    client.log_assessment(ids[0], _feedback("prior", 0.5))
    from mlflow_state import use_tracking_uri

    with use_tracking_uri(mlflow_db.uri):  # one trace through MLflow's own API as well
        span = mlflow.start_span_no_context("api", experiment_id=mlflow_db.experiment_id,
                                            inputs={"q": "hi"}, tags={"team": "a"})  # fmt: skip
        span.end(outputs={"a": "Paris"})
        mlflow.flush_trace_async_logging()
    ids = _ids(mlflow_db)
    order = list(reversed(ids)) + ["tr-gone"]
    ours = mlflow_io._read_sql_traces(client.store, order)
    theirs = client.store.batch_get_traces(order)
    assert [t.info.trace_id for t in ours] == [t.info.trace_id for t in theirs]
    assert len(ours) == len(ids)
    assert [t.to_dict() for t in ours] == [t.to_dict() for t in theirs]


def _ledger_rows(store: StateStore) -> dict[str, tuple]:
    with store.engine.connect() as c:
        return {r.trace_id: (r.state, r.holder, r.attempts, r.assessment_id, r.cost_usd)
                for r in c.execute(sa.select(ledger_table))}  # fmt: skip


def _claim_many_semantics(store: StateStore) -> None:
    store.ensure_schema(SCORING_MIGRATIONS)
    a = Ledger(store, "host:1:a", lease_ttl_ms=1000, max_attempts=2)
    b = Ledger(store, "host:1:b", lease_ttl_ms=1000, max_attempts=2)
    keys = [LedgerKey(f"tr-{i}", "s", 1) for i in range(6)]
    first = a.claim_many([(k, i, "1") for i, k in enumerate(keys[:4])], now_ms=10)
    assert [c.kind for c in first] == ["new"] * 4
    a.confirm_many([
        Confirmation(keys[0], "done", 20, 1.0, True, "a-0", cost_usd=0.5),
        Confirmation(keys[1], "error", 20, error="boom", cost_usd=0.25),
        Confirmation(keys[2], "failed", 20, error="gave up", assessment_id="a-2"),
    ])  # fmt: skip
    # keys[3] stays claimed by a: fresh for b, stale once the lease is over
    mixed = b.claim_many([(k, i, "1") for i, k in enumerate(keys)], now_ms=500)
    assert [c.kind for c in mixed] == ["skip", "retry", "skip", "held", "new", "new"]
    assert mixed[1].attempts == 1
    assert mixed[3].expires_ms == 10 + 1000 + 1  # a's claim is stale from then on
    assert not mixed[3].ours and mixed[4].ours
    late = b.claim_many([(keys[3], 3, "1")], now_ms=5000)
    assert late[0].kind == "takeover"
    b.confirm_many([Confirmation(keys[1], "done", 600, 0.0, False, "b-1", cost_usd=0.25),
                    Confirmation(keys[3], "done", 600, 1.0, True, "a-3", adopted=True),
                    Confirmation(keys[0], "done", 600, 0.0, False, "b-0")])  # fmt: skip
    rows = _ledger_rows(store)
    assert rows["tr-0"] == ("done", "host:1:a", 1, "a-0", 0.5)  # b never held it: unchanged
    assert rows["tr-1"] == ("done", "host:1:b", 2, "b-1", 0.5)  # costs add up over attempts
    assert rows["tr-2"] == ("failed", "host:1:a", 1, "a-2", None)
    assert rows["tr-3"] == ("done", "host:1:b", 0, "a-3", None)  # adopted: no attempt counted


def test_claim_many_and_confirm_many_sqlite(store):
    _claim_many_semantics(store)


def test_claim_many_and_confirm_many_postgres(pg_url):
    s = StateStore(pg_url)
    try:
        _claim_many_semantics(s)
    finally:
        s.dispose()


def test_racing_claims_on_postgres_take_each_key_once(pg_url):
    s = StateStore(pg_url)
    s.ensure_schema(SCORING_MIGRATIONS)
    keys = [(LedgerKey(f"tr-{i:03d}", "s", 1), i, "1") for i in range(300)]
    won: dict[str, set[str]] = {}

    def claim(holder: str, order: int) -> None:
        ledger = Ledger(s, f"host:1:{holder}", lease_ttl_ms=60_000)
        mine = keys[::order]
        claims = ledger.claim_many(mine, now_ms=1)
        won[holder] = {
            k.trace_id for (k, _, _), c in zip(mine, claims, strict=True) if c.kind == "new"
        }

    threads = [threading.Thread(target=claim, args=(h, o)) for h, o in (("a", 1), ("b", -1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert won["a"].isdisjoint(won["b"]) and len(won["a"] | won["b"]) == 300
    finally:
        s.dispose()


def test_lease_on_postgres_takes_at_most_n(pg_url):
    """Regression: as ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL could
    rescan the subquery per row and lease the whole job to the first worker."""
    s = StateStore(pg_url)
    s.ensure_schema(SCORING_MIGRATIONS)
    try:
        job = BackfillJob(s, "j", "host:1:a", 60_000)
        job.create({"scorer": "s", "version": 1, "sample_rate": 1.0, "total_items": 300,
                    "status": "running", "created_ms": 0, "updated_ms": 0, "spent_usd": 0.0},
                   [(f"tr-{i:03d}", i) for i in range(300)])  # fmt: skip
        first = job.lease(20, 1)
        second = BackfillJob(s, "j", "host:1:b", 60_000).lease(30, 1)
        assert (len(first), len(second)) == (20, 30) and set(first).isdisjoint(second)
        assert first == [f"tr-{i:03d}" for i in range(20)]
    finally:
        s.dispose()


class _SlowScorer:
    """A scorer that sleeps (an I/O-bound judge) and records how many run at once, and on
    which threads results are written."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, trace) -> ScoreOutput:  # noqa: ANN001
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.latency_s)
        with self.lock:
            self.running -= 1
        return ScoreOutput([Feedback(value=True)], cost_usd=0.001)


def _slow_worker(mlflow_db, store, n: int, delay_s: float) -> tuple[TraceScorer, _SlowScorer]:
    """``n`` traces and a worker whose scorer takes ``delay_s`` a trace, as a judge does."""
    mlflow_db.load(make_traces(n))
    store.ensure_schema(SCORING_MIGRATIONS)
    slow = _SlowScorer(delay_s)
    spec = ScorerSpec(name="slow", ref="scoring_helpers:flaky")
    worker = TraceScorer(ResolvedScorer(spec, "LLM_JUDGE", slow), tracking_uri=mlflow_db.uri,
                         store=store, clock=SystemClock())  # fmt: skip
    return worker, slow


def test_pipeline_keeps_the_scorers_busy_and_writes_from_one_thread(mlflow_db, store, monkeypatch):
    worker, slow = _slow_worker(mlflow_db, store, 120, 0.05)
    writers, batches = set(), []
    commit = worker.commit

    def spy(pending):  # noqa: ANN001, ANN202
        writers.add(threading.current_thread().name)
        batches.append(len(pending))
        return commit(pending)

    monkeypatch.setattr(worker, "commit", spy)
    traces = load_traces(worker.client, _ids(mlflow_db))
    with ScoringPipeline(worker, concurrency=8) as pipe:
        outcomes = pipe.score_all(traces)
    assert Counter(o.state for o in outcomes) == {"done": 120}
    assert slow.peak == 8  # every scorer thread busy, never more
    assert writers == {"llmops-score-writer"}
    assert max(batches) > 1 and sum(batches) == 120
    assert {s for s, *_ in _ledger_rows(store).values()} == {"done"}
    assert Counter(x[0] for x in mlflow_db.assessments()) == {t: 1 for t in _ids(mlflow_db)}


def test_crash_between_a_batch_write_and_its_confirmation_is_adopted_not_rescored(
    mlflow_db, store, state_url, monkeypatch
):
    """The writer logs a batch to MLflow, then the process "dies" before the ledger
    confirmation: a rerun (after the lease TTL) adopts what was logged; every trace ends
    with exactly one assessment and one ``done`` ledger row."""
    n = 40
    mlflow_db.load(make_traces(n))
    ScorerRegistry(store).register(ScorerSpec(name="empty", ref="builtin:empty_answer"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, concurrency=4, lease_ttl=60)
    clock = FakeClock(EPOCH + timedelta(days=1))
    confirm = Ledger.confirm_many
    calls = {"n": 0}

    def dies_before_confirming(self, items):  # noqa: ANN001, ANN202
        calls["n"] += 1
        raise SystemExit("killed")  # MLflow has committed this batch already

    monkeypatch.setattr(Ledger, "confirm_many", dies_before_confirming)
    with pytest.raises(SystemExit):
        backfill(cfg, store, scorer="empty", progress=False, clock=clock, worker_id="w1")
    monkeypatch.setattr(Ledger, "confirm_many", confirm)
    logged = Counter(x[0] for x in mlflow_db.assessments())
    rows = _ledger_rows(store)
    unconfirmed = {t for t, r in rows.items() if r[0] == "claimed" and t in logged}
    assert unconfirmed, "the crash left logged but unconfirmed traces"
    assert set(logged.values()) == {1}
    clock.advance(seconds=120)  # the dead worker's claims and leases are stale now
    r = backfill(cfg, store, scorer="empty", progress=False, clock=clock, worker_id="w2")
    assert (r.status, r.errors, r.scored, r.already_done) == ("done", 0, n, 0)
    assert Counter(x[0] for x in mlflow_db.assessments()) == {t: 1 for t in _ids(mlflow_db)}
    rows = _ledger_rows(store)
    assert {r[0] for r in rows.values()} == {"done"} and len(rows) == n
    assert all(rows[t][3] is not None for t in unconfirmed)  # the adopted assessment ids


def test_crash_in_the_middle_of_a_one_at_a_time_batch(mlflow_db, store, state_url, monkeypatch):
    """On stores written one assessment at a time, a batch can stop half-way: the rerun
    adopts the logged half and scores the rest, still once per trace."""
    n = 30
    mlflow_db.load(make_traces(n))
    ScorerRegistry(store).register(ScorerSpec(name="empty", ref="builtin:empty_answer"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, concurrency=2, lease_ttl=60)
    monkeypatch.setattr(mlflow_io, "_sql_store_parts", lambda store: None)
    real = TracingClient.log_assessment
    calls = {"n": 0}

    def dies_at_the_11th(self, trace_id, assessment):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 11:
            raise MlflowException("connection reset", INTERNAL_ERROR)
        return real(self, trace_id, assessment)

    monkeypatch.setattr(TracingClient, "log_assessment", dies_at_the_11th)
    clock = FakeClock(EPOCH + timedelta(days=1))
    with pytest.raises(MlflowException, match="connection reset"):
        backfill(cfg, store, scorer="empty", progress=False, clock=clock, worker_id="w1")
    assert len(mlflow_db.assessments()) == 10
    clock.advance(seconds=120)
    r = backfill(cfg, store, scorer="empty", progress=False, clock=clock, worker_id="w2")
    assert (r.status, r.errors, r.scored + r.already_done) == ("done", 0, n)
    assert Counter(x[0] for x in mlflow_db.assessments()) == {t: 1 for t in _ids(mlflow_db)}
    assert {s for s, *_ in _ledger_rows(store).values()} == {"done"}


def test_runner_scores_in_batches_and_gives_up_after_max_attempts(mlflow_db, store, state_url):
    """The scheduled path through the pipeline: every attempt counted once per trace, the
    last one logged as one error Feedback."""
    import scoring_helpers

    mlflow_db.load(make_traces(25))
    ScorerRegistry(store).register(ScorerSpec(name="flaky", ref="scoring_helpers:flaky"),
                                   now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, retry_backoff=0, max_attempts=2,
                     concurrency=4)  # fmt: skip
    clock = FakeClock(EPOCH + timedelta(days=1))
    scoring_helpers.FLAKY["fail"] = True
    try:
        first = run_due_scorers(cfg, store, clock.now(), clock=clock, force=True).scorers[0]
        clock.advance(seconds=1)
        second = run_due_scorers(cfg, store, clock.now(), clock=clock, force=True).scorers[0]
    finally:
        scoring_helpers.FLAKY["fail"] = True
    assert (first.errors, first.gave_up) == (25, 0)
    assert (second.retried, second.gave_up) == (25, 25)
    rows = _ledger_rows(store)
    assert {(r[0], r[2]) for r in rows.values()} == {("failed", 2)}
    errors = [a for t in rows for a in TracingClient(mlflow_db.uri).get_trace_info(t).assessments]
    assert len(errors) == 25 and all(a.error is not None for a in errors)
    assert {a.metadata["llmops.attempts"] for a in errors} == {"2"}


def test_release_gives_back_only_what_is_safe(store):
    store.ensure_schema(SCORING_MIGRATIONS)
    a = Ledger(store, "host:1:a", lease_ttl_ms=1000, max_attempts=3)
    b = Ledger(store, "host:1:b", lease_ttl_ms=1000, max_attempts=3)
    k = [LedgerKey(f"tr-{i}", "s", 1) for i in range(3)]
    a.claim_many([(x, 1, "1") for x in k], now_ms=1)
    a.confirm_many([Confirmation(k[1], "error", 2, error="429")])
    claims = b.claim_many([(x, 1, "1") for x in k], now_ms=5000)  # k0, k2 stale: takeovers
    assert [c.kind for c in claims] == ["takeover", "retry", "takeover"]
    fresh = b.claim_many([(LedgerKey("tr-9", "s", 1), 1, "1")], now_ms=5000)
    b.release(list(zip([*k, LedgerKey("tr-9", "s", 1)], [*claims, *fresh], strict=True)))
    rows = _ledger_rows(store)
    assert "tr-9" not in rows  # never scored: claimable as new again
    assert rows["tr-1"][:3] == ("error", "host:1:b", 1)  # the retry did not count
    assert rows["tr-0"][0] == rows["tr-2"][0] == "claimed"  # a crashed holder may have logged


def test_closing_early_gives_back_the_claims_never_scored(mlflow_db, store):
    worker, slow = _slow_worker(mlflow_db, store, 30, 0.1)
    traces = load_traces(worker.client, _ids(mlflow_db))
    pipe = ScoringPipeline(worker, concurrency=2)
    pipe.put(traces)  # all 30 claimed; two at a time scored
    time.sleep(0.05)
    pipe.close()  # as when the run stops on an error
    rows = _ledger_rows(store)
    assert 2 <= len(rows) < 30 and {r[0] for r in rows.values()} == {"done"}
    assert len(mlflow_db.assessments()) == len(rows)
    again = TraceScorer(ResolvedScorer(worker.spec, "LLM_JUDGE", _SlowScorer(0)),
                        tracking_uri=mlflow_db.uri, store=store, clock=SystemClock())  # fmt: skip
    with ScoringPipeline(again, concurrency=4) as pipe:
        states = Counter(o.state for o in pipe.score_all(traces))
    assert states == {"done": 30 - len(rows), "skipped": len(rows)}
    assert Counter(x[0] for x in mlflow_db.assessments()) == {t: 1 for t in _ids(mlflow_db)}


def test_items_read_ahead_and_never_scored_are_given_back(mlflow_db, store, state_url):
    """The backfill reads the next batch (lease and traces) while the current one is scored;
    a run that stops before putting it gives those items back to the job, pending for any
    worker, instead of leaving them leased until ``lease_ttl``."""
    from mlflow_llmops.scoring.backfill_job import BackfillReport, _BackfillLoop

    mlflow_db.load(make_traces(30))
    ids = _ids(mlflow_db)
    store.ensure_schema(SCORING_MIGRATIONS)
    job = BackfillJob(store, "j", "host:1:a", 60_000)
    job.create({"scorer": "s", "version": 1, "sample_rate": 1.0, "total_items": 30,
                "status": "running", "created_ms": 0, "updated_ms": 0, "spent_usd": 0.0},
               [(t, i) for i, t in enumerate(ids)])  # fmt: skip

    class OneBatchPipe:  # room for one batch of 10, then the run stops
        pending = 0

        def __init__(self) -> None:
            self.rooms, self.put_ids = [10, 0], []

        def room(self) -> int:
            return self.rooms.pop(0)

        def put(self, traces) -> None:  # noqa: ANN001
            self.put_ids += [t.info.trace_id for t in traces]

    class Bar:
        def update(self, n: int) -> None:
            pass

    cfg = config_for(mlflow_db.uri, state_url)
    loop = _BackfillLoop(job, None, TracingClient(mlflow_db.uri), SystemClock(), cfg.scoring,
                         BackfillReport("j", "s", 1, "host:1:a"), Bar(), None, 0.0)  # fmt: skip
    pipe = OneBatchPipe()
    loop._feed(pipe)
    assert loop._ahead is not None  # the next batch was being read
    loop._ahead.result()
    t = sa.table("llmops_backfill_items", sa.column("trace_id"), sa.column("state"))
    with store.engine.connect() as c:
        leased_then = {
            r[0] for r in c.execute(sa.select(t.c.trace_id).where(t.c.state == "leased"))
        }
    assert len(leased_then) == 20  # the batch put and the batch read ahead
    loop.close()
    with store.engine.connect() as c:
        states = Counter(r[0] for r in c.execute(sa.select(t.c.state)))
        leased = {r[0] for r in c.execute(sa.select(t.c.trace_id).where(t.c.state == "leased"))}
    assert pipe.put_ids == ids[:10] and leased == set(ids[:10])
    assert states == {"leased": 10, "pending": 20}


def test_backfill_planning_reads_what_search_traces_returns(tracking_db):
    """The guard of ``search_trace_rows``: for window, status, tag and metadata filters, the
    same traces in the same order as MLflow's public ``search_traces`` (paged as before)."""
    from mlflow_llmops.scoring.backfill_job import _FAST_PLAN, _enumerate
    from mlflow_llmops.scoring.runner import sampled

    mlflow_db = tracking_db
    mlflow_db.load(make_traces(12))
    client = TracingClient(mlflow_db.uri)
    for t in _ids(mlflow_db)[::3]:
        client.set_trace_tag(t, "team", "a")
    window = f"trace.timestamp_ms >= {EPOCH_MS + 2000} AND trace.timestamp_ms < {EPOCH_MS + 9000}"
    filters = {None: 12, window: 7, "trace.status = 'OK'": None, "tags.team = 'a'": 4,
               "metadata.`mlflow.user` = 'nobody'": 0}  # fmt: skip
    for flt, n in filters.items():
        fast = _enumerate(client, [mlflow_db.experiment_id], flt, "s", 1.0)
        assert _FAST_PLAN["ok"], "the one-query planning failed on this MLflow"
        _FAST_PLAN["ok"] = False
        try:
            paged = _enumerate(client, [mlflow_db.experiment_id], flt, "s", 1.0)
        finally:
            _FAST_PLAN["ok"] = True
        assert fast == paged, flt
        assert n is None or len(fast) == n, flt
        half = _enumerate(client, [mlflow_db.experiment_id], flt, "s", 0.5)
        assert half == [r for r in fast if sampled(r[0], "s", 0.5)]


def test_group_commit_writes_each_cost_once_and_raises_a_failed_batch_to_its_callers():
    """Judge threads recording costs together share a transaction; each returns only once its
    own item is written, and a failed write is raised to every caller whose item it held."""
    from mlflow_llmops.scoring.ledger import GroupCommit

    written: list[list[str]] = []
    entered, release = threading.Event(), threading.Event()

    def write(items: list[str]) -> None:
        if "boom" in items:
            raise RuntimeError("store down")
        entered.set()
        release.wait(10)
        written.append(list(items))

    group = GroupCommit(write)
    returned: list[str] = []

    def submit(item: str) -> None:
        group.submit(item)
        returned.append(item)

    first = threading.Thread(target=submit, args=("a",))
    first.start()
    assert entered.wait(10)  # "a" is being written alone
    rest = [threading.Thread(target=submit, args=(x,)) for x in "bcdef"]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 10
    while len(group._pending) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert returned == []  # nobody returns before its item is written
    release.set()
    for t in (first, *rest):
        t.join(10)
    # "a" alone, then the five that queued meanwhile in one write; each written once
    assert len(written) == 2 and written[0] == ["a"] and sorted(written[1]) == list("bcdef")
    assert sorted(returned) == list("abcdef")
    with pytest.raises(RuntimeError, match="store down"):
        group.submit("boom")
    group.submit("g")  # the next batch is written as usual
    assert written[-1] == ["g"]
