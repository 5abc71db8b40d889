"""PostgreSQL: create_views indexes MLflow's spans table and adds statistics on start_ms
(idempotently, without blocking MLflow's writes or migrations), time filters use them, and
results stay exact and fresh (new spans and re-pricings show up at once)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from mlflow_llmops.analytics.queries import Query, bind_params, get_query, run_query
from mlflow_llmops.analytics.views import (
    PG_INDEXES,
    PG_STATISTICS,
    VIEW_NAMES,
    create_views,
    ensure_pg_indexes,
)
from mlflow_llmops.pricing.tables import refresh_trace_costs, span_costs
from mlflow_llmops.testing.postgres import ADMIN_URL, create_database, drop_database, pg_available
from mlflow_llmops.testing.seed import SeedSpan, SeedTrace, bulk_load

pytestmark = pytest.mark.xdist_group("sql")

INDEX = "ix_llmops_spans_llm_start"
DAY = 86_400_000
T0 = int(datetime(2026, 3, 9, 10, tzinfo=UTC).timestamp() * 1000)
NOW = datetime(2026, 3, 10, tzinfo=UTC)
RANGE = {"since_ms": T0 - T0 % DAY, "until_ms": T0 - T0 % DAY + DAY}


def _traces(offset_ms: int = 0) -> list[SeedTrace]:
    return [
        SeedTrace(timestamp_ms=T0 + offset_ms, spans=(SeedSpan("gpt-4o-mini", "openai", 1000, 100),)),
        SeedTrace(timestamp_ms=T0 + offset_ms + 1, spans=(SeedSpan("acme-internal-llm", "acme", 50, 5),)),
        # No usage and no price: an LLM call, but not an unpriced one.
        SeedTrace(timestamp_ms=T0 + offset_ms + 2, spans=(SeedSpan("acme-internal-llm", "acme", 0, 0),)),
    ]  # fmt: skip


def _mlflow_db(url: str) -> tuple[sa.Engine, str]:
    """An MLflow tracking database (schema created by MLflow) with one experiment."""
    from mlflow import MlflowClient

    exp = MlflowClient(url).create_experiment("idx", artifact_location=tempfile.mkdtemp())
    return sa.create_engine(url), exp


@pytest.fixture(scope="module")
def pg():
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    url = create_database("llmops_idx")
    try:
        engine, exp = _mlflow_db(url)
        bulk_load(engine, exp, _traces(), seed=1)
        create_views(engine)
        yield engine, exp
        engine.dispose()
    finally:
        drop_database(url)


def _index_state(engine: sa.Engine) -> tuple[bool | None, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
                    "WHERE indexrelid = to_regclass(:n)"), {"n": INDEX},
        ).first()  # fmt: skip
    return (row[0], row[1]) if row else (None, None)


def _day_rows(engine: sa.Engine) -> dict[str, tuple]:
    res = run_query("cost_by_model_day", engine, RANGE, now=NOW)
    cols = ("llm_calls", "cost_usd", "llmops_priced_spans", "mlflow_priced_spans",
            "unpriced_spans")  # fmt: skip
    return {r["model"]: tuple(r[c] for c in cols) for r in res.records()}


def test_create_views_indexes_spans_once(pg):
    engine, _ = pg
    valid, definition = _index_state(engine)
    assert valid is True
    assert "INCLUDE" in definition and "WHERE" in definition and "1000000" in definition
    with engine.connect() as conn:
        stats = conn.execute(sa.text("SELECT stxname FROM pg_statistic_ext")).scalars().all()
    if engine.dialect.server_version_info >= (14,):  # statistics on expressions
        assert set(PG_STATISTICS) <= set(stats)
    with engine.connect() as conn:
        weight = conn.execute(sa.text("SELECT indisvalid FROM pg_index "
                                      "WHERE indexrelid = to_regclass('ix_llmops_trace_weight')")
                              ).scalar()  # fmt: skip
    assert weight is True  # the sample weights the span and cost views join
    assert ensure_pg_indexes(engine) == []  # idempotent: nothing left to create
    assert create_views(engine) == list(VIEW_NAMES)
    assert _index_state(engine) == (True, definition)


def test_an_interrupted_build_is_rebuilt(pg):
    engine, _ = pg
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"DROP INDEX {INDEX}"))
        # A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON spans (type)"))
    assert _index_state(engine)[0] is False
    assert ensure_pg_indexes(engine) == [INDEX]
    valid, definition = _index_state(engine)
    assert valid is True and "INCLUDE" in definition


def test_a_build_in_progress_elsewhere_is_not_waited_for(pg):
    from mlflow_llmops.analytics import views

    engine, _ = pg
    with engine.connect() as other:  # another process holds the build lock
        other.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": views._PG_INDEX_LOCK})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"DROP INDEX {INDEX}"))
        assert ensure_pg_indexes(engine) == []
        assert create_views(engine) == list(VIEW_NAMES)  # the views do not wait either
        other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": views._PG_INDEX_LOCK})
    assert _index_state(engine)[0] is None
    assert ensure_pg_indexes(engine) == [INDEX]


def _plan(engine: sa.Engine, sql: str, params: dict, *settings: str) -> list[dict]:
    with engine.connect() as conn:
        for setting in settings:
            conn.execute(sa.text(f"SET LOCAL {setting}"))
        plan = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + sql), params).scalar()
    return list(_walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]))


def _query_plan(engine: sa.Engine, name: str, *settings: str) -> list[dict]:
    q = get_query(name)
    return _plan(engine, q.render("postgresql"), bind_params(q, RANGE, NOW), *settings)


def test_time_filters_are_estimated_and_use_the_index(pg):
    engine, _ = pg
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE spans"))  # statistics; pages all-visible
        spans = conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar()
    # The statistics on start_ms: a range over every span is estimated as every span
    # (without them PostgreSQL guesses 0.5%), and GROUP BY day as one group per day.
    in_range = _plan(engine, "SELECT 1 FROM llmops_spans WHERE start_ms >= :lo AND start_ms < :hi",
                     {"lo": T0 - DAY, "hi": T0 + DAY})  # fmt: skip
    assert in_range[0]["Plan Rows"] >= spans * 0.7
    days = _plan(engine, "SELECT start_ms - start_ms % 86400000, COUNT(*) FROM llmops_spans "
                 "GROUP BY start_ms - start_ms % 86400000", {})  # fmt: skip
    assert days[0]["Plan Rows"] <= 2
    # A handful of spans: make the planner show what it picks for a large table.
    # cost_by_model_day reads each span's JSON (token usage of unpriced spans), so over
    # these 3 spans the planner may as well walk the primary key; over 50k traces and a
    # 3-day range it takes the start_ms index range (measured: 0.3 ms, EXPLAIN ANALYZE).
    # Its sample weights come from our index on the metadata, one index-only probe.
    off = ("enable_seqscan = off", "enable_bitmapscan = off")
    used = {n.get("Index Name") for n in _query_plan(engine, "cost_by_model_day", *off)}
    assert "ix_llmops_trace_weight" in used
    scans = [(n["Node Type"], n.get("Index Name"))
             for n in _query_plan(engine, "latency_errors_by_model", *off)
             if n.get("Relation Name") == "spans"]  # fmt: skip
    assert scans == [("Index Only Scan", INDEX)]  # never reads the span JSON


#: Trace analyses and what they read of a trace's cost (its llmops_trace_costs row) and
#: first LLM model (spans); none of them reads the span costs.
TRACE_QUERIES = {
    "daily_totals": {"llmops_trace_costs"},
    "top_traces": {"llmops_trace_costs", "spans"},
    "cost_by_tenant": {"llmops_trace_costs"},
    "cost_by_user": {"llmops_trace_costs"},
    "cost_per_success": {"llmops_trace_costs", "spans"},
    "token_efficiency": {"llmops_trace_costs"},
}


def test_trace_analyses_read_costs_and_model_once_from_our_indexes(pg):
    """llmops_traces reads a trace's cost from its llmops_trace_costs row (primary key)
    and its first model from our index on spans (ix_llmops_spans_llm_trace), once however
    often a query names cost_usd or model; never the span costs; a query that reads
    neither joins neither."""
    engine, _ = pg
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE spans"))  # pages all-visible: index-only
        conn.execute(sa.text("VACUUM ANALYZE llmops_span_costs, llmops_trace_costs"))
    # Three traces: make the planner show what it picks for a large table.
    off = ("enable_seqscan = off", "enable_bitmapscan = off")
    expected = {
        "llmops_trace_costs": ("Index Scan", "llmops_trace_costs_pkey"),
        "spans": ("Index Only Scan", "ix_llmops_spans_llm_trace"),
        "llmops_span_costs": ("(never)", None),
    }
    for name, tables in TRACE_QUERIES.items():
        scans = [(n["Relation Name"], n["Node Type"], n.get("Index Name"))
                 for n in _query_plan(engine, name, *off)
                 if n.get("Relation Name") in expected]  # fmt: skip
        assert sorted(scans) == sorted((t, *expected[t]) for t in tables), name
    plain = _plan(engine, "SELECT task_type, COUNT(*) FROM llmops_traces "
                  "WHERE timestamp_ms >= :lo GROUP BY task_type", {"lo": T0 - DAY})  # fmt: skip
    assert not {n.get("Relation Name") for n in plain} & set(expected)


def test_run_query_turns_jit_off_for_its_transaction(pg):
    engine, _ = pg
    q = Query(
        "jit", Path("jit.sql"), "JIT?", "", (), (("jit", ""),), "SELECT current_setting('jit')"
    )
    with engine.connect() as conn:
        before = conn.execute(sa.text("SHOW jit")).scalar()
    assert run_query(q, engine, now=NOW).rows == [("off",)]
    with engine.connect() as conn:  # SET LOCAL: nothing leaks into pooled connections
        assert conn.execute(sa.text("SHOW jit")).scalar() == before


def _walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def test_new_spans_and_repricing_show_up_at_once(pg):
    engine, exp = pg
    before = _day_rows(engine)
    assert before["acme-internal-llm"] == (2, None, 0, 0, 1)
    calls, cost, ours, mlflows, unpriced = before["gpt-4o-mini"]
    assert (calls, ours, mlflows, unpriced) == (1, 0, 1, 0) and cost > 0
    bulk_load(engine, exp, _traces(offset_ms=60_000)[:2], seed=2)
    with engine.connect() as conn:
        acme = conn.execute(
            sa.text("SELECT trace_id, span_id FROM spans WHERE model_name = 'acme-internal-llm' "
                    "AND total_cost IS NULL ORDER BY start_time_unix_nano LIMIT 1")
        ).one()  # fmt: skip
    with engine.begin() as conn:  # the re-pricing job prices one acme span
        conn.execute(
            span_costs.insert(),
            {"trace_id": acme.trace_id, "span_id": acme.span_id, "experiment_id": exp,
             "trace_timestamp_ms": T0, "model": "acme-internal-llm", "provider": "acme",
             "status": "priced", "currency": "USD", "total_cost_usd": 0.25,
             "catalog_version": "test", "priced_at": NOW},
        )  # fmt: skip
        refresh_trace_costs(conn, [acme.trace_id])  # as every writer of span costs does
    after = _day_rows(engine)
    calls, cost2, ours, mlflows, unpriced = after["gpt-4o-mini"]
    assert (calls, ours, mlflows, unpriced) == (2, 0, 2, 0) and cost2 > cost
    assert after["acme-internal-llm"] == (3, 0.25, 1, 0, 1)


def test_mlflow_migrations_still_run_with_the_index(pg_url):
    """MLflow's migrations that change ``spans`` columns drop our index with the column
    (the views must be dropped first, as before); create_views builds it again."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    engine, _ = _mlflow_db(pg_url)
    try:
        create_views(engine)
        with engine.begin() as conn:
            for name in VIEW_NAMES:
                conn.execute(sa.text(f"DROP VIEW {name}"))
        cfg = _get_alembic_config(pg_url)
        # b7e2c1a4d9f3: before MLflow added model_name/total_cost (75868b020152).
        for step, target in ((command.downgrade, "b7e2c1a4d9f3"), (command.upgrade, "heads")):
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                step(cfg, target)
        assert _index_state(engine)[0] is None
        create_views(engine)
        assert _index_state(engine)[0] is True
    finally:
        engine.dispose()


def test_without_the_privilege_the_views_still_work(pg_url, caplog):
    """An analytics role that does not own ``spans`` gets the views and a warning
    with the statements to ask the owner for."""
    engine, exp = _mlflow_db(pg_url)
    bulk_load(engine, exp, _traces(), seed=3)
    role = f"llmops_reader_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    engine.dispose()
    reader = sa.create_engine(sa.engine.make_url(pg_url).set(username=role))
    try:
        with caplog.at_level(logging.WARNING, logger="mlflow_llmops.analytics.views"):
            assert create_views(reader) == list(VIEW_NAMES)
        assert _index_state(reader)[0] is None
        assert f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}" in caplog.text
        assert _day_rows(reader)["acme-internal-llm"] == (2, None, 0, 0, 1)
    finally:
        reader.dispose()
        drop_database(pg_url)
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_index_definitions_are_ours():
    assert all(n.startswith("ix_llmops_") for n in PG_INDEXES)
    assert all(n.startswith("llmops_") for n in PG_STATISTICS)
