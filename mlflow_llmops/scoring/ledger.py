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

Scoring runs claim and confirm in batches (``claim_many``: one multi-row
``INSERT ... ON CONFLICT DO NOTHING RETURNING``; ``confirm_many``: one
transaction), with the same states and the same rules as one key at a time: a
batch is logged to MLflow before it is confirmed, so a crash in between leaves
claimed rows whose assessments the next holder adopts.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.scoring.registry import ledger_table
from mlflow_llmops.statestore.state import StateStore

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
    ``takeover`` (ours, a dead or stale holder may have logged already), ``skip``
    (finished: leave it alone) or ``held`` (another live worker holds it: not ours now,
    not finished either; ask again at ``expires_ms``, when its claim goes stale).
    """

    kind: str
    attempts: int = 0  # attempts finished before this one
    assessment_id: str | None = None  # what an earlier attempt logged (an error Feedback)
    expires_ms: int | None = None  # held: when the holder's claim may be taken over

    @property
    def ours(self) -> bool:
        """Whether this worker now holds the key and must score it."""
        return self.kind in ("new", "retry", "takeover")


_SKIP = Claim("skip")


@dataclass(frozen=True)
class Confirmation:
    """How one attempt ended, for ``Ledger.confirm_many``. ``adopted``: what a crashed holder
    logged, recorded without counting an attempt or a cost."""

    key: LedgerKey
    state: str  # done | error | failed
    now_ms: int
    value_num: float | None = None
    passed: bool | None = None
    assessment_id: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    adopted: bool = False
    #: the cost was already recorded by ``Ledger.add_cost`` when the call returned
    cost_paid: bool = False


def relaxed_commit(conn: sa.Connection) -> None:
    """PostgreSQL: commit this transaction without waiting for the WAL flush.

    Only for writes whose loss in a *database* crash is repaired by the protocol: a lost
    confirmation leaves the row claimed, and the next holder adopts the assessment MLflow
    already has; a lost lease or job-item update makes the item leased again, and the
    ledger (claims commit normally) skips or adopts it. Never for claims: a lost claim
    would let a second worker score the trace again. Saves a disk flush per batch."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


#: ``_confirm_many_pg``: array parameter name -> SQL type of its elements (in VALUES order).
_CONFIRM_ARRAYS = {
    "trace_id": "TEXT",
    "scorer": "TEXT",
    "version": "INTEGER",
    "state": "TEXT",
    "value_num": "DOUBLE PRECISION",
    "passed": "BOOLEAN",
    "error": "TEXT",
    "now_ms": "BIGINT",
    "add_cost": "DOUBLE PRECISION",
    "assessment_id": "TEXT",
    "adopted": "BOOLEAN",
    "keep_assessment": "BOOLEAN",
}
_CONFIRM_PG = sa.text(
    f"UPDATE {ledger_table.name} AS l SET state = v.state, value_num = v.value_num, "
    "passed = v.passed, scored_ms = v.now_ms, "
    "assessment_id = CASE WHEN v.keep_assessment THEN l.assessment_id "
    "ELSE v.assessment_id END, "
    "error = CASE WHEN v.adopted THEN l.error ELSE v.error END, "
    "attempts = CASE WHEN v.adopted THEN l.attempts ELSE COALESCE(l.attempts, 0) + 1 END, "
    "cost_usd = CASE WHEN v.add_cost IS NULL THEN l.cost_usd "
    "ELSE COALESCE(l.cost_usd, 0) + v.add_cost END "
    "FROM unnest("
    + ", ".join(f"CAST(:{k} AS {t}[])" for k, t in _CONFIRM_ARRAYS.items())
    + f") AS v({', '.join(_CONFIRM_ARRAYS)}) "
    "WHERE l.trace_id = v.trace_id AND l.scorer = v.scorer "
    "AND l.version = v.version AND l.holder = :holder"
)
#: ``claim_many`` on PostgreSQL: the new keys of one scorer version from three arrays.
_CLAIM_PG = sa.text(
    f"INSERT INTO {ledger_table.name} (trace_id, trace_timestamp_ms, experiment_id, scorer, "
    "version, state, holder, claimed_ms, job_id, attempts) "
    "SELECT u.trace_id, u.ts, u.experiment_id, :scorer, :version, 'claimed', :holder, :now_ms, "
    ":job_id, 0 FROM unnest(CAST(:trace_ids AS TEXT[]), CAST(:timestamps AS BIGINT[]), "
    "CAST(:experiment_ids AS TEXT[])) AS u(trace_id, ts, experiment_id) "
    "ON CONFLICT (trace_id, scorer, version) DO NOTHING RETURNING trace_id"
)


class GroupCommit:
    """``submit(item)`` returns once ``item`` is written: items that arrive while one
    batch is being written are written together by the next caller, in one transaction.

    Each caller still waits for its own item to commit (nothing is acknowledged before it is
    durable); what it saves is the transactions. Sixteen judge threads each recording a cost
    as their call returns made one write transaction each: on SQLite every one queues for the
    database lock, and a waiter polls it with sleeps of growing length (milliseconds each,
    on the judge slot's critical path), while the holder itself may wait for the GIL."""

    def __init__(self, write: Callable[[list[Any]], None]) -> None:
        self._write = write
        self._cv = threading.Condition()
        self._pending: list[list[Any]] = []  # [item, done, error]
        self._busy = False

    def submit(self, item: Any) -> None:
        entry: list[Any] = [item, False, None]
        with self._cv:
            self._pending.append(entry)
            while self._busy and not entry[1]:
                self._cv.wait()
            if not entry[1]:  # this caller writes what is waiting, its own item included
                self._busy = True
                batch, self._pending = self._pending, []
        if entry[1]:
            if entry[2] is not None:
                raise entry[2]
            return
        error: BaseException | None = None
        try:
            self._write([e[0] for e in batch])
        except BaseException as e:  # noqa: BLE001 - raised to every caller of the batch
            error = e
        with self._cv:
            for e in batch:
                e[1], e[2] = True, error
            self._busy = False
            self._cv.notify_all()
        if error is not None:
            raise error


class Ledger:
    """Ledger operations on the state store (tables created by ``SCORING_MIGRATIONS``)."""

    def __init__(
        self, store: StateStore, holder: str, *, lease_ttl_ms: int, max_attempts: int = 3
    ) -> None:
        self.store = store
        self.holder = holder
        self.lease_ttl_ms = lease_ttl_ms
        self.max_attempts = max_attempts
        self._costs = GroupCommit(self._write_costs)

    def _where(self, key: LedgerKey) -> Any:
        t = ledger_table.c
        return sa.and_(t.trace_id == key.trace_id, t.scorer == key.scorer, t.version == key.version)

    def finished(
        self,
        scorer: str,
        version: int,
        trace_ids: Iterable[str],
        states: Sequence[str] = ("done", "error", "failed"),
    ) -> set[str]:
        """Trace ids a scan of new traces leaves alone: done, given up on, or errored (those
        are tried again by ``retry_due`` after a backoff)."""
        ids = list(trace_ids)
        if not ids:
            return set()
        out: set[str] = set()
        t = ledger_table.c
        with self.store.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(t.trace_id).where(
                        t.scorer == scorer,
                        t.version == version,
                        t.state.in_(tuple(states)),
                        t.trace_id.in_(ids[i : i + 500]),
                    )
                )
                out.update(r[0] for r in rows)
        return out

    def retry_due(
        self,
        scorer: str,
        version: int,
        *,
        before_ms: int,
        limit: int,
        experiment_ids: Sequence[str] | None = None,
    ) -> list[str]:
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
            q = q.where(
                sa.or_(t.experiment_id.in_(list(experiment_ids)), t.experiment_id.is_(None))
            )
        with self.store.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def claim(
        self,
        key: LedgerKey,
        *,
        now_ms: int,
        trace_timestamp_ms: int,
        experiment_id: str | None,
        job_id: str | None = None,
    ) -> Claim:
        """Take the key for this worker, or say why not (``Claim.kind``)."""
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    ledger_table.insert().values(
                        **self._new_row(key, now_ms, trace_timestamp_ms, experiment_id, job_id)
                    )
                )
            return Claim("new")
        except sa.exc.IntegrityError:
            pass
        return self._take_existing(key, now_ms=now_ms, job_id=job_id)

    def claim_many(
        self,
        items: Sequence[tuple[LedgerKey, int, str | None]],
        *,
        now_ms: int,
        job_id: str | None = None,
    ) -> list[Claim]:
        """``claim`` for many ``(key, trace_timestamp_ms, experiment_id)`` at once, in order.

        The new keys are inserted by one statement (``ON CONFLICT DO NOTHING ... RETURNING``),
        finished ones are skipped after one read, and only the rest (errors to retry, stale
        claims) go through ``claim`` one by one."""
        if not items:
            return []
        if not self._batch_insert_ok():
            return [
                self.claim(k, now_ms=now_ms, trace_timestamp_ms=ts, experiment_id=e, job_id=job_id)
                for k, ts, e in items
            ]
        insert = _dialect_insert(self.store.dialect)
        t = ledger_table.c
        by_scorer: dict[tuple[str, int], list[tuple[LedgerKey, int, str | None]]] = {}
        for item in items:
            by_scorer.setdefault((item[0].scorer, item[0].version), []).append(item)
        claims: dict[LedgerKey, Claim] = {}
        for (scorer, version), group in by_scorer.items():
            # one order for every writer, so two processes inserting overlapping keys on
            # PostgreSQL wait for each other instead of deadlocking
            group = sorted(group, key=lambda i: i[0].trace_id)
            with self.store.engine.begin() as conn:
                if self.store.dialect == "postgresql":
                    # one statement whatever the batch size: the keys as arrays
                    taken = set(
                        conn.execute(
                            _CLAIM_PG,
                            {
                                "scorer": scorer,
                                "version": version,
                                "holder": self.holder,
                                "now_ms": now_ms,
                                "job_id": job_id,
                                "trace_ids": [k.trace_id for k, _, _ in group],
                                "timestamps": [ts for _, ts, _ in group],
                                "experiment_ids": [e for _, _, e in group],
                            },
                        ).scalars()
                    )
                else:
                    # one cached statement run with many parameter sets: SQLAlchemy sends
                    # them as multi-row INSERTs ("insertmanyvalues") and gathers the
                    # RETURNING rows, without compiling a new statement for every batch
                    stmt = (
                        insert(ledger_table)
                        .on_conflict_do_nothing(index_elements=["trace_id", "scorer", "version"])
                        .returning(t.trace_id)
                    )
                    rows = [self._new_row(k, now_ms, ts, e, job_id) for k, ts, e in group]
                    taken = {r[0] for r in conn.execute(stmt, rows)}
            rest = [k for k, _, _ in group if k.trace_id not in taken]
            finished = self.finished(
                scorer, version, (k.trace_id for k in rest), states=("done", "failed")
            )
            for k, _, _ in group:
                if k.trace_id in taken:
                    claims[k] = Claim("new")
                elif k.trace_id in finished:
                    claims[k] = _SKIP
                else:
                    claims[k] = self._take_existing(k, now_ms=now_ms, job_id=job_id)
        return [claims[k] for k, _, _ in items]

    def _batch_insert_ok(self) -> bool:
        return self.store.dialect in ("sqlite", "postgresql") and bool(
            getattr(self.store.engine.dialect, "insert_returning", False)
        )

    def _new_row(
        self,
        key: LedgerKey,
        now_ms: int,
        trace_timestamp_ms: int,
        experiment_id: str | None,
        job_id: str | None,
    ) -> dict[str, Any]:
        return {
            "trace_id": key.trace_id,
            "scorer": key.scorer,
            "version": key.version,
            "state": "claimed",
            "holder": self.holder,
            "claimed_ms": now_ms,
            "experiment_id": experiment_id,
            "trace_timestamp_ms": trace_timestamp_ms,
            "job_id": job_id,
            "attempts": 0,
        }

    def _take_existing(self, key: LedgerKey, *, now_ms: int, job_id: str | None) -> Claim:
        """Claim a key whose row exists: an error to retry, or a stale or dead claim."""
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
                expires = row.claimed_ms + self.lease_ttl_ms
                stale = expires < now_ms or holder_is_dead(row.holder)
                if row.holder != self.holder and not stale:
                    return Claim("held", attempts, row.assessment_id, expires_ms=expires + 1)
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
                )
            ).rowcount
            return Claim(kind, attempts, row.assessment_id) if taken == 1 else _SKIP

    def add_cost(self, key: LedgerKey, cost_usd: float) -> None:
        """Record a judge call's cost as soon as it is paid, before its result is written:
        a crash in between cannot lose it (``Confirmation.cost_paid`` then adds nothing).
        Returns once written; the costs of calls returning together share a transaction."""
        self._costs.submit((key, cost_usd))

    def _write_costs(self, costs: list[tuple[LedgerKey, float]]) -> None:
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            conn.execute(
                ledger_table.update()
                .where(
                    t.trace_id == sa.bindparam("k_trace"),
                    t.scorer == sa.bindparam("k_scorer"),
                    t.version == sa.bindparam("k_version"),
                    t.holder == self.holder,
                )
                .values(
                    cost_usd=sa.func.coalesce(t.cost_usd, 0.0)
                    + sa.bindparam("b_cost", type_=sa.Float)
                ),
                [
                    {
                        "k_trace": k.trace_id,
                        "k_scorer": k.scorer,
                        "k_version": k.version,
                        "b_cost": c,
                    }
                    for k, c in costs
                ],
            )

    def job_spend(self, job_id: str) -> float:
        """Judge spend of a backfill job: the costs recorded on the ledger rows it claimed."""
        t = ledger_table.c
        with self.store.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.sum(t.cost_usd)).where(t.job_id == job_id)
            ).scalar()
        return float(total or 0.0)

    def confirm(
        self,
        key: LedgerKey,
        *,
        state: str,
        now_ms: int,
        value_num: float | None = None,
        passed: bool | None = None,
        assessment_id: str | None = None,
        error: str | None = None,
        cost_usd: float | None = None,
    ) -> None:
        """End this attempt; an ``error`` keeps what an earlier attempt logged, and the cost
        adds up over the attempts (failed judge calls are paid for too)."""
        self.confirm_many(
            [Confirmation(key, state, now_ms, value_num, passed, assessment_id, error, cost_usd)]
        )

    def adopt(
        self,
        key: LedgerKey,
        *,
        state: str,
        now_ms: int,
        assessment_id: str,
        value_num: float | None = None,
        passed: bool | None = None,
    ) -> None:
        """Record what a crashed holder logged but did not confirm (no attempt is counted)."""
        self.confirm_many(
            [Confirmation(key, state, now_ms, value_num, passed, assessment_id, adopted=True)]
        )

    def confirm_many(self, items: Sequence[Confirmation]) -> None:
        """``confirm`` (and ``adopt``) many keys in one transaction: one executemany per
        shape of update. Only rows this worker still holds change."""
        if not items:
            return
        if self.store.dialect == "postgresql":
            self._confirm_many_pg(items)
            return
        t = ledger_table.c
        shapes: dict[tuple[bool, bool, bool], list[dict[str, Any]]] = {}
        for c in items:
            shape = (
                c.adopted,
                c.state == "error",
                c.cost_usd is not None and not c.adopted and not c.cost_paid,
            )
            shapes.setdefault(shape, []).append(
                {
                    "k_trace": c.key.trace_id,
                    "k_scorer": c.key.scorer,
                    "k_version": c.key.version,
                    "b_state": c.state,
                    "b_value": c.value_num,
                    "b_passed": c.passed,
                    "b_error": c.error[:4000] if c.error else None,
                    "b_now": c.now_ms,
                    "b_cost": c.cost_usd,
                    "b_assessment": c.assessment_id,
                }
            )
        with self.store.engine.begin() as conn:
            for (adopted, is_error, has_cost), params in shapes.items():
                values: dict[str, Any] = {
                    "state": sa.bindparam("b_state"),
                    "value_num": sa.bindparam("b_value"),
                    "passed": sa.bindparam("b_passed"),
                    "scored_ms": sa.bindparam("b_now"),
                }
                if adopted:
                    values["assessment_id"] = sa.bindparam("b_assessment")
                else:
                    values["error"] = sa.bindparam("b_error")
                    values["attempts"] = sa.func.coalesce(t.attempts, 0) + 1
                    if has_cost:
                        values["cost_usd"] = sa.func.coalesce(t.cost_usd, 0.0) + sa.bindparam(
                            "b_cost", type_=sa.Float
                        )
                    if not is_error:
                        values["assessment_id"] = sa.bindparam("b_assessment")
                conn.execute(
                    ledger_table.update()
                    .where(
                        t.trace_id == sa.bindparam("k_trace"),
                        t.scorer == sa.bindparam("k_scorer"),
                        t.version == sa.bindparam("k_version"),
                        t.holder == self.holder,
                    )
                    .values(**values),
                    params,
                )

    def _confirm_many_pg(self, items: Sequence[Confirmation]) -> None:
        """``confirm_many`` on PostgreSQL: one ``UPDATE ... FROM unnest(arrays)`` for the whole
        batch, the shapes of ``confirm_many`` spelled as CASEs. An executemany is a statement
        per row; a ``VALUES`` list is a new statement text (and thousands of parameters) per
        batch; twelve arrays keep one cached statement whatever the batch size."""
        cols: dict[str, list[Any]] = {k: [] for k in _CONFIRM_ARRAYS}
        for c in items:
            add_cost = (
                c.cost_usd if c.cost_usd is not None and not (c.adopted or c.cost_paid) else None
            )
            for k, v in zip(
                _CONFIRM_ARRAYS,
                (
                    c.key.trace_id,
                    c.key.scorer,
                    c.key.version,
                    c.state,
                    c.value_num,
                    c.passed,
                    c.error[:4000] if c.error else None,
                    c.now_ms,
                    add_cost,
                    c.assessment_id,
                    c.adopted,
                    not c.adopted and c.state == "error",
                ),
                strict=True,
            ):
                cols[k].append(v)
        with self.store.engine.begin() as conn:  # one transaction, as on the other stores
            relaxed_commit(conn)
            conn.execute(_CONFIRM_PG, {**cols, "holder": self.holder})

    def release(self, claims: Sequence[tuple[LedgerKey, Claim]]) -> None:
        """Give back keys claimed but never scored (a run stopped before their turn): a new
        claim is removed, a retry goes back to ``error`` with its attempts unchanged. A
        takeover stays claimed: the holder it was taken from may have logged, and only the
        adoption check of a later takeover may decide that."""
        t = ledger_table.c
        new = [k for k, c in claims if c.kind == "new"]
        retry = [k for k, c in claims if c.kind == "retry"]
        with self.store.engine.begin() as conn:
            for keys, stmt in (
                (new, ledger_table.delete()),
                (retry, ledger_table.update().values(state="error")),
            ):
                for k in keys:
                    conn.execute(
                        stmt.where(self._where(k), t.holder == self.holder, t.state == "claimed")
                    )

    def forget_errors(self, scorer: str, version: int, trace_ids: Iterable[str]) -> int:
        """Drop the error rows of traces that no longer exist."""
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            return conn.execute(
                ledger_table.delete().where(
                    t.scorer == scorer,
                    t.version == version,
                    t.state == "error",
                    t.trace_id.in_(list(trace_ids)),
                )
            ).rowcount

    def reset_errors(self, scorer: str, version: int) -> int:
        """Give every errored or given-up trace of this scorer version a fresh set of
        attempts (``--retry-errors``); a later success overrides the logged error."""
        t = ledger_table.c
        with self.store.engine.begin() as conn:
            return conn.execute(
                ledger_table.update()
                .where(t.scorer == scorer, t.version == version, t.state.in_(("error", "failed")))
                .values(state="error", attempts=0)
            ).rowcount
