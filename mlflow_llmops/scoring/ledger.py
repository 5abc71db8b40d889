"""The scoring ledger: claim, then log, then confirm, so nothing is scored twice.

The key is (trace, scorer, version). A worker first claims the key (a row in
state ``claimed``), then logs the assessment to MLflow, then confirms (state
``done`` or ``error``). If it dies between the log and the confirmation, the
next worker that takes the stale claim over first looks on the trace for an
assessment of the same scorer and version, and adopts it instead of logging a
second one.

A failed attempt leaves the row in state ``error`` with its attempt count; a
later claim takes it again (``retry``) until ``max_attempts`` is reached, then
the row is ``failed`` and an MLflow Feedback with ``error=`` records it on the
trace.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
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


@dataclass(frozen=True)
class Claim:
    """The answer of ``Ledger.claim``.

    ``kind``: ``new`` (ours, fresh), ``retry`` (ours, earlier attempts failed),
    ``takeover`` (ours, a dead or stale holder may have logged already) or ``skip``.
    """

    kind: str
    attempts: int = 0  # attempts finished before this one
    assessment_id: str | None = None  # what an earlier attempt logged (an error Feedback)


_SKIP = Claim("skip")


class Ledger:
    """Ledger operations on the state store (tables created by ``SCORING_MIGRATIONS``)."""

    def __init__(
        self, store: StateStore, holder: str, *, lease_ttl_ms: int, max_attempts: int = 3
    ) -> None:
        self.store = store
        self.holder = holder
        self.lease_ttl_ms = lease_ttl_ms
        self.max_attempts = max_attempts

    def _where(self, key: LedgerKey) -> Any:
        t = ledger_table.c
        return sa.and_(t.trace_id == key.trace_id, t.scorer == key.scorer, t.version == key.version)

    def finished(self, scorer: str, version: int, trace_ids: Iterable[str]) -> set[str]:
        """Trace ids a scan of new traces leaves alone: done, given up on, or errored (those
        are tried again by ``retry_due`` after a backoff)."""
        ids = list(trace_ids)
        out: set[str] = set()
        t = ledger_table.c
        with self.store.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(t.trace_id).where(
                        t.scorer == scorer,
                        t.version == version,
                        t.state.in_(("done", "error", "failed")),
                        t.trace_id.in_(ids[i : i + 500]),
                    )
                )
                out.update(r[0] for r in rows)
        return out

    def retry_due(
        self, scorer: str, version: int, *, before_ms: int, limit: int,
        experiment_ids: Sequence[str] | None = None,
    ) -> list[str]:  # fmt: skip
        """Errored traces with attempts left whose last attempt ended before ``before_ms``."""
        t = ledger_table.c
        q = (
            sa.select(t.trace_id)
            .where(
                t.scorer == scorer,
                t.version == version,
                t.state == "error",
                sa.func.coalesce(t.attempts, 1) < self.max_attempts,
                sa.func.coalesce(t.scored_ms, t.claimed_ms) <= before_ms,
            )
            .order_by(t.trace_timestamp_ms)
            .limit(limit)
        )
        if experiment_ids:
            q = q.where(sa.or_(t.experiment_id.in_(list(experiment_ids)),
                               t.experiment_id.is_(None)))  # fmt: skip
        with self.store.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def claim(
        self, key: LedgerKey, *, now_ms: int, trace_timestamp_ms: int, experiment_id: str | None,
        job_id: str | None = None,
    ) -> Claim:  # fmt: skip
        """Take the key for this worker, or say why not (``Claim.kind``)."""
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
                        attempts=0,
                    )  # fmt: skip
                )
            return Claim("new")
        except sa.exc.IntegrityError:
            pass
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            q = sa.select(t.state, t.holder, t.claimed_ms, t.attempts, t.assessment_id)
            q = q.where(self._where(key))
            if self.store.dialect == "postgresql":
                q = q.with_for_update()
            row = conn.execute(q).first()
            if row is None or row.state in ("done", "failed"):
                return _SKIP
            if row.state == "error":
                attempts = 1 if row.attempts is None else row.attempts
                if attempts >= self.max_attempts:
                    return _SKIP
                kind = "retry"
            else:
                attempts = row.attempts or 0
                stale = row.claimed_ms + self.lease_ttl_ms < now_ms or holder_is_dead(row.holder)
                if row.holder != self.holder and not stale:
                    return _SKIP
                kind = "takeover"
            taken = conn.execute(
                ledger_table.update()
                .where(self._where(key), t.holder == row.holder, t.state == row.state)
                .values(
                    state="claimed",
                    holder=self.holder,
                    claimed_ms=now_ms,
                    job_id=job_id,
                    attempts=attempts,
                )  # fmt: skip
            ).rowcount
            return Claim(kind, attempts, row.assessment_id) if taken == 1 else _SKIP

    def confirm(
        self, key: LedgerKey, *, state: str, now_ms: int, value_num: float | None = None,
        passed: bool | None = None, assessment_id: str | None = None, error: str | None = None,
        cost_usd: float | None = None,
    ) -> None:  # fmt: skip
        """End this attempt; an ``error`` keeps what an earlier attempt logged, and the cost
        adds up over the attempts (failed judge calls are paid for too)."""
        t = ledger_table.c
        values: dict[str, Any] = {
            "state": state,
            "value_num": value_num,
            "passed": passed,
            "error": error[:4000] if error else None,
            "scored_ms": now_ms,
            "attempts": sa.func.coalesce(t.attempts, 0) + 1,
        }
        if cost_usd is not None:
            values["cost_usd"] = sa.func.coalesce(t.cost_usd, 0.0) + cost_usd
        if state != "error":
            values["assessment_id"] = assessment_id
        with self.store.engine.begin() as conn:
            conn.execute(
                ledger_table.update()
                .where(self._where(key), ledger_table.c.holder == self.holder)
                .values(**values)
            )

    def adopt(self, key: LedgerKey, *, state: str, now_ms: int, assessment_id: str,
              value_num: float | None = None, passed: bool | None = None) -> None:  # fmt: skip
        """Record what a crashed holder logged but did not confirm (no attempt is counted)."""
        with self.store.engine.begin() as conn:
            conn.execute(
                ledger_table.update()
                .where(self._where(key), ledger_table.c.holder == self.holder)
                .values(
                    state=state,
                    value_num=value_num,
                    passed=passed,
                    assessment_id=assessment_id,
                    scored_ms=now_ms,
                )  # fmt: skip
            )

    def forget_errors(self, scorer: str, version: int, trace_ids: Iterable[str]) -> int:
        """Drop the error rows of traces that no longer exist."""
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            return conn.execute(
                ledger_table.delete().where(
                    t.scorer == scorer, t.version == version, t.state == "error",
                    t.trace_id.in_(list(trace_ids)),
                )
            ).rowcount  # fmt: skip

    def reset_errors(self, scorer: str, version: int) -> int:
        """Give every errored or given-up trace of this scorer version a fresh set of
        attempts (``--retry-errors``); a later success overrides the logged error."""
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            return conn.execute(
                ledger_table.update()
                .where(t.scorer == scorer, t.version == version,
                       t.state.in_(("error", "failed")))
                .values(state="error", attempts=0)
            ).rowcount  # fmt: skip
