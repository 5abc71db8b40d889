"""Re-pricing end to end (read spans, price, write ``llmops_span_costs``) on PostgreSQL and
SQLite: the batch path (pricing attributes picked out by the database, vectorised pricing,
COPY / one executemany) against the row-at-a-time scalar path, in one run.

Goals: 1M LLM spans re-priced on PostgreSQL in under 60 s; batch path >= 20x the scalar
path per span. The scalar path is timed on a slice of the same store (it is far too slow
for the whole), so its figure is per span.

    python bench/bench_reprice.py [--spans 1000000] [--scalar-spans 30000] [--sqlite]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")  # MLflow: never fetch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from mlflow_llmops.pricing import CostCalculator, reprice  # noqa: E402
from mlflow_llmops.store.state import StateStore  # noqa: E402
from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available  # noqa: E402
from mlflow_llmops.testing.seed import bulk_load, synthetic_traffic  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
SPANS_PER_TRACE = 1.45  # LLM spans per synthetic trace (measured on the generator)


def seed(url: str, spans: int) -> tuple[str, int, int]:
    """An MLflow store with about ``spans`` LLM spans; (experiment, last ts of the slice)."""
    exp = MlflowClient(tracking_uri=url).create_experiment("bench-reprice")
    traces = int(spans / SPANS_PER_TRACE)
    days = 30.0
    n = bulk_load(sa.create_engine(url), exp,
                  synthetic_traffic(START, days, traces / (days * 24 * 60), seed=3), seed=3)  # fmt: skip
    return exp, n, int(START.timestamp() * 1000)


def run(url: str, label: str, spans: int, scalar_spans: int) -> None:
    t = time.perf_counter()
    exp, traces, t0 = seed(url, spans)
    print(f"{label}: seeded {traces:,} traces in {time.perf_counter() - t:.0f}s", flush=True)
    calc = CostCalculator.default()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reprice-"))
    try:
        state = StateStore(f"sqlite:///{tmp / 'state.db'}")
        t = time.perf_counter()
        r = reprice(url, state_store=state, experiment_ids=[exp], now=NOW, calculator=calc,
                    force=True)  # fmt: skip
        batch_s = time.perf_counter() - t
        n = r.spans_written
        # the scalar path on the first slice of the same history (timestamps ascend)
        hi = t0 + int(30 * 86_400_000 * scalar_spans / max(n, 1))
        t = time.perf_counter()
        rs = reprice(url, state_store=state, experiment_ids=[exp], now=NOW, calculator=calc,
                     force=True, scalar=True, since_ms=t0, until_ms=hi)  # fmt: skip
        scalar_s = time.perf_counter() - t
        per_batch = batch_s / n * 1e6
        per_scalar = scalar_s / max(rs.spans_written, 1) * 1e6
        print(f"RESULT reprice_{label} {n:,} spans end to end: batch {batch_s:.1f}s "
              f"({per_batch:.1f} us/span) vs scalar {per_scalar:.1f} us/span on "
              f"{rs.spans_written:,} spans = {per_scalar / per_batch:.1f}x "
              f"(goals: 1M under 60 s on PostgreSQL, >= 20x)", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--spans", type=int, default=int(os.environ.get("BENCH_REPRICE_SPANS", 1_000_000))
    )
    ap.add_argument("--scalar-spans", type=int, default=30_000)
    ap.add_argument("--sqlite", action="store_true", help="also on SQLite (same size)")
    args = ap.parse_args()
    if pg_available():
        url = create_database("llmops_bench_reprice")
        try:
            run(url, "postgresql", args.spans, args.scalar_spans)
        finally:
            drop_database(url)
    else:
        print("PostgreSQL not reachable on 127.0.0.1:5432: skipping it")
    if args.sqlite or not pg_available():
        tmp = Path(tempfile.mkdtemp(prefix="bench-reprice-sqlite-"))
        try:
            run(f"sqlite:///{tmp / 'mlflow.db'}", "sqlite", args.spans, args.scalar_spans)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
