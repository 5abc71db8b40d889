"""Benchmark of the SQL cost analyses (issue 4).

1. Seed N traces (default 1,000,000; about 2.5 spans each) over 14 days with the bulk
   loader into a fresh PostgreSQL database whose schema MLflow created.
2. "Cost by model per day" (sql/cost_by_model_day.sql) on PostgreSQL (views over
   MLflow's tables) and on DuckDB over a Parquet export. Goal: under 2 s.
3. The same question over a 20,000-trace experiment through MLflow's public API
   (``mlflow.search_traces`` with spans, then pandas) against our SQL, in one run.
   Goal: SQL at least 50 times faster.

Usage: python bench/bench_sql.py [--traces N] [--baseline-traces M] [--runs R]
                                  [--keep-db NAME | --reuse-db NAME]

By default every run seeds a fresh database and drops it at the end. ``--keep-db NAME``
seeds into database NAME (replacing it) and keeps it; ``--reuse-db NAME`` skips seeding
and measures a database kept earlier (``--traces`` is then only used for labels).
"""

from __future__ import annotations

import argparse
import os
import re
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

from mlflow_llmops.store.export import export_parquet, read_export  # noqa: E402
from mlflow_llmops.store.queries import get_query, run_query  # noqa: E402
from mlflow_llmops.store.views import create_views  # noqa: E402
from mlflow_llmops.testing.postgres import (  # noqa: E402
    ADMIN_URL,
    create_database,
    drop_database,
    pg_available,
)
from mlflow_llmops.testing.seed import bulk_load, synthetic_traffic  # noqa: E402

NOW = datetime(2026, 3, 15, tzinfo=UTC)
DAYS = 14


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
    ap.add_argument("--runs", type=int, default=5)
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
        create_views(engine)  # on PostgreSQL also builds the index on spans, once
        print(f"create_views took {time.perf_counter() - t:.1f}s", flush=True)
        q = get_query("cost_by_model_day")
        full = {"since_ms": NOW - timedelta(days=DAYS + 1), "until_ms": NOW}

        pg_s, pg_res = timed(lambda: run_query(q, engine, full, now=NOW), args.runs)
        print(f"RESULT cost_by_model_day postgres {n + m:,} traces: median {pg_s:.3f}s "
              f"({len(pg_res.rows)} rows; goal < 2s)", flush=True)  # fmt: skip

        t = time.perf_counter()
        export_parquet(engine, tmp / "parquet", now=NOW)
        export_s = time.perf_counter() - t
        duck = read_export(tmp / "parquet")
        dk_s, dk_res = timed(lambda: run_query(q, duck, full, now=NOW), args.runs)
        same = [r[:4] for r in dk_res.rows] == [r[:4] for r in pg_res.rows]
        print(f"RESULT cost_by_model_day duckdb/parquet {n + m:,} traces: median {dk_s:.3f}s "
              f"(export took {export_s:.0f}s; same rows as postgres: {same}; goal < 2s)")  # fmt: skip

        # --- the same question through MLflow's public API, 20k traces ----------------
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
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (args.keep_db or args.reuse_db):
            drop_database(url)


def named_database(name: str, *, fresh: bool) -> str:
    """The URL of database ``name`` on the benchmark server; ``fresh`` drops and recreates it."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise SystemExit(f"--keep-db/--reuse-db: {name!r} is not a plain lower-case name")
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        exists = c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                           {"n": name}).scalar()  # fmt: skip
        if fresh:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        elif not exists:
            raise SystemExit(f"--reuse-db: no database {name!r}; seed it with --keep-db {name}")
    admin.dispose()
    return sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    sys.exit(main())
