"""Backfill: score history with one scorer version, within a budget, resumably.

A backfill is a job in the state store: its work list (trace ids, sampled and
filtered once at planning) and a spend counter. Any number of workers (the
same command on several machines) lease batches of the list, PostgreSQL with
``FOR UPDATE SKIP LOCKED``, SQLite under its write lock, so they split the work
with no overlap. The job id is derived from its arguments: rerunning the same
command resumes the same job from its checkpoint (the items not done). A window
given relative to now (``--since 30d``) is identified by that text, not by the
times it resolves to (which move with the clock): a rerun or a worker started
later joins the unfinished job, whose row keeps the times resolved when it was
created; once that job is done, the same text starts a new one. Each
trace goes through the scoring ledger (claim, log, confirm), so a crash or a
rerun never logs a second assessment for (trace, scorer, version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.core.clock import Clock, SystemClock, to_ms
from mlflow_llmops.errors import LlmopsError
from mlflow_llmops.scoring.ledger import Ledger, holder_is_dead, new_holder_id, relaxed_commit
from mlflow_llmops.scoring.mlflow_io import is_sql_store, load_traces, search_trace_rows
from mlflow_llmops.scoring.pipeline import ScoringPipeline, fewer_gc_pauses
from mlflow_llmops.scoring.ratelimit import RateLimiter
from mlflow_llmops.scoring.registry import (
    SCORING_MIGRATIONS,
    ScorerRegistry,
    backfill_items_table,
    backfill_jobs_table,
)
from mlflow_llmops.scoring.resolver import resolve
from mlflow_llmops.scoring.runner import (
    TraceOutcome,
    TraceScorer,
    combine_filters,
    resolve_experiment_ids,
    sampled,
)
from mlflow_llmops.statestore.state import StateStore

log = logging.getLogger(__name__)


class BackfillError(LlmopsError):
    """The backfill cannot start as asked; the message says what to change."""


@dataclass
class BackfillReport:
    job_id: str
    scorer: str
    version: int
    worker: str
    total: int = 0
    already_done: int = 0  # items finished before this worker started
    scored: int = 0
    errors: int = 0  # given up on by this worker (an error Feedback is on the trace)
    retried: int = 0  # failed attempts this worker tried again
    held: int = 0  # left leased: another live worker still holds their claim
    skipped: int = 0
    not_applicable: int = 0
    job_errors: int = 0  # items of the whole job given up on
    estimate_usd: float | None = None
    spent_usd: float = 0.0
    run_id: str | None = None  # the MLflow run of the job (``run_name``)
    since_ms: int | None = None  # the window, as resolved when the job was created
    until_ms: int | None = None
    status: str = "running"  # running | done | budget_exhausted
    error_samples: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """Every trace of a finished job was given up on (the CLI exits non-zero)."""
        return self.status == "done" and self.total > 0 and self.job_errors == self.total

    def summary(self) -> str:
        est = "n/a" if self.estimate_usd is None else f"${self.estimate_usd:.4f}"
        status = self.status
        if status == "done" and self.job_errors:
            status = f"done with {self.job_errors} errors (logged on the traces as Feedback errors)"
        lines = [
            f"backfill {self.job_id} {self.scorer}@v{self.version}: {status}",
            f"  traces in job {self.total}, done before this run {self.already_done}",
            f"  this worker: scored {self.scored}, errors {self.errors}, already scored "
            f"{self.skipped}, not applicable {self.not_applicable}"
            + (f", retried {self.retried} failed attempts" if self.retried else "")
            + (f", {self.held} held by another worker (rerun to finish)" if self.held else ""),
            f"  judge spend: estimate {est}, spent so far ${self.spent_usd:.4f}",
        ]
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id} (assessments and traces linked)")
        lines.extend(f"  error {e}" for e in self.error_samples)
        return "\n".join(lines)


def job_id_for(
    scorer: str,
    version: int,
    since_ms: int | None,
    until_ms: int | None,
    filter_string: str | None,
    sample_rate: float,
    experiment_ids: Sequence[str],
    *,
    window_key: str | None = None,
    generation: int = 0,
) -> str:
    """Same arguments, same job: rerunning a command resumes it. With ``window_key`` (the
    text of a relative window) the times are left out; ``generation`` counts the finished
    jobs of that window before this one."""
    parts: list[Any] = [
        scorer,
        version,
        since_ms,
        until_ms,
        filter_string or "",
        sample_rate,
        sorted(experiment_ids),
    ]
    if window_key is not None:
        parts[2:4] = [window_key, generation]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


#: Whether planning reads MLflow's SQL store in one query (off once MLflow's internals moved).
_FAST_PLAN = {"ok": True}


def _enumerate(
    client: Any, exp_ids: list[str], flt: str | None, scorer: str, rate: float
) -> list[tuple[str, int, str, str]]:
    if is_sql_store(client) and _FAST_PLAN["ok"]:
        try:
            return [
                r
                for r in search_trace_rows(client.store, exp_ids, flt)
                if sampled(r[0], scorer, rate)
            ]
        except (AttributeError, ImportError, TypeError):
            _FAST_PLAN["ok"] = False  # MLflow moved: its public search
            log.debug("fast backfill planning unavailable", exc_info=True)
    out, token = [], None
    while True:
        page = client.search_traces(
            locations=exp_ids,
            filter_string=flt,
            max_results=500,
            order_by=["timestamp_ms ASC"],
            include_spans=False,
            page_token=token,
        )
        for t in page:
            i = t.info
            if sampled(i.trace_id, scorer, rate):
                out.append(
                    (i.trace_id, i.timestamp_ms, i.request_preview or "", i.response_preview or "")
                )
        token = page.token
        if not token:
            return out


class BackfillJob:
    """State-store operations on one backfill job (work list, leases, spend)."""

    def __init__(self, store: StateStore, job_id: str, holder: str, lease_ttl_ms: int) -> None:
        self.store, self.job_id, self.holder, self.ttl = store, job_id, holder, lease_ttl_ms

    def row(self) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(
                sa.select(backfill_jobs_table).where(backfill_jobs_table.c.job_id == self.job_id)
            ).first()

    def create(self, values: dict[str, Any], items: list[tuple[str, int]]) -> bool:
        """Insert the job and its items at once; False if another worker already did."""
        try:
            with self.store.engine.begin() as conn:
                conn.execute(backfill_jobs_table.insert().values(job_id=self.job_id, **values))
                for i in range(0, len(items), 5000):
                    conn.execute(
                        backfill_items_table.insert(),
                        [
                            {
                                "job_id": self.job_id,
                                "trace_id": tid,
                                "trace_timestamp_ms": ts,
                                "state": "pending",
                            }
                            for tid, ts in items[i : i + 5000]
                        ],
                    )
            return True
        except sa.exc.IntegrityError:
            return False

    def counts(self) -> dict[str, int]:
        t = backfill_items_table.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.state, sa.func.count()).where(t.job_id == self.job_id).group_by(t.state)
            )
            return {s: int(n) for s, n in rows}

    def lease(self, n: int, now_ms: int) -> list[str]:
        """Up to ``n`` items for this worker: pending ones, or leases expired or held by a
        dead local process."""
        if n <= 0:
            return []
        t = backfill_items_table.c
        # pending items first, in time order (an index range); leases to take over only
        # when those run short (at the end of a job, or after a crash)
        ids = self._take(
            sa.select(t.trace_id)
            .where(t.job_id == self.job_id, t.state == "pending")
            .order_by(t.trace_timestamp_ms)
            .limit(n),
            now_ms,
        )
        if len(ids) == n:
            return ids
        with self.store.engine.connect() as conn:
            holders = [
                r[0]
                for r in conn.execute(
                    sa.select(t.holder)
                    .distinct()
                    .where(t.job_id == self.job_id, t.state == "leased")
                )
            ]
        dead = [h for h in holders if h and h != self.holder and holder_is_dead(h)]
        reclaim = sa.or_(t.lease_expires_ms < now_ms, t.holder.in_(dead or ["-"]))
        return ids + self._take(
            sa.select(t.trace_id)
            .where(t.job_id == self.job_id, t.state == "leased", reclaim)
            .order_by(t.trace_timestamp_ms)
            .limit(n - len(ids)),
            now_ms,
        )

    def _take(self, pick: Any, now_ms: int) -> list[str]:
        """Lease the items ``pick`` selects; on PostgreSQL ``SKIP LOCKED`` keeps two workers
        from taking the same ones."""
        t = backfill_items_table.c
        values = {"state": "leased", "holder": self.holder, "lease_expires_ms": now_ms + self.ttl}
        with self.store.engine.begin() as conn:
            relaxed_commit(conn)  # a lost lease: the item is leased again, the ledger decides
            if self.store.dialect == "postgresql":
                # a CTE, materialized: as an IN (subquery) the planner may rescan the LIMIT ...
                # SKIP LOCKED subquery for every row, and each rescan picks new rows
                picked = (
                    pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
                )
                ids = [
                    r[0]
                    for r in conn.execute(
                        backfill_items_table.update()
                        .where(
                            t.job_id == self.job_id, t.trace_id.in_(sa.select(picked.c.trace_id))
                        )
                        .values(**values)
                        .returning(t.trace_id)
                    )
                ]
            else:
                # one fetchall: row by row, each fetch gives the GIL away and waits to get
                # it back from the scorer threads (milliseconds a row under load)
                ids = list(conn.execute(pick).scalars().all())
                if ids:
                    conn.execute(
                        backfill_items_table.update()
                        .where(t.job_id == self.job_id, t.trace_id.in_(ids))
                        .values(**values)
                    )
        return ids

    def finish(self, results: Sequence[tuple[str, str]], spent: float | None = None) -> None:
        """Mark items ``done``/``error``; ``spent``: the job's spend so far (the ledger's sum
        of its judge costs), copied onto the job row for readers of the job."""
        t = backfill_items_table.c
        with self.store.engine.begin() as conn:
            relaxed_commit(conn)  # a lost finish: leased again, then skipped by the ledger
            for state in {s for _, s in results}:
                ids = [tid for tid, s in results if s == state]
                conn.execute(
                    backfill_items_table.update()
                    .where(
                        t.job_id == self.job_id,
                        t.holder == self.holder,
                        _one_of(t.trace_id, ids, self.store.dialect),
                    )
                    .values(state=state, lease_expires_ms=None)
                )
            if spent is not None:
                j = backfill_jobs_table.c
                conn.execute(
                    backfill_jobs_table.update()
                    .where(j.job_id == self.job_id)
                    .values(spent_usd=spent)
                )

    def release(self, ids: Sequence[str]) -> None:
        """Give back items this worker leased but never put to scoring (read ahead when the
        run stopped): pending again, for any worker, without waiting for the lease to expire."""
        if not ids:
            return
        t = backfill_items_table.c
        with self.store.engine.begin() as conn:
            conn.execute(
                backfill_items_table.update()
                .where(
                    t.job_id == self.job_id,
                    t.holder == self.holder,
                    t.state == "leased",
                    t.trace_id.in_(list(ids)),
                )
                .values(state="pending", holder=None, lease_expires_ms=None)
            )

    def set_status(self, status: str, now_ms: int) -> None:
        """Record this worker's view; a finished job is never set back to running."""
        j = backfill_jobs_table.c
        q = backfill_jobs_table.update().where(j.job_id == self.job_id)
        if status == "running":
            q = q.where(j.status != "done")
        with self.store.engine.begin() as conn:
            conn.execute(q.values(status=status, updated_ms=now_ms))

    def set_budget(self, max_cost_usd: float) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                backfill_jobs_table.update()
                .where(backfill_jobs_table.c.job_id == self.job_id)
                .values(max_cost_usd=max_cost_usd)
            )

    def retry_errors(self) -> None:
        """Put the errored items back in the work list."""
        t = backfill_items_table.c
        with self.store.engine.begin() as conn:
            conn.execute(
                backfill_items_table.update()
                .where(t.job_id == self.job_id, t.state == "error")
                .values(state="pending", holder=None)
            )


def _check_sample_rate(rate: float) -> None:
    if not 0 < rate <= 1:
        raise BackfillError(f"--sample-rate must be in (0, 1], got {rate}")


@dataclass(frozen=True)
class BackfillParams:
    """What one backfill is asked to do (the keyword arguments of ``backfill``), checked
    when built: a bad sample rate, window or budget raises ``BackfillError``.

    ``window_key``: the text of a window relative to now (the CLI passes ``--since`` and
    ``--until`` when one is a duration); the job is then found by it, and ``since_ms`` /
    ``until_ms`` only matter to the worker that creates the job. ``run_name``: record the
    job as an MLflow run of that name (one per job: a rerun or another worker joins it).
    ``on_plan(report, budget)`` is called once the job is planned, before scoring.
    """

    scorer: str
    since_ms: int | None = None
    until_ms: int | None = None
    filter_string: str | None = None
    sample_rate: float | None = None  # None: the scorer's
    max_cost_usd: float | None = None  # None: the job's budget (none for a new job)
    concurrency: int | None = None  # None: scoring.concurrency
    rate_limit_rps: float | None = None  # None: scoring.rate_limit_rps
    experiment_ids: Sequence[str] | None = None  # None: scoring.experiments
    worker_id: str | None = None  # None: host:pid:random
    retry_errors: bool = False
    progress: bool = True
    clock: Clock | None = None
    on_plan: Callable[[BackfillReport, float | None], None] | None = None
    window_key: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.experiment_ids is not None:
            object.__setattr__(self, "experiment_ids", tuple(self.experiment_ids))
        if self.sample_rate is not None:
            _check_sample_rate(self.sample_rate)
        if self.since_ms is not None and self.until_ms is not None:
            if self.until_ms <= self.since_ms:
                raise BackfillError("--until must be after --since")
        if self.max_cost_usd is not None and self.max_cost_usd <= 0:
            raise BackfillError(f"--max-cost-usd must be positive, got {self.max_cost_usd}")


@dataclass
class _Setup:
    """What the stages of one backfill share: its parameters and the scorer resolved."""

    config: Any
    store: StateStore
    params: BackfillParams
    clock: Clock
    spec: Any
    rate: float
    resolved: Any
    exp_ids: list[str]
    holder: str
    user_flt: str | None  # the filter asked for (or the scorer's), without the window

    @property
    def sc(self) -> Any:
        return self.config.scoring


@fewer_gc_pauses()
def backfill(
    config: Any,
    store: StateStore,
    *,
    params: BackfillParams | None = None,
    **fields: Any,
) -> BackfillReport:
    """Score every (sampled) trace of the window with the scorer's current version.

    Pass ``params=BackfillParams(...)``, or its fields as keyword arguments (``scorer=``,
    ``since_ms=``, ...). With ``run_name`` the job's assessments and traces are linked to
    its MLflow run and its results logged as metrics, as ``mlflow.genai.evaluate`` records
    an evaluation.
    """
    from mlflow.tracing.client import TracingClient

    p = _params_of(params, fields)
    s = _resolve_scorer(config, store, p)
    job, row = _find_job(s)
    # joining: the window is the one its creator resolved
    since_ms, until_ms = (p.since_ms, p.until_ms) if row is None else (row.since_ms, row.until_ms)
    flt = _window_filter(s.user_flt, since_ms, until_ms)
    client = TracingClient(config.tracking.uri)
    report = BackfillReport(job.job_id, s.spec.name, s.spec.version, s.holder)
    if row is None:
        row = _plan_job(s, job, client, flt, since_ms, until_ms)
    budget = _rejoin(s, job, row)
    _report_plan(report, job, row, budget, p.on_plan)
    worker, run = _start_worker(s, job, row)
    report.run_id = worker.run_id
    per_trace = (row.estimate_usd or 0.0) / row.total_items if row.total_items else 0.0
    bar = _progress_bar(report, s)
    loop = _BackfillLoop(job, worker, client, s.clock, s.sc, report, bar, budget, per_trace, run)
    _score(loop, worker, p.concurrency or s.sc.concurrency, bar)
    return _finish(s, job, loop, worker, report, run)


def _params_of(params: BackfillParams | None, fields: dict[str, Any]) -> BackfillParams:
    if params is None:
        return BackfillParams(**fields)
    if fields:
        raise TypeError(
            f"backfill() takes params= or keyword arguments, not both (got {sorted(fields)})"
        )
    return params


def _resolve_scorer(config: Any, store: StateStore, p: BackfillParams) -> _Setup:
    """Stage 1: the scorer's current version, ready to score, and where its traces are."""
    from mlflow_llmops.scoring.runner import judge_calculator

    clock = p.clock or SystemClock()
    store.ensure_schema(SCORING_MIGRATIONS)
    sc = config.scoring
    spec = ScorerRegistry(store).get(p.scorer)
    rate = spec.sample_rate if p.sample_rate is None else p.sample_rate
    _check_sample_rate(rate)
    exp_ids = list(
        p.experiment_ids
        or resolve_experiment_ids(
            config.tracking.uri, sc.experiments or [config.tracking.experiment_name]
        )
    )
    limiter = RateLimiter(p.rate_limit_rps or sc.rate_limit_rps)
    calculator = judge_calculator(config, clock) if spec.kind == "judge" else None
    resolved = resolve(
        spec, judge_defaults=sc.judge.model_dump(), limiter=limiter, calculator=calculator
    )
    return _Setup(
        config=config,
        store=store,
        params=p,
        clock=clock,
        spec=spec,
        rate=rate,
        resolved=resolved,
        exp_ids=exp_ids,
        holder=p.worker_id or new_holder_id(),
        user_flt=p.filter_string if p.filter_string is not None else spec.filter_string,
    )


def _find_job(s: _Setup) -> tuple[BackfillJob, Any]:
    """Stage 2: the job these parameters name, and its row (None: not created yet). A
    relative window names the first of its jobs not done yet."""
    p, spec = s.params, s.spec
    ttl_ms = int(s.sc.lease_ttl.total_seconds() * 1000)
    if p.window_key is None:
        flt = _window_filter(s.user_flt, p.since_ms, p.until_ms)
        jid = job_id_for(spec.name, spec.version, p.since_ms, p.until_ms, flt, s.rate, s.exp_ids)
        job = BackfillJob(s.store, jid, s.holder, ttl_ms)
        return job, job.row()
    generation = 0
    while True:
        jid = job_id_for(
            spec.name,
            spec.version,
            None,
            None,
            s.user_flt,
            s.rate,
            s.exp_ids,
            window_key=p.window_key,
            generation=generation,
        )
        job = BackfillJob(s.store, jid, s.holder, ttl_ms)
        row = job.row()
        if row is None or row.status != "done":
            return job, row
        generation += 1


def _plan_job(
    s: _Setup,
    job: BackfillJob,
    client: Any,
    flt: str | None,
    since_ms: int | None,
    until_ms: int | None,
) -> Any:
    """Stage 3, by the worker that creates the job: its work list and spend estimate.
    Returns the job's row (another worker's, if it created the job first)."""
    p, spec = s.params, s.spec
    items = _enumerate(client, s.exp_ids, flt, spec.name, s.rate)
    estimate = _estimate(s.resolved, items)
    if estimate is None and p.max_cost_usd is not None:
        raise BackfillError(
            f"cannot keep to --max-cost-usd: the judge model of {spec.name!r} has no price; "
            "add it to the pricing overrides (pricing.overrides_file) or drop --max-cost-usd"
        )
    now_ms = to_ms(s.clock.now())
    job.create(
        {
            "scorer": spec.name,
            "version": spec.version,
            "since_ms": since_ms,
            "until_ms": until_ms,
            "filter_string": flt,
            "sample_rate": s.rate,
            "max_cost_usd": p.max_cost_usd,
            "estimate_usd": estimate,
            "spent_usd": 0.0,
            "total_items": len(items),
            "status": "running",
            "created_ms": now_ms,
            "updated_ms": now_ms,
        },
        [(tid, ts) for tid, ts, _, _ in items],
    )
    return job.row()


def _estimate(resolved: Any, items: Sequence[tuple[str, int, str, str]]) -> float | None:
    """The judge spend of scoring ``items`` (0 for a code scorer); None: a judge model has
    no price."""
    estimate = 0.0
    if resolved.estimate is not None:
        for _, _, req, resp in items:
            e = resolved.estimate(req, resp)
            if e is None:
                return None
            estimate += e
    return estimate


def _rejoin(s: _Setup, job: BackfillJob, row: Any) -> float | None:
    """Stage 4: put errored items back if asked; returns the budget (a rerun keeps the
    job's unless given a new one, which is then the job's)."""
    p = s.params
    if p.retry_errors:
        job.retry_errors()
        Ledger(s.store, s.holder, lease_ttl_ms=job.ttl).reset_errors(s.spec.name, s.spec.version)
    if p.max_cost_usd is None:
        return row.max_cost_usd
    if p.max_cost_usd != row.max_cost_usd:
        job.set_budget(p.max_cost_usd)
    return p.max_cost_usd


def _report_plan(
    report: BackfillReport,
    job: BackfillJob,
    row: Any,
    budget: float | None,
    on_plan: Callable[[BackfillReport, float | None], None] | None,
) -> None:
    """Stage 5: the job's size, window and progress so far, told to ``on_plan``."""
    report.total, report.estimate_usd = row.total_items, row.estimate_usd
    report.since_ms, report.until_ms = row.since_ms, row.until_ms
    counts = job.counts()
    report.already_done = counts.get("done", 0) + counts.get("error", 0)
    if on_plan is not None:
        on_plan(report, budget)


def _start_worker(s: _Setup, job: BackfillJob, row: Any) -> tuple[TraceScorer, BackfillRun | None]:
    """Stage 6: this worker's scorer, and the job's MLflow run if it records one."""
    worker = TraceScorer(
        s.resolved,
        tracking_uri=s.config.tracking.uri,
        store=s.store,
        clock=s.clock,
        holder=s.holder,
        lease_ttl_s=s.sc.lease_ttl.total_seconds(),
        job_id=job.job_id,
        max_attempts=s.sc.max_attempts,
    )
    run_name = s.params.run_name
    run = (
        BackfillRun.open(s.config.tracking.uri, s.exp_ids[0], job.job_id, run_name, s.spec, row)
        if run_name
        else None
    )
    worker.run_id = run.run_id if run is not None else None
    return worker, run


def _progress_bar(report: BackfillReport, s: _Setup) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=report.total,
        initial=report.already_done,
        file=sys.stderr,
        disable=not s.params.progress,
        desc=f"backfill {s.spec.name}@v{s.spec.version}",
        unit="trace",
        dynamic_ncols=True,
    )


def _score(loop: _BackfillLoop, worker: TraceScorer, concurrency: int, bar: Any) -> None:
    """Stage 7: score the work list through the pipeline until it is done, the budget is
    reached or only retries held by other workers are left."""
    try:
        with ScoringPipeline(worker, concurrency=concurrency, on_commit=loop.on_commit) as pipe:
            try:
                loop.run(pipe)
            finally:
                loop.close()
    finally:
        bar.close()


def _finish(
    s: _Setup,
    job: BackfillJob,
    loop: _BackfillLoop,
    worker: TraceScorer,
    report: BackfillReport,
    run: BackfillRun | None,
) -> BackfillReport:
    """Stage 8: the job's status and spend, on its row, the report and its MLflow run."""
    counts = job.counts()
    if loop.budget_hit:
        report.status = "budget_exhausted"
    elif counts.get("pending", 0) == 0 and counts.get("leased", 0) == 0:
        report.status = "done"
    report.job_errors = counts.get("error", 0)
    job.set_status(report.status, to_ms(s.clock.now()))
    report.spent_usd = worker.ledger.job_spend(job.job_id)
    if run is not None:
        run.finish(s.store, report)
    return report


class BackfillRun:
    """The MLflow run of a backfill job (``--run-name``): found by its job tag, else created."""

    JOB_TAG = "llmops.backfill_job"

    def __init__(self, client: Any, run_id: str, scorer: str, version: int) -> None:
        self.client, self.run_id, self.scorer, self.version = client, run_id, scorer, version

    @classmethod
    def open(
        cls, tracking_uri: str, experiment_id: str, job_id: str, name: str, spec: Any, row: Any
    ) -> BackfillRun:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{cls.JOB_TAG}` = '{job_id}'", max_results=1
        )
        if found:
            return cls(client, found[0].info.run_id, spec.name, spec.version)
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={cls.JOB_TAG: job_id, "llmops.scorer": f"{spec.name}@v{spec.version}"},
        )
        for k, v in {
            "scorer": spec.name,
            "scorer_version": spec.version,
            "since_ms": row.since_ms,
            "until_ms": row.until_ms,
            "sample_rate": row.sample_rate,
            "filter": row.filter_string,
            "traces": row.total_items,
        }.items():
            client.log_param(run.info.run_id, k, "" if v is None else v)
        return cls(client, run.info.run_id, spec.name, spec.version)

    def link(self, trace_ids: Sequence[str]) -> None:
        """Show the traces on the run's Traces tab (MLflow takes 100 per call)."""
        for i in range(0, len(trace_ids), 100):
            self.client.link_traces_to_run(list(trace_ids[i : i + 100]), self.run_id)

    def finish(self, store: StateStore, report: BackfillReport) -> None:
        """Log the job's results so far; end the run once the job is done."""
        from mlflow_llmops.scoring.registry import ledger_table

        t = ledger_table.c
        with store.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    sa.func.count(t.value_num),
                    sa.func.avg(t.value_num),
                    sa.func.avg(sa.case((t.passed.is_(True), 1.0), (t.passed.is_(False), 0.0))),
                ).where(t.job_id == report.job_id, t.state == "done")
            ).first()
        metrics = {
            "scored": float(row[0] or 0),
            "errors": float(report.job_errors),
            "judge_cost_usd": report.spent_usd,
        }
        if row[1] is not None:
            metrics[f"{self.scorer}/mean"] = float(row[1])
        if row[2] is not None:
            metrics[f"{self.scorer}/pass_rate"] = float(row[2])
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, v)
        if report.status == "done":
            self.client.set_terminated(self.run_id, "FINISHED")


#: How often a backfill asks again for a trace another live worker holds (its claim goes
#: stale after ``lease_ttl``); then the item is left leased for a rerun.
MAX_HELD_RETRIES = 3


class _BackfillLoop:
    """Feeds the pipeline from the job's work list and this worker's retries.

    A failed attempt is tried again in the same run after ``backfill_retry_backoff``
    (doubling), until the scorer's ``max_attempts`` turns it into an error Feedback; a trace
    another live worker holds is asked for again when that claim goes stale. Neither is
    marked finished in the job before then, so no item ends ``done`` unscored.

    Without a budget, the next lease and its trace read run on a thread of their own
    (``llmops-backfill-read``) while the batch just read is claimed and scored: reading is
    most of the feeding thread's work, and it waits on the database, not on the GIL. With a
    budget every lease is sized by the spend so far, so it is taken only when needed.
    """

    def __init__(
        self,
        job: BackfillJob,
        worker: TraceScorer,
        client: Any,
        clock: Clock,
        sc: Any,
        report: BackfillReport,
        bar: Any,
        max_cost_usd: float | None,
        per_trace: float,
        run: BackfillRun | None = None,
    ) -> None:
        self.mlflow_run = run
        self.job, self.worker, self.client, self.clock = job, worker, client, clock
        self.backoff_s = sc.backfill_retry_backoff.total_seconds()
        self.report, self.bar = report, bar
        self.max_cost_usd, self.per_trace = max_cost_usd, per_trace
        self.retries: list[tuple[float, str]] = []  # (monotonic due time, trace id)
        self.tries: dict[str, int] = {}  # trace id -> failed or held attempts this run
        self.exhausted = self.budget_hit = False
        self.spent_mine, self.costed = 0.0, 0
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="llmops-backfill-read")
        self._ahead: Future[tuple[list[str], list[Any]]] | None = None

    def close(self) -> None:
        """Stop reading ahead; items leased ahead and never put are given back."""
        ahead, self._ahead = self._ahead, None
        self._reader.shutdown(wait=True)
        if ahead is None:
            return
        try:
            ids, _ = ahead.result()
            self.job.release(ids)
        except Exception:  # noqa: BLE001 - the store may be what failed: leases expire
            log.warning(
                "could not give back the items read ahead; they are leased again "
                "after scoring.lease_ttl",
                exc_info=True,
            )

    def on_commit(self, outcomes: list[TraceOutcome]) -> None:
        """On the writer thread, per batch: finish the items that are finished."""
        final = [
            (o.trace_id, "error" if o.state == "failed" else "done")
            for o in outcomes
            if o.state not in ("error", "held")
        ]
        spent = (
            self.worker.ledger.job_spend(self.job.job_id)
            if any(o.cost_usd for o in outcomes)
            else None
        )
        if final or spent is not None:
            self.job.finish(final, spent)
        if self.mlflow_run is not None:
            self.mlflow_run.link(
                [o.trace_id for o in outcomes if o.state in ("done", "adopted", "failed")]
            )

    def run(self, pipe: ScoringPipeline) -> None:
        while True:
            self._feed(pipe)
            if pipe.pending == 0:
                # outcomes written but not taken yet may hold failures to try again: take
                # them before deciding the run is over
                self._take(pipe.drain())
                if not self.retries:
                    return
                if not any(t <= time.monotonic() for t, _ in self.retries):
                    time.sleep(max(0.0, min(t for t, _ in self.retries) - time.monotonic()))
                continue
            blocked = self.exhausted or self.budget_hit
            self._take(pipe.wait(timeout=self._until_retry(), for_room=not blocked))

    def _until_retry(self) -> float | None:
        if not self.retries:
            return None
        return max(0.01, min(t for t, _ in self.retries) - time.monotonic())

    def _feed(self, pipe: ScoringPipeline) -> None:
        now = time.monotonic()
        due = [tid for t, tid in self.retries if t <= now]
        if due:
            n = pipe.room()
            if n > 0:
                take = set(due[:n])
                self.retries = [(t, tid) for t, tid in self.retries if tid not in take]
                traces = load_traces(self.client, list(take))
                self._finish_missing(list(take), traces)
                pipe.put(traces)
        while not self.exhausted and not self.budget_hit and (n := pipe.room()) > 0:
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                ids, traces = ahead.result()
            else:
                n = self._within_budget(n, pipe.pending)
                if n == 0:
                    self.budget_hit = True
                    return
                ids, traces = self._read(n)
            if not ids:
                self.exhausted = True
                return
            self._finish_missing(ids, traces)
            if self.max_cost_usd is None:
                self._ahead = self._reader.submit(self._read, n)
            pipe.put(traces)

    def _read(self, n: int) -> tuple[list[str], list[Any]]:
        """Lease up to ``n`` items and read their traces."""
        ids = self.job.lease(n, to_ms(self.clock.now()))
        return ids, load_traces(self.client, ids) if ids else []

    def _finish_missing(self, ids: list[str], traces: Sequence[Any]) -> None:
        found = {t.info.trace_id for t in traces}
        missing = [(tid, "done") for tid in ids if tid not in found]
        if missing:  # deleted since planning: nothing to score
            self.job.finish(missing)
            self.bar.update(len(missing))

    def _within_budget(self, n: int, pending: int) -> int:
        if self.max_cost_usd is None or self.per_trace <= 0:
            return n
        spent_now = self.worker.ledger.job_spend(self.job.job_id)
        if self.costed >= 5:  # learn the real cost per trace, with a margin
            self.per_trace = 1.2 * self.spent_mine / self.costed
        room = self.max_cost_usd - spent_now - self.per_trace * pending
        return min(n, max(0, math.floor(room / self.per_trace + 1e-9)))

    def _take(self, outcomes: list[TraceOutcome]) -> None:
        done = 0
        for o in outcomes:
            self.spent_mine += o.cost_usd or 0.0
            self.costed += o.cost_usd is not None
            tries = self.tries[o.trace_id] = self.tries.get(o.trace_id, 0) + (
                o.state in ("error", "held")
            )
            if o.state == "error":  # attempts left: again after a backoff
                self.report.retried += 1
                self._again(o.trace_id, self.backoff_s * 2 ** (tries - 1))
            elif o.state == "held":
                if tries > MAX_HELD_RETRIES:
                    self.report.held += 1  # stays leased: a rerun (or its holder) finishes it
                    continue
                wait_ms = (o.retry_at_ms or 0) - to_ms(self.clock.now())
                self._again(o.trace_id, max(0.05, wait_ms / 1000))
            else:
                _count(self.report, o)
                done += 1
        self.bar.update(done)

    def _again(self, trace_id: str, delay_s: float) -> None:
        self.retries.append((time.monotonic() + delay_s, trace_id))


def _one_of(column: Any, values: Sequence[str], dialect: str) -> Any:
    """``column IN values``; on PostgreSQL ``= ANY(array)``: one parameter and one cached
    statement text, where ``IN`` spells out a parameter per value (a new text per batch)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.cast(sa.bindparam("values", list(values)), ARRAY(sa.String)))
    return column.in_(list(values))


def _window_filter(flt: str | None, since_ms: int | None, until_ms: int | None) -> str | None:
    return combine_filters(
        flt,
        None if since_ms is None else f"trace.timestamp_ms >= {since_ms}",
        None if until_ms is None else f"trace.timestamp_ms < {until_ms}",
    )


def _count(report: BackfillReport, o: TraceOutcome) -> None:
    if o.state in ("done", "adopted"):
        report.scored += 1
    elif o.state == "failed":
        report.errors += 1
        if len(report.error_samples) < 5:
            report.error_samples.append(f"{o.trace_id}: {o.error}")
    elif o.state == "not_applicable":
        report.not_applicable += 1
    else:
        report.skipped += 1


#: The name exported at the package top level (``mlflow_llmops.backfill_scorer``).
backfill_scorer = backfill
