"""Helpers of the tracing tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Where every created trace ends up: ``created`` is the sum of these at shutdown.
IDENTITY = ("exported", "sampled_out", "dropped", "failed", "unsent_at_shutdown", "spooled")


def accounted(stats: dict) -> tuple[int, int]:
    """(created, the sum of :data:`IDENTITY`): equal when no trace went uncounted."""
    return stats["created"], sum(stats.get(k, 0) for k in IDENTITY)


def identity_holds(stats: dict) -> bool:
    created, total = accounted(stats)
    return created == total


def count_traces(db_path: Path | str) -> int:
    with sqlite3.connect(str(db_path)) as db:
        return db.execute("select count(*) from trace_info").fetchone()[0]


def count_spans(db_path: Path | str) -> int:
    with sqlite3.connect(str(db_path)) as db:
        return db.execute("select count(*) from spans").fetchone()[0]


def run_loadgen(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT),
    )  # fmt: skip


def memory_dir(fallback: Path) -> Path:
    """A directory in memory (/dev/shm) when available: SQLite stores there are real but
    skip the disk's fsync, which dominates export time on slow CI disks."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return fallback
    d = Path(tempfile.mkdtemp(prefix="llmops-tracing-", dir=shm))
    _CREATED.append(d)
    return d


_CREATED: list[Path] = []
