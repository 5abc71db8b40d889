"""The scoring ledger: claim, then log, then confirm, so nothing is scored twice.

The key is (trace, scorer, version). A worker first claims the key (a row in
state ``claimed``), then logs the assessment to MLflow, then confirms (state
``done`` or ``error``). If it dies between the log and the confirmation, the
next worker that takes the stale claim over first looks on the trace for an
assessment of the same scorer and version, and adopts it instead of logging a
second one.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.scoring.registry import ledger_table
from mlflow_llmops.store.state import StateStore

_HOST = socket.gethostname()


def new_holder_id() -> str:
    """``host:pid:random``: unique per worker, and tells whether a local holder is alive."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """True only when the holder ran on this host and its process is gone."""
    host, _, rest = holder.partition(":")
    pid_s = rest.partition(":")[0]
    if host != _HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class LedgerKey:
    trace_id: str
    scorer: str
    version: int


class Ledger:
    """Ledger operations on the state store (tables created by ``SCORING_MIGRATIONS``)."""

    def __init__(self, store: StateStore, holder: str, *, lease_ttl_ms: int) -> None:
        self.store = store
        self.holder = holder
        self.lease_ttl_ms = lease_ttl_ms

    def _where(self, key: LedgerKey) -> Any:
        t = ledger_table.c
        return sa.and_(t.trace_id == key.trace_id, t.scorer == key.scorer, t.version == key.version)

    def finished(self, scorer: str, version: int, trace_ids: Iterable[str]) -> set[str]:
        """Trace ids already done or errored for this scorer version."""
        ids = list(trace_ids)
        out: set[str] = set()
        t = ledger_table.c
        with self.store.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(t.trace_id).where(
                        t.scorer == scorer,
                        t.version == version,
                        t.state.in_(("done", "error")),
                        t.trace_id.in_(ids[i : i + 500]),
                    )
                )
                out.update(r[0] for r in rows)
        return out

    def claim(
        self, key: LedgerKey, *, now_ms: int, trace_timestamp_ms: int, experiment_id: str | None,
        job_id: str | None = None,
    ) -> str:  # fmt: skip
        """``"new"`` (ours, fresh), ``"takeover"`` (ours, someone may have logged already)
        or ``"skip"`` (finished, or another live worker has it)."""
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    ledger_table.insert().values(
                        trace_id=key.trace_id,
                        scorer=key.scorer,
                        version=key.version,
                        state="claimed",
                        holder=self.holder,
                        claimed_ms=now_ms,
                        experiment_id=experiment_id,
                        trace_timestamp_ms=trace_timestamp_ms,
                        job_id=job_id,
                    )  # fmt: skip
                )
            return "new"
        except sa.exc.IntegrityError:
            pass
        with self.store.engine.begin() as conn:
            q = sa.select(ledger_table.c.state, ledger_table.c.holder, ledger_table.c.claimed_ms)
            q = q.where(self._where(key))
            if self.store.dialect == "postgresql":
                q = q.with_for_update()
            row = conn.execute(q).first()
            if row is None or row.state in ("done", "error"):
                return "skip"
            stale = row.claimed_ms + self.lease_ttl_ms < now_ms or holder_is_dead(row.holder)
            if row.holder != self.holder and not stale:
                return "skip"
            conn.execute(
                ledger_table.update()
                .where(self._where(key), ledger_table.c.holder == row.holder)
                .values(holder=self.holder, claimed_ms=now_ms, job_id=job_id)
            )
            return "takeover"

    def confirm(
        self, key: LedgerKey, *, state: str, now_ms: int, value_num: float | None = None,
        passed: bool | None = None, assessment_id: str | None = None, error: str | None = None,
        cost_usd: float | None = None,
    ) -> None:  # fmt: skip
        with self.store.engine.begin() as conn:
            conn.execute(
                ledger_table.update()
                .where(self._where(key), ledger_table.c.holder == self.holder)
                .values(
                    state=state,
                    value_num=value_num,
                    passed=passed,
                    assessment_id=assessment_id,
                    error=error[:4000] if error else None,
                    cost_usd=cost_usd,
                    scored_ms=now_ms,
                )  # fmt: skip
            )

    def forget_errors(self, scorer: str, version: int) -> int:
        """Drop error rows so that a rerun retries those traces."""
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            return conn.execute(
                ledger_table.delete().where(
                    t.scorer == scorer, t.version == version, t.state == "error"
                )
            ).rowcount
