"""Benchmark of the SQL cost analyses (issue 4).

1. Seed N traces (default 1,000,000; about 2.5 spans each) over 14 days with the bulk
   loader into a fresh PostgreSQL database whose schema MLflow created.
   Our cost table is filled for the LLM spans of the first ``PRICED_DAYS`` days, as
   ``mlflow-llmops costs reprice`` would (later spans fall back to MLflow's cost), so
   the views join a full-size ``llmops_span_costs`` as in production.
2. Every query in sql/ over the whole range (all traces) on PostgreSQL (views over
   MLflow's tables, indexes from ``create_views``) and on DuckDB over a Parquet export,
   median of ``--runs``; a table with the ratio and whether both return the same rows.
   Goal: each under 2 s on PostgreSQL.
3. "Cost by model per day" over a 20,000-trace experiment through MLflow's public API
   (``mlflow.search_traces`` with spans, then pandas) against our SQL, in one run.
   Goal: SQL at least 50 times faster.

Usage: python bench/bench_sql.py [--traces N] [--baseline-traces M] [--runs R]
                                  [--keep-db NAME | --reuse-db NAME] [--parquet DIR]
                                  [--only NAME ...] [--no-api]

By default every run seeds a fresh database and drops it at the end. ``--keep-db NAME``
seeds into database NAME (replacing it) and keeps it; ``--reuse-db NAME`` skips seeding
and measures a database kept earlier (``--traces`` is then only used for labels).
``--parquet DIR`` keeps the export in DIR (the next run only refreshes it); ``--only``
times the named queries; ``--no-api`` skips the search_traces comparison.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from mlflow_llmops.analytics.export import export_parquet, read_export  # noqa: E402
from mlflow_llmops.analytics.queries import get_query, load_queries, run_query  # noqa: E402
from mlflow_llmops.analytics.views import create_views  # noqa: E402
from mlflow_llmops.pricing.tables import refresh_trace_costs  # noqa: E402
from mlflow_llmops.testing.postgres import (  # noqa: E402
    create_database,
    drop_database,
    named_database,
    pg_available,
)
from mlflow_llmops.testing.seed import bulk_load, synthetic_traffic  # noqa: E402

NOW = datetime(2026, 3, 15, tzinfo=UTC)
DAYS = 14
#: Days (from the start) whose LLM spans are in our cost table, as if re-priced.
PRICED_DAYS = 10
GOAL_S = 2.0


def timed(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def seed(engine: sa.Engine, exp_id: str, n: int, seed_no: int) -> tuple[int, float]:
    rate = n / (DAYS * 1440)
    start = NOW - timedelta(days=DAYS)
    traffic = synthetic_traffic(start, days=DAYS, rate_per_min=rate, seed=seed_no)
    t = time.perf_counter()
    last = [0.0]

    def progress(k: int) -> None:
        if time.perf_counter() - last[0] > 15:
            last[0] = time.perf_counter()
            print(f"  ... {k:,} traces loaded ({time.perf_counter() - t:.0f}s)", flush=True)

    loaded = bulk_load(engine, exp_id, traffic, batch_size=10_000, seed=seed_no, progress=progress)
    return loaded, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--baseline-traces", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parquet", metavar="DIR", help="keep the Parquet export in DIR")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="time only these queries")
    ap.add_argument("--no-api", action="store_true", help="skip the search_traces baseline")
    keep = ap.add_mutually_exclusive_group()
    keep.add_argument("--keep-db", metavar="NAME", help="seed into database NAME and keep it")
    keep.add_argument("--reuse-db", metavar="NAME", help="measure database NAME, kept earlier")
    args = ap.parse_args()
    if not pg_available():
        print("PostgreSQL on 127.0.0.1:5432 is required for this benchmark")
        return 1
    if args.keep_db or args.reuse_db:
        url = named_database(args.keep_db or args.reuse_db, fresh=bool(args.keep_db))
    else:
        url = create_database("llmops_bench_sql")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sql-"))
    try:
        client = MlflowClient(url)  # MLflow creates its schema
        engine = sa.create_engine(url)
        if args.reuse_db:
            small = client.get_experiment_by_name("bench-20k").experiment_id
            with engine.connect() as conn:
                n, m = conn.execute(sa.text(
                    "SELECT COUNT(*) FILTER (WHERE experiment_id <> :s), "
                    "COUNT(*) FILTER (WHERE experiment_id = :s) FROM trace_info"
                ), {"s": int(small)}).one()  # fmt: skip
            print(f"reusing database {args.reuse_db}: {n + m:,} traces", flush=True)
        else:
            big = client.create_experiment("bench-big", artifact_location=str(tmp / "a1"))
            small = client.create_experiment("bench-20k", artifact_location=str(tmp / "a2"))
            n, secs = seed(engine, big, args.traces, 1)
            m, secs2 = seed(engine, small, args.baseline_traces, 2)
            with engine.connect() as conn:
                spans = conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar()
            print(f"seeded {n + m:,} traces / {spans:,} spans with bulk_load in "
                  f"{secs + secs2:.0f}s ({(n + m) / (secs + secs2):,.0f} traces/s)",
                  flush=True)  # fmt: skip
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
        t = time.perf_counter()
        create_views(engine)  # on PostgreSQL also builds our indexes, once
        print(f"create_views took {time.perf_counter() - t:.1f}s", flush=True)
        priced = prime_costs(engine, NOW - timedelta(days=DAYS - PRICED_DAYS))
        if priced:
            print(f"our cost table: {priced:,} LLM spans priced", flush=True)
        full = {"since_ms": NOW - timedelta(days=DAYS + 1), "until_ms": NOW}

        parquet = Path(args.parquet) if args.parquet else tmp / "parquet"
        t = time.perf_counter()
        export_parquet(engine, parquet, now=NOW)
        print(f"export to Parquet took {time.perf_counter() - t:.0f}s", flush=True)
        duck = read_export(parquet)
        slowest = time_all_queries(engine, duck, full, args.runs, args.only, n + m)

        if args.no_api:
            engine.dispose()
            return 0 if slowest < GOAL_S else 2
        # --- the same question through MLflow's public API, 20k traces ----------------
        q = get_query("cost_by_model_day")
        exp = {**full, "experiment_id": small}
        sql_s, sql_res = timed(lambda: run_query(q, engine, exp, now=NOW), args.runs)

        def via_api() -> pd.DataFrame:
            mlflow.set_tracking_uri(url)
            traces = mlflow.search_traces(locations=[small], return_type="list",
                                          max_results=10_000_000)  # fmt: skip
            rows = []
            for tr in traces:
                for s in tr.data.spans:
                    if s.span_type in ("LLM", "CHAT_MODEL"):
                        a = s.attributes
                        cost = (a.get("mlflow.llm.cost") or {}).get("total_cost")
                        rows.append((s.start_time_ns // 1_000_000 // 86_400_000,
                                     a.get("mlflow.llm.model"), cost))  # fmt: skip
            df = pd.DataFrame(rows, columns=["day", "model", "cost"])
            return df.groupby(["day", "model"]).agg(calls=("cost", "size"), cost=("cost", "sum"))

        api_s, api_res = timed(via_api, 1)
        calls_api = int(api_res["calls"].sum())
        calls_sql = sum(r[3] for r in sql_res.rows)
        print(f"RESULT cost_by_model_day {m:,} traces: search_traces+pandas {api_s:.2f}s vs "
              f"SQL view median {sql_s:.3f}s = {api_s / sql_s:.0f}x faster "
              f"(same LLM calls: {calls_api == calls_sql}; goal >= 50x)")  # fmt: skip
        engine.dispose()
        return 0 if slowest < GOAL_S else 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (args.keep_db or args.reuse_db):
            drop_database(url)


def query_params(name: str, full: dict) -> dict:
    """The whole seeded range for a query's time parameters (defaults for the others:
    month_forecast and hourly_cost_anomaly take theirs from NOW)."""
    names = {p.name for p in get_query(name).params}
    return {k: v for k, v in full.items() if k in names}


def same_rows(a: list[tuple], b: list[tuple]) -> bool:
    """Equal rows, floats to 1e-9 relative (sums add up in a different order)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                    if x != y:
                        return False
            elif x != y:
                return False
    return True


def time_all_queries(engine: sa.Engine, duck, full: dict, runs: int,
                     only: list[str] | None, traces: int) -> float:  # fmt: skip
    """Time every query on PostgreSQL and DuckDB; print a table; return the slowest
    PostgreSQL median (seconds)."""
    names = sorted(load_queries())
    if only:
        names = [n for n in names if n in only]
    print(f"\n{'query':<26}{'postgres s':>11}{'duckdb s':>10}{'pg/duck':>9}{'rows':>6}"
          f"{'same':>6}  goal < {GOAL_S:.0f}s", flush=True)  # fmt: skip
    slowest = (0.0, "")
    for name in names:
        params = query_params(name, full)
        pg_s, pg_res = timed(lambda q=name, p=params: run_query(q, engine, p, now=NOW), runs)
        dk_s, dk_res = timed(lambda q=name, p=params: run_query(q, duck, p, now=NOW), runs)
        same = same_rows(pg_res.rows, dk_res.rows)
        slowest = max(slowest, (pg_s, name))
        print(f"{name:<26}{pg_s:>11.3f}{dk_s:>10.3f}{pg_s / dk_s:>9.1f}{len(pg_res.rows):>6}"
              f"{'yes' if same else 'NO':>6}  {'ok' if pg_s < GOAL_S else 'SLOW'}",
              flush=True)  # fmt: skip
    print(f"RESULT every sql/ query on postgres, {traces:,} traces: slowest {slowest[1]} "
          f"median {slowest[0]:.3f}s (goal < {GOAL_S:.0f}s)", flush=True)  # fmt: skip
    return slowest[0]


def prime_costs(engine: sa.Engine, until: datetime) -> int:
    """Fill our cost table for the LLM spans of traces before ``until`` (once): MLflow's
    cost as ours, token buckets from the span's usage, unpriced where MLflow has no
    cost, as the re-pricing job writes them. Returns the rows added."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM llmops_span_costs LIMIT 1")).first():
            return 0
    usage = (
        "(json_extract_path_text(s.content::json, 'attributes', 'mlflow.chat.tokenUsage'))::json"
    )
    t = time.perf_counter()
    with engine.begin() as conn:
        n = conn.execute(sa.text(f"""
INSERT INTO llmops_span_costs (trace_id, span_id, experiment_id, trace_timestamp_ms, model,
  provider, status, currency, input_tokens, cache_read_tokens, cache_write_5m_tokens,
  cache_write_1h_tokens, output_tokens, reasoning_tokens, input_cost_usd,
  cache_read_cost_usd, cache_write_cost_usd, output_cost_usd, total_cost_usd,
  catalog_version, priced_at)
SELECT s.trace_id, s.span_id, CAST(s.experiment_id AS VARCHAR), t.timestamp_ms,
  s.model_name, s.model_provider,
  CASE WHEN s.total_cost IS NULL THEN 'unpriced' ELSE 'priced' END, 'USD',
  COALESCE((u.j ->> 'input_tokens')::bigint, 0)
    - COALESCE((u.j ->> 'cache_read_input_tokens')::bigint, 0),
  COALESCE((u.j ->> 'cache_read_input_tokens')::bigint, 0), 0, 0,
  COALESCE((u.j ->> 'output_tokens')::bigint, 0), 0,
  s.input_cost, CASE WHEN s.total_cost IS NOT NULL THEN 0 END,
  CASE WHEN s.total_cost IS NOT NULL THEN 0 END, s.output_cost, s.total_cost,
  'bench', now()
FROM spans s
JOIN trace_info t ON t.request_id = s.trace_id
CROSS JOIN LATERAL (SELECT {usage} AS j) u
WHERE s.type IN ('LLM', 'CHAT_MODEL') AND s.model_name IS NOT NULL
  AND t.timestamp_ms < :until
"""), {"until": int(until.timestamp() * 1000)}).rowcount  # fmt: skip
        refresh_trace_costs(conn)  # as the job does with every write of span costs
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE llmops_span_costs, llmops_trace_costs"))
    print(f"  filled llmops_span_costs in {time.perf_counter() - t:.0f}s", flush=True)
    return n


if __name__ == "__main__":
    sys.exit(main())
