"""Every query gives the same answer on SQLite, PostgreSQL and DuckDB (Parquet export),
and the main ones match an independent pandas computation over mlflow.search_traces."""

from __future__ import annotations

import math

import pytest
import sqlglot
from reference import (
    cache_savings,
    cost_by_model_day,
    cost_by_session,
    cost_by_task_type,
    cost_by_user,
    cost_per_success,
    daily_totals,
    hourly_cost_anomaly,
    latency_errors_by_model,
    load,
    month_spend,
    token_efficiency,
    top_traces,
    unpriced_usage,
)
from sql_times import NOW, PRICED_UNTIL, START

from mlflow_llmops.analytics.queries import QueryError, bind_params, load_queries, run_query
from mlflow_llmops.analytics.views import VIEW_COLUMNS, VIEW_NAMES

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")

QUERIES = load_queries()
LO = int(START.timestamp() * 1000)
HI = int(NOW.timestamp() * 1000)
RANGE = {"since_ms": LO, "until_ms": HI}


def norm(v):
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return float(f"{v:.9g}")
    return v


def rows(result) -> list[tuple]:
    return [tuple(norm(v) for v in r) for r in result.rows]


def params_for(name: str) -> dict:
    declared = {p.name for p in QUERIES[name].params}
    return {k: v for k, v in RANGE.items() if k in declared}


def test_at_least_the_required_analyses_exist():
    assert len(QUERIES) >= 10
    for q in QUERIES.values():
        assert q.question.endswith("?") and q.columns
        assert all(desc for _, desc in q.columns), q.name
        assert all(p.description for p in q.params), q.name


def test_queries_ship_inside_the_package():
    """A wheel install has no repository ``sql/`` folder: the queries live in the package
    (package data) and ``sql/`` at the top of the repository links to them."""
    from pathlib import Path

    import mlflow_llmops
    from mlflow_llmops.analytics.queries import default_sql_dir

    pkg = Path(mlflow_llmops.__file__).resolve().parent
    assert default_sql_dir().resolve() == pkg / "sql"
    assert {p.stem for p in (pkg / "sql").glob("*.sql")} == set(QUERIES)
    repo_link = pkg.parent / "sql"
    if repo_link.exists():
        assert repo_link.resolve() == pkg / "sql"


def test_views_expose_the_contract_columns(sqlite_store, pg_store, duck):
    import sqlalchemy as sa

    for _, engine, _ in (sqlite_store, pg_store):
        with engine.connect() as conn:
            for v in VIEW_NAMES:
                cols = list(conn.execute(sa.text(f"SELECT * FROM {v} LIMIT 0")).keys())
                assert tuple(cols) == VIEW_COLUMNS[v], (engine.dialect.name, v)
    for v in VIEW_NAMES:
        cols = [d[0] for d in duck[1].execute(f"SELECT * FROM {v} LIMIT 0").description]
        assert tuple(cols) == VIEW_COLUMNS[v], ("duckdb", v)


def test_assessments_view_maps_values_the_same_everywhere(sqlite_store, pg_store, duck):
    import sqlalchemy as sa

    sql = ("SELECT name, assessment_type, value_num, value_json, source_type, source_id, "
           "rationale, valid, scorer_version FROM llmops_assessments ORDER BY name")  # fmt: skip
    got = []
    for _, engine, _ in (sqlite_store, pg_store):
        with engine.connect() as conn:
            got.append([tuple(norm(v) for v in r) for r in conn.execute(sa.text(sql)).all()])
    got.append([tuple(norm(v) for v in r) for r in duck[1].execute(sql).fetchall()])
    assert got[0] == got[1] == got[2]
    by_name = {r[0]: r for r in got[0]}
    assert {n: by_name[n][2] for n in by_name} == {
        "correct": 1.0, "relevance": 0.4, "safe": 1.0, "tone": None}  # fmt: skip
    assert all(r[1] == "feedback" and r[8] == "2" and r[5] == f"{r[0]}@v2" for r in got[0])


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_same_answer_on_sqlite_postgres_duckdb(name, sqlite_store, pg_store, duck):
    p = params_for(name)
    a = run_query(name, sqlite_store[1], p, now=NOW)
    b = run_query(name, pg_store[1], p, now=NOW)
    c = run_query(name, duck[1], p, now=NOW)
    keep = [i for i, col in enumerate(a.columns) if col != "trace_id"]  # MLflow's random ids

    def comparable(r):
        # Floats to 1e-9 relative: engines sum in different orders (last-bit differences).
        return [
            tuple(pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for v in x)
            for x in (tuple(x[i] for i in keep) for x in r.rows)
        ]

    assert comparable(a) == [tuple(x[i] for i in keep) for x in b.rows]
    assert comparable(a) == [tuple(x[i] for i in keep) for x in c.rows]
    assert a.rows, f"{name} returned nothing on the seeded data"
    # Integers stay integers on every engine (PostgreSQL's SUM(bigint) is a numeric).
    types = [[[type(v).__name__ for v in r] for r in x.rows] for x in (a, b, c)]
    assert types[0] == types[1] == types[2], name


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_transpiles_to_spark(name):
    sql = QUERIES[name].render("spark")
    assert sqlglot.parse_one(sql, read="spark") is not None
    assert "llmops_" in sql and ":" in sql or not QUERIES[name].params


@pytest.fixture(scope="module")
def ref(sqlite_store):
    uri, engine, exp_id = sqlite_store
    return load(uri, exp_id, engine)


def sel(result, *cols):
    idx = [result.columns.index(c) for c in cols]
    return [tuple(norm(r[i]) for i in idx) for r in result.rows]


def nrm(expected):
    return [tuple(norm(v) for v in r) for r in expected]


def test_matches_pandas_over_search_traces(sqlite_store, ref):
    t, s = ref
    engine = sqlite_store[1]
    # both cost sources are present: ours before the cut-off, MLflow's after
    cut = int(PRICED_UNTIL.timestamp() * 1000)
    r = run_query("cost_by_model_day", engine, RANGE, now=NOW)
    assert sum(x[r.columns.index("llmops_priced_spans")] for x in r.rows) > 0
    assert sum(x[r.columns.index("mlflow_priced_spans")] for x in r.rows) > 0
    assert all(x[r.columns.index("mlflow_priced_spans")] == 0
               for x in r.rows if x[0] < cut - 86_400_000)  # fmt: skip

    got = sel(run_query("daily_totals", engine, RANGE, now=NOW),
              "day_ms", "requests", "errors", "total_tokens", "cost_usd")  # fmt: skip
    assert got == nrm(daily_totals(t, LO, HI))
    got = sel(r, "day_ms", "model", "provider", "llm_calls", "cost_usd", "unpriced_spans")
    assert sorted(got, key=str) == nrm(cost_by_model_day(s, LO, HI))
    got = sel(run_query("cost_by_task_type", engine, RANGE, now=NOW),
              "task_type", "requests", "users", "cost_usd")  # fmt: skip
    assert sorted(got, key=str) == nrm(cost_by_task_type(t, LO, HI))
    got = sel(run_query("top_traces", engine, {**RANGE, "limit": 7}, now=NOW),
              "trace_id", "user_id", "model", "cost_usd")  # fmt: skip
    assert got == nrm(top_traces(t, LO, HI, 7)) and got[0][1] == "user-whale"
    got = sel(run_query("cost_per_success", engine, RANGE, now=NOW),
              "model", "requests", "successes", "cost_usd", "cost_per_success_usd",
              "cost_per_1k_tokens_usd")  # fmt: skip
    assert sorted(got, key=str) == nrm(cost_per_success(t, LO, HI))
    got = sel(run_query("latency_errors_by_model", engine, RANGE, now=NOW), "model", "calls",
              "errors", "error_rate", "p50_ms", "p90_ms", "p99_ms", "max_ms")  # fmt: skip
    assert sorted(got, key=str) == nrm(latency_errors_by_model(s, LO, HI))
    got = sel(run_query("unpriced_usage", engine, RANGE, now=NOW), "model", "provider", "spans",
              "traces", "input_tokens", "output_tokens", "first_ms", "last_ms")  # fmt: skip
    assert sorted(got, key=str) == nrm(unpriced_usage(s, LO, HI))
    assert [x[0] for x in got] == ["acme-internal-llm"]


@pytest.mark.parametrize(
    "name, reference, params, cols",
    [
        ("cost_by_user", cost_by_user, {"limit": 10_000}, ("user_id", "requests", "sessions",
         "total_tokens", "cost_usd", "cost_per_request_usd")),
        ("cost_by_session", cost_by_session, {"limit": 10_000}, ("session_id", "user_id",
         "requests", "first_ms", "last_ms", "cost_usd")),
        ("token_efficiency", token_efficiency, {}, ("task_type", "trace_name", "requests",
         "avg_input_tokens", "avg_output_tokens", "output_input_ratio", "cache_hit_ratio",
         "cost_per_1k_output_tokens_usd")),
        ("cache_savings", cache_savings, {}, ("model", "provider", "input_tokens",
         "cache_read_tokens", "cache_hit_ratio", "cache_read_cost_usd", "cache_write_cost_usd",
         "saved_usd")),
    ],
)  # fmt: skip
def test_user_session_efficiency_and_cache_queries_match_pandas(
    name, reference, params, cols, sqlite_store, ref
):
    got = run_query(name, sqlite_store[1], {**RANGE, **params}, now=NOW)
    assert got.rows, name
    assert sorted(sel(got, *cols), key=str) == nrm(reference(ref[0], LO, HI))
    # Unsampled traffic (weight 1 everywhere): the raw count is the count, no estimate.
    kept = "kept_spans" if "kept_spans" in got.columns else "kept_traces"
    assert all(r["estimated"] == 0 for r in got.records())
    if "requests" in got.columns:
        assert all(r["requests"] == r[kept] for r in got.records())


def test_hour_anomaly_and_month_forecast_match_pandas(sqlite_store, ref):
    t, _ = ref
    engine = sqlite_store[1]
    hour = int(NOW.timestamp() * 1000) // 3_600_000 * 3_600_000 - 3_600_000  # 11:00, the spike
    r = run_query("hourly_cost_anomaly", engine, {}, now=NOW)  # default: the last full hour
    assert r.params["hour_start_ms"] == hour
    expected = hourly_cost_anomaly(t, hour)
    got = {x[0]: (norm(x[1]), norm(x[2])) for x in r.rows}
    assert got == {m: (norm(a), norm(b)) for m, (a, b) in expected.items()}
    assert any(x[r.columns.index("is_anomaly")] == 1 for x in r.rows)  # the traffic spike

    f = run_query("month_forecast", engine, {}, now=NOW).records()[0]
    month_start = int(START.timestamp() * 1000)
    assert norm(f["spend_mtd_usd"]) == norm(month_spend(t, month_start, HI))
    assert norm(f["spend_last_7d_usd"]) == norm(month_spend(t, HI - 7 * 86_400_000, HI))
    elapsed = (HI - month_start) / 86_400_000
    assert norm(f["forecast_linear_usd"]) == norm(f["spend_mtd_usd"] * 31 / elapsed)
    days_left = 31 - elapsed
    recent = month_spend(t, HI - 7 * 86_400_000, HI) / 7 * days_left
    assert norm(f["forecast_recent_usd"]) == norm(month_spend(t, month_start, HI) + recent)


@pytest.mark.parametrize(
    "evil",
    [
        "1; DROP VIEW llmops_traces; --",
        "' OR '1'='1",
        "0) UNION SELECT trace_id FROM llmops_traces --",
    ],
)
def test_sql_injection_in_parameters_is_rejected_or_inert(evil, sqlite_store, pg_store, duck):
    q = QUERIES["cost_by_session"]
    for name in ("limit", "since_ms", "experiment_id"):  # typed parameters: rejected
        with pytest.raises(QueryError, match=name):
            bind_params(q, {name: evil}, NOW)
    for target in (sqlite_store[1], pg_store[1], duck[1]):
        # a string parameter is bound as data: no match, and the views survive
        r = run_query("cost_by_session", target, {**RANGE, "user_id": evil}, now=NOW)
        assert r.rows == []
        assert run_query("cost_by_session", target, RANGE, now=NOW).rows


def test_bad_parameters_say_what_to_fix():
    q = QUERIES["top_traces"]
    with pytest.raises(QueryError, match="unknown parameter.*bogus"):
        bind_params(q, {"bogus": 1}, NOW)
    with pytest.raises(QueryError, match="between 1 and 100000"):
        bind_params(q, {"limit": 0}, NOW)
    with pytest.raises(QueryError, match="ISO date"):
        bind_params(q, {"since_ms": "last tuesday"}, NOW)
    assert bind_params(q, {"since_ms": "2026-03-01"}, NOW)["since_ms"] == LO
