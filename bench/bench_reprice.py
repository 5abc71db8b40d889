"""Re-pricing end to end (read spans, price, write ``llmops_span_costs``) on PostgreSQL and
SQLite: the batch path (pricing attributes picked out by the database, vectorised pricing,
COPY / one executemany) against the row-at-a-time scalar path, in one run.

Goals: 1M LLM spans re-priced on PostgreSQL in under 60 s; batch path >= 20x the scalar
path per span. Every timed run starts from an empty ``llmops_span_costs`` (first pricing).
The batch path is timed on the whole store. The scalar path is timed on the same scope when
``--scalar-spans`` is 0 or covers the store; otherwise (it is far too slow for 1M spans)
both paths are timed on an identical subset, the first ``--scalar-spans`` spans in trace
time, and the ratio is the one on that subset (the output says so).

    python bench/bench_reprice.py [--spans 1000000] [--scalar-spans 50000] [--sqlite]
                                  [--keep-db NAME | --reuse-db NAME]

By default every run seeds a fresh PostgreSQL database and drops it at the end.
``--keep-db NAME`` seeds into database NAME (replacing it) and keeps it; ``--reuse-db
NAME`` skips seeding and measures a database kept earlier (``--spans`` is then ignored).
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
from mlflow_llmops.pricing.tables import span_costs, trace_costs  # noqa: E402
from mlflow_llmops.statestore.state import StateStore  # noqa: E402
from mlflow_llmops.testing.postgres import (  # noqa: E402
    create_database,
    drop_database,
    named_database,
    pg_available,
)
from mlflow_llmops.testing.seed import bulk_load, synthetic_traffic  # noqa: E402

START = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
SPANS_PER_TRACE = 1.45  # LLM spans per synthetic trace (measured on the generator)
EXPERIMENT = "bench-reprice"


def seed(url: str, spans: int) -> tuple[str, int]:
    """An MLflow store with about ``spans`` LLM spans; (experiment id, traces)."""
    exp = MlflowClient(tracking_uri=url).create_experiment(EXPERIMENT)
    traces = int(spans / SPANS_PER_TRACE)
    days = 30.0
    eng = sa.create_engine(url)
    n = bulk_load(eng, exp, synthetic_traffic(START, days, traces / (days * 24 * 60), seed=3),
                  seed=3)  # fmt: skip
    if eng.dialect.name == "postgresql":  # statistics, as autovacuum would have them
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    eng.dispose()
    return exp, n


def _clear_costs(url: str) -> None:
    """Empty our cost tables (if there), so every timed run prices from scratch."""
    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            for table in (span_costs.name, trace_costs.name):
                if sa.inspect(c).has_table(table):
                    c.execute(sa.text(f"DELETE FROM {table}") if eng.dialect.name == "sqlite"
                              else sa.text(f"TRUNCATE {table}"))  # fmt: skip
    finally:
        eng.dispose()


def _subset_end(url: str, exp: str, spans: int) -> int | None:
    """The trace time (ms) before which the first ``spans`` priced spans lie, or None
    when the store has no more than that."""
    eng = sa.create_engine(url)
    c = span_costs.c
    try:
        with eng.connect() as conn:
            return conn.execute(
                sa.select(c.trace_timestamp_ms).where(c.experiment_id == str(exp))
                .order_by(c.trace_timestamp_ms).offset(spans).limit(1)
            ).scalar()  # fmt: skip
    finally:
        eng.dispose()


def run(url: str, label: str, spans: int, scalar_spans: int, reuse: bool = False) -> None:
    t = time.perf_counter()
    if reuse:
        exp = MlflowClient(tracking_uri=url).get_experiment_by_name(EXPERIMENT).experiment_id
        print(f"{label}: reusing the seeded store", flush=True)
    else:
        exp, traces = seed(url, spans)
        print(f"{label}: seeded {traces:,} traces in {time.perf_counter() - t:.0f}s", flush=True)
    calc = CostCalculator.default()
    tmp = Path(tempfile.mkdtemp(prefix="bench-reprice-"))
    try:

        def timed(scalar: bool, **window: int) -> tuple[float, int]:
            _clear_costs(url)
            state = StateStore(f"sqlite:///{tmp / f'state-{time.monotonic_ns()}.db'}")
            t = time.perf_counter()
            r = reprice(url, state_store=state, experiment_ids=[exp], now=NOW, calculator=calc,
                        force=True, scalar=scalar, **window)  # fmt: skip
            secs = time.perf_counter() - t
            state.dispose()
            return secs, r.spans_written

        load = os.getloadavg()[0]
        batch_s, n = timed(False)
        per_batch = batch_s / max(n, 1) * 1e6
        print(f"RESULT reprice_{label} batch path {n:,} spans end to end: {batch_s:.1f}s "
              f"({per_batch:.1f} us/span; goal 1M under 60 s on PostgreSQL; "
              f"load {load:.2f})", flush=True)  # fmt: skip
        hi = _subset_end(url, exp, scalar_spans) if 0 < scalar_spans < n else None
        if hi is None:
            scope, window = f"the same {n:,} spans", {}
            sub_s, sub_n = batch_s, n
        else:
            window = {"since_ms": int(START.timestamp() * 1000) - 1, "until_ms": hi}
            sub_s, sub_n = timed(False, **window)
            scope = (f"an identical subset, the first {sub_n:,} of {n:,} spans "
                     "(the scalar path is too slow for the whole)")  # fmt: skip
        scalar_s, sn = timed(True, **window)
        if sn != sub_n:
            raise SystemExit(f"scalar path wrote {sn} spans, batch path {sub_n}: not comparable")
        per_sub = sub_s / max(sub_n, 1) * 1e6
        per_scalar = scalar_s / max(sn, 1) * 1e6
        print(f"RESULT reprice_{label} batch vs scalar on {scope}: batch {sub_s:.1f}s "
              f"({per_sub:.1f} us/span) vs scalar {scalar_s:.1f}s ({per_scalar:.1f} us/span) "
              f"= {per_scalar / per_sub:.1f}x (goal >= 20x; load {os.getloadavg()[0]:.2f})",
              flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--spans", type=int, default=int(os.environ.get("BENCH_REPRICE_SPANS", 1_000_000))
    )
    ap.add_argument("--scalar-spans", type=int, default=50_000,
                    help="time both paths on the first N spans (0: the scalar path on all)")  # fmt: skip
    ap.add_argument("--sqlite", action="store_true", help="also on SQLite (same size)")
    keep = ap.add_mutually_exclusive_group()
    keep.add_argument("--keep-db", metavar="NAME", help="seed into database NAME and keep it")
    keep.add_argument("--reuse-db", metavar="NAME", help="measure database NAME, kept earlier")
    args = ap.parse_args()
    if pg_available():
        if args.keep_db or args.reuse_db:
            url = named_database(args.keep_db or args.reuse_db, fresh=bool(args.keep_db))
        else:
            url = create_database("llmops_bench_reprice")
        try:
            run(url, "postgresql", args.spans, args.scalar_spans, reuse=bool(args.reuse_db))
        finally:
            if not (args.keep_db or args.reuse_db):
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
