"""Sanity figure for Spark as an engine (issue 11): the same query on Spark SQL
(``local[2]``) and on DuckDB over the same Parquet export, with the same rows.

Not a race: on one machine DuckDB wins by design; Spark is the path to a cluster
(``--master spark://...``/``yarn`` over ``s3a://`` exports), and this checks that the
path works and what a local session costs per query.

1. Seed N traces (default 50,000) over 14 days with the bulk loader into a SQLite
   database whose schema MLflow created, and export them to Parquet.
2. ``cost_by_model_day`` on DuckDB and on Spark (session started once, views
   registered once; median of R runs each), rows compared.

Usage: python bench/bench_spark.py [--traces N] [--runs R] [--master URL]
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

import sqlalchemy as sa  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from mlflow_llmops.analytics.export import export_parquet, read_export  # noqa: E402
from mlflow_llmops.analytics.queries import get_query, run_query  # noqa: E402
from mlflow_llmops.analytics.views import create_views  # noqa: E402
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


def same(a: list[tuple], b: list[tuple]) -> bool:
    def eq(x: object, y: object) -> bool:
        if isinstance(x, float) or isinstance(y, float):
            return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9)  # type: ignore[arg-type]
        return x == y

    return len(a) == len(b) and all(
        len(r) == len(s) and all(eq(x, y) for x, y in zip(r, s, strict=True))
        for r, s in zip(a, b, strict=True)
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()
    try:
        from mlflow_llmops.analytics.spark import run_query_spark, spark_session
    except ImportError:
        print("pyspark is required: pip install '.[spark]'")
        return 1
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        print("a Java runtime is required for Spark (apt-get install default-jre-headless)")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    try:
        url = f"sqlite:///{tmp / 'mlflow.db'}"
        client = MlflowClient(url)  # MLflow creates its schema
        exp_id = client.create_experiment("bench-spark", artifact_location=str(tmp / "a"))
        engine = sa.create_engine(url)
        rate = args.traces / (DAYS * 1440)
        traffic = synthetic_traffic(NOW - timedelta(days=DAYS), days=DAYS, rate_per_min=rate,
                                    seed=1)  # fmt: skip
        t = time.perf_counter()
        n = bulk_load(engine, exp_id, traffic, batch_size=10_000, seed=1)
        create_views(engine)
        export_parquet(engine, tmp / "parquet", now=NOW)
        print(f"seeded and exported {n:,} traces in {time.perf_counter() - t:.0f}s", flush=True)

        q = get_query("cost_by_model_day")
        full = {"since_ms": NOW - timedelta(days=DAYS + 1), "until_ms": NOW}
        duck = read_export(tmp / "parquet")
        dk_s, dk = timed(lambda: run_query(q, duck, full, now=NOW), args.runs)

        t = time.perf_counter()
        spark = spark_session(args.master)
        start_s = time.perf_counter() - t
        # first run registers the views over the export; later runs reuse them
        t = time.perf_counter()
        first = run_query_spark(q, tmp / "parquet", full, now=NOW, spark=spark)
        first_s = time.perf_counter() - t
        sp_s, sp = timed(lambda: run_query_spark(q, None, full, now=NOW, spark=spark), args.runs)
        spark.stop()
        ok = same(sp.rows, dk.rows) and same(first.rows, dk.rows)  # type: ignore[union-attr]
        print(f"RESULT cost_by_model_day {n:,} traces: spark {args.master} median {sp_s:.3f}s "
              f"(session start {start_s:.1f}s, first query with views {first_s:.2f}s) vs "
              f"duckdb median {dk_s:.3f}s = {sp_s / dk_s:.1f}x duckdb's time; "
              f"{len(dk.rows)} rows, same rows: {ok}")  # type: ignore[union-attr]  # fmt: skip
        engine.dispose()
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
