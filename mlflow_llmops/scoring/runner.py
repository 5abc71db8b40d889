"""Scheduled scoring: each due scorer scores the new traces since its watermark.

Called by the monitor each cycle (``run_due_scorers``) and by
``mlflow-llmops scorers run --once``. Traces younger than the completion buffer
or still IN_PROGRESS wait; sampling is deterministic by (scorer, trace id);
every result is an MLflow assessment with the scorer's version in its source
and metadata; a scorer that raises is recorded for that trace and the run
goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from mlflow.entities import AssessmentError, AssessmentSource, Feedback, Trace
from mlflow.exceptions import MlflowException

from mlflow_llmops.core.clock import Clock, SystemClock, to_ms
from mlflow_llmops.scoring.ledger import Claim, Confirmation, Ledger, LedgerKey, new_holder_id
from mlflow_llmops.scoring.mlflow_io import AssessmentWriter, load_traces
from mlflow_llmops.scoring.ratelimit import RateLimiter
from mlflow_llmops.scoring.registry import ScorerRegistry, ScorerSpec
from mlflow_llmops.scoring.resolver import ResolvedScorer, resolve
from mlflow_llmops.statestore.state import StateStore

log = logging.getLogger(__name__)

META_SCORER = "llmops.scorer"
META_VERSION = "llmops.scorer_version"
#: On the error Feedback logged when a trace is given up on.
META_ATTEMPTS = "llmops.attempts"
#: MLflow's key for the run an assessment came from (``AssessmentMetadataKey.SOURCE_RUN_ID``)
SOURCE_RUN_ID = "mlflow.assessment.sourceRunId"
_PASS_WORDS = {"yes": True, "pass": True, "true": True, "no": False, "fail": False, "false": False}


def sampled(trace_id: str, scorer: str, rate: float) -> bool:
    """Deterministic: the same trace and scorer always give the same answer, for every
    version and on every worker; about ``rate`` of all traces are kept."""
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{scorer}\x00{trace_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def value_number(value: Any) -> float | None:
    """The numeric form of a feedback value (true=1, yes=1, numbers as is)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _PASS_WORDS:
        return 1.0 if _PASS_WORDS[value.strip().lower()] else 0.0
    return None


def passed_of(value: Any, threshold: float) -> bool | None:
    if isinstance(value, bool):
        return value
    num = value_number(value)
    return None if num is None else num >= threshold


@dataclass
class TraceOutcome:
    trace_id: str
    state: str  # done | error (tried again later) | failed (given up) | skipped | adopted
    #            | not_applicable | held (another live worker holds it: ask again later)
    value: float | None = None
    passed: bool | None = None
    cost_usd: float | None = None
    error: str | None = None
    retry_at_ms: int | None = None  # held: when the other worker's claim goes stale


@dataclass
class ScorerRunStats:
    """What one scorer did in one run."""

    scorer: str
    version: int
    considered: int = 0
    sampled_out: int = 0
    scored: int = 0
    errors: int = 0  # includes gave_up
    gave_up: int = 0  # errors on the last attempt: logged on the trace as Feedback errors
    retried: int = 0  # traces of earlier errors tried again in this run
    skipped: int = 0
    not_applicable: int = 0
    held: int = 0  # claimed by another live worker: left for a later run
    late: int = 0  # found by their arrival time, older than the start-time scan
    cost_usd: float = 0.0
    watermark_ms: int | None = None
    problem: str | None = None
    error_samples: list[str] = field(default_factory=list)

    def add(self, o: TraceOutcome) -> None:
        if o.state in ("done", "adopted"):
            self.scored += 1
        elif o.state in ("error", "failed"):
            self.errors += 1
            self.gave_up += o.state == "failed"
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{o.trace_id}: {o.error}")
        elif o.state == "not_applicable":
            self.not_applicable += 1
        elif o.state == "held":
            self.held += 1
        else:
            self.skipped += 1
        self.cost_usd += o.cost_usd or 0.0


@dataclass
class ScoringRunReport:
    """Returned by ``run_due_scorers``: one entry per scorer that was due."""

    scorers: list[ScorerRunStats] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return sum(s.scored for s in self.scorers)

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.scorers)

    def summary(self) -> str:
        lines = []
        for s in self.scorers:
            if s.problem:
                lines.append(f"{s.scorer}@v{s.version}: NOT RUN: {s.problem}")
                continue
            lines.append(
                f"{s.scorer}@v{s.version}: scored {s.scored}, errors {s.errors}, "
                f"already done {s.skipped}, not applicable {s.not_applicable}, "
                f"sampled out {s.sampled_out} of {s.considered}"
                + (f", retried {s.retried} earlier errors" if s.retried else "")
                + (f", {s.late} arrived late" if s.late else "")
                + (f", {s.held} held by another worker (next run)" if s.held else "")
                + (f", gave up on {s.gave_up} (logged as errors)" if s.gave_up else "")
                + (f", judge cost ${s.cost_usd:.6f}" if s.cost_usd else "")
            )
            lines.extend(f"    error {e}" for e in s.error_samples)
        if self.not_due:
            lines.append("not due yet: " + ", ".join(self.not_due))
        return "\n".join(lines) or "no active scorers"


@dataclass
class PendingWrite:
    """A trace scored (or decided) but not yet written: the Feedbacks to log, then the
    ledger row to confirm. Built on a scorer thread, written by ``TraceScorer.commit``."""

    outcome: TraceOutcome
    feedbacks: list[Feedback] = field(default_factory=list)
    confirm: Confirmation | None = None


class TraceScorer:
    """Scores traces with one resolved scorer, idempotently: claim, log, confirm.

    The three steps are separate so that many traces share each store write:
    ``claim`` (one ledger statement for a batch), ``evaluate`` (runs the scorer; on
    scorer threads, no store writes except the rare adoption check) and ``commit``
    (one MLflow transaction for the batch's Feedbacks, then one ledger transaction
    for its confirmations). A crash between the two leaves claimed rows whose
    assessments are already logged: whoever takes them over adopts those.
    """

    def __init__(
        self,
        resolved: ResolvedScorer,
        *,
        tracking_uri: str,
        store: StateStore,
        clock: Clock,
        holder: str | None = None,
        lease_ttl_s: float = 300.0,
        job_id: str | None = None,
        max_attempts: int = 3,
    ) -> None:
        from mlflow.tracing.client import TracingClient

        self.resolved = resolved
        self.spec = resolved.spec
        self.client = TracingClient(tracking_uri)
        self.writer = AssessmentWriter(self.client)
        self.clock = clock
        self.ledger = Ledger(
            store,
            holder or new_holder_id(),
            lease_ttl_ms=int(lease_ttl_s * 1000),
            max_attempts=max_attempts,
        )
        self.job_id = job_id
        #: an MLflow run the assessments belong to (a backfill's ``--run-name``), as
        #: ``mlflow.genai.evaluate`` links its own: they then show beside evaluation runs
        self.run_id: str | None = None

    def _existing(self, trace_id: str, known: str | None) -> Any:
        """What a crashed holder logged (``known``: logged by an earlier, confirmed attempt)."""
        info = self.client.get_trace_info(trace_id)
        for a in info.assessments or []:
            meta = a.metadata or {}
            if (
                a.valid is not False
                and a.assessment_id != known
                and meta.get(META_SCORER) == self.spec.name
                and meta.get(META_VERSION) == str(self.spec.version)
            ):
                return a
        return None

    def key(self, trace: Trace) -> LedgerKey:
        return LedgerKey(trace.info.trace_id, self.spec.name, self.spec.version)

    def claim(self, traces: Sequence[Trace]) -> list[Claim]:
        """Claim every trace in one go; ``Claim.kind == "skip"``: leave it alone."""
        return self.ledger.claim_many(
            [(self.key(t), t.info.timestamp_ms, t.info.experiment_id) for t in traces],
            now_ms=to_ms(self.clock.now()),
            job_id=self.job_id,
        )

    def evaluate(self, trace: Trace, claim: Claim) -> PendingWrite:
        """Run the scorer on a claimed trace; never raises for the scorer's failure."""
        spec, info = self.spec, trace.info
        key = self.key(trace)
        if claim.kind == "skip":
            return PendingWrite(TraceOutcome(info.trace_id, "skipped"))
        if claim.kind == "held":
            return PendingWrite(TraceOutcome(info.trace_id, "held", retry_at_ms=claim.expires_ms))
        if claim.kind == "takeover":
            adopted = self._adopt(key, claim)
            if adopted is not None:
                return adopted
        source = AssessmentSource(source_type=self.resolved.source_type, source_id=spec.source_id)
        meta = {META_SCORER: spec.name, META_VERSION: str(spec.version)}
        if self.run_id is not None:
            meta[SOURCE_RUN_ID] = self.run_id
        try:
            out = self._score_once(trace, key)
        except Exception as e:  # noqa: BLE001 - a scorer's failure is data, not a crash
            return self._failed(key, claim, e, source, meta)
        return self._scored(key, claim, out, source, meta)

    def _adopt(self, key: LedgerKey, claim: Claim) -> PendingWrite | None:
        """Taking over a crashed holder's claim: what it logged, adopted (None: nothing)."""
        found = self._existing(key.trace_id, claim.assessment_id)
        now_ms = to_ms(self.clock.now())
        if found is not None and getattr(found, "error", None) is not None:
            return PendingWrite(
                TraceOutcome(key.trace_id, "failed", error=found.error.error_message),
                confirm=Confirmation(
                    key, "failed", now_ms, assessment_id=found.assessment_id, adopted=True
                ),
            )
        if found is not None:
            value = getattr(found, "value", None)
            num = value_number(value)
            passed = passed_of(value, self.resolved.pass_threshold)
            return PendingWrite(
                TraceOutcome(key.trace_id, "adopted", num),
                confirm=Confirmation(
                    key, "done", now_ms, num, passed, found.assessment_id, adopted=True
                ),
            )
        return None

    def _score_once(self, trace: Trace, key: LedgerKey) -> Any:
        """The scorer's output; its cost recorded first. Raises for an error Feedback too."""
        out = self.resolved.score(trace)
        if out.cost_usd:  # paid now: recorded before anything else can fail
            self.ledger.add_cost(key, out.cost_usd)
        errors = [f for f in out.feedbacks if f.error is not None]
        if errors:
            e = errors[0].error
            raise RuntimeError(getattr(e, "error_message", None) or str(e))
        return out

    def _failed(
        self,
        key: LedgerKey,
        claim: Claim,
        e: Exception,
        source: AssessmentSource,
        meta: dict[str, str],
    ) -> PendingWrite:
        """An attempt that failed: tried again later, or given up on with an error Feedback
        once the attempts run out."""
        msg = f"{type(e).__name__}: {e}"
        cost = getattr(e, "cost_usd", None)
        if cost:
            self.ledger.add_cost(key, cost)
        attempt = claim.attempts + 1
        now_ms = to_ms(self.clock.now())
        if attempt < self.ledger.max_attempts:  # tried again later
            return PendingWrite(
                TraceOutcome(key.trace_id, "error", error=msg, cost_usd=cost),
                confirm=Confirmation(
                    key, "error", now_ms, error=msg, cost_usd=cost, cost_paid=True
                ),
            )
        err = AssessmentError(
            error_code=type(e).__name__, error_message=f"{e} (gave up after {attempt} attempts)"
        )
        fb = Feedback(
            name=self.spec.name,
            error=err,
            source=source,
            metadata={**meta, META_ATTEMPTS: str(attempt)},
        )
        fb.overrides = claim.assessment_id
        return PendingWrite(
            TraceOutcome(key.trace_id, "failed", error=msg, cost_usd=cost),
            [fb],
            Confirmation(key, "failed", now_ms, error=msg, cost_usd=cost, cost_paid=True),
        )

    def _scored(
        self,
        key: LedgerKey,
        claim: Claim,
        out: Any,
        source: AssessmentSource,
        meta: dict[str, str],
    ) -> PendingWrite:
        """A scorer's output as the Feedbacks to log (none: not applicable); the first
        replaces the assessment of an earlier attempt."""
        spec = self.spec
        done_ms = to_ms(self.clock.now())
        if not out.feedbacks:
            return PendingWrite(
                TraceOutcome(key.trace_id, "not_applicable", cost_usd=out.cost_usd),
                confirm=Confirmation(key, "done", done_ms, cost_usd=out.cost_usd, cost_paid=True),
            )
        meta.update(out.extra_metadata)
        feedbacks = []
        for i, fb in enumerate(out.feedbacks):
            name = spec.name if (i == 0 or fb.name in (None, "feedback")) else fb.name
            if i > 0 and name == spec.name:
                name = f"{spec.name}/{i}"
            logged = Feedback(
                name=name,
                value=fb.value,
                rationale=fb.rationale,
                source=source,
                metadata={**(fb.metadata or {}), **meta},
            )
            if i == 0:
                logged.overrides = claim.assessment_id
            feedbacks.append(logged)
        first = out.feedbacks[0].value
        num, passed = value_number(first), passed_of(first, self.resolved.pass_threshold)
        return PendingWrite(
            TraceOutcome(key.trace_id, "done", num, passed, out.cost_usd),
            feedbacks,
            Confirmation(key, "done", done_ms, num, passed, cost_usd=out.cost_usd, cost_paid=True),
        )

    def commit(self, pending: Sequence[PendingWrite]) -> list[TraceOutcome]:
        """Log the Feedbacks of all ``pending`` (one MLflow transaction where the store
        allows), then confirm them in the ledger (one transaction). A trace deleted in the
        meantime ends as an error of this attempt."""
        items = [(p.outcome.trace_id, fb) for p in pending for fb in p.feedbacks]
        logged = iter(self.writer.log_many(items))
        confirms, outcomes = [], []
        for p in pending:
            results = [next(logged) for _ in p.feedbacks]
            outcome, confirm = p.outcome, p.confirm
            gone = next((r for r in results if isinstance(r, MlflowException)), None)
            if gone is not None and confirm is not None:
                msg = f"{type(gone).__name__}: {gone.message}"
                outcome = TraceOutcome(
                    outcome.trace_id, "error", error=msg, cost_usd=outcome.cost_usd
                )
                confirm = replace(
                    confirm,
                    state="error",
                    error=msg,
                    value_num=None,
                    passed=None,
                    assessment_id=None,
                )
            elif results and confirm is not None:
                confirm = replace(confirm, assessment_id=results[0].assessment_id)
            if confirm is not None:
                confirms.append(confirm)
            outcomes.append(outcome)
        self.ledger.confirm_many(confirms)
        return outcomes

    def score(self, trace: Trace) -> TraceOutcome:
        """Claim, score, log and confirm one trace (the batched steps, for a batch of one)."""
        (claim,) = self.claim([trace])
        return self.commit([self.evaluate(trace, claim)])[0]


def score_many(
    worker: TraceScorer, traces: Sequence[Trace], *, concurrency: int
) -> list[TraceOutcome]:
    """Score traces in parallel, writing results in batches; never raises for a trace's
    failure."""
    from mlflow_llmops.scoring.pipeline import ScoringPipeline

    with ScoringPipeline(worker, concurrency=concurrency) as pipe:
        return pipe.score_all(traces)


def resolve_experiment_ids(tracking_uri: str, names: Iterable[str]) -> list[str]:
    """Experiment ids from names or ids; an unknown name is an error that says so."""
    from mlflow import MlflowClient

    from mlflow_llmops.errors import ConfigError

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = []
    for n in names:
        if n.isdigit():
            ids.append(n)
            continue
        exp = client.get_experiment_by_name(n)
        if exp is None:
            raise ConfigError(
                f"scoring: no experiment named {n!r} in {tracking_uri}; check "
                "scoring.experiments / tracking.experiment_name"
            )
        ids.append(exp.experiment_id)
    return ids


def combine_filters(*parts: str | None) -> str | None:
    kept = [p.strip() for p in parts if p and p.strip()]
    return " AND ".join(kept) or None


def _search_page(
    client: Any,
    exp_ids: list[str],
    flt: str | None,
    limit: int,
    include_spans: bool,
    page_token: str | None = None,
) -> Any:
    return client.search_traces(
        locations=exp_ids,
        filter_string=flt,
        max_results=limit,
        order_by=["timestamp_ms ASC"],
        include_spans=include_spans,
        page_token=page_token,
    )


_WM_LOCK = threading.Lock()


def run_scorer_once(
    spec: ScorerSpec,
    *,
    config: Any,
    store: StateStore,
    now: datetime,
    exp_ids: list[str],
    clock: Clock,
    limiter: RateLimiter,
    calculator: Any = None,
) -> ScorerRunStats:
    """One incremental pass of one scorer: first the traces whose earlier attempts failed
    (after ``retry_backoff``), then the new traces since its watermark."""
    sc = config.scoring
    stats = ScorerRunStats(spec.name, spec.version)
    try:
        resolved = resolve(
            spec, judge_defaults=sc.judge.model_dump(), limiter=limiter, calculator=calculator
        )
    except Exception as e:  # noqa: BLE001 - a broken scorer must not stop the others
        stats.problem = f"{type(e).__name__}: {e}"
        return stats
    from mlflow_llmops.scoring.pipeline import ScoringPipeline, fewer_gc_pauses

    worker = TraceScorer(
        resolved,
        tracking_uri=config.tracking.uri,
        store=store,
        clock=clock,
        lease_ttl_s=sc.lease_ttl.total_seconds(),
        max_attempts=sc.max_attempts,
    )
    with fewer_gc_pauses(), ScoringPipeline(worker, concurrency=sc.concurrency) as pipe:
        return _run_scorer(worker, pipe, stats, config, store, now, exp_ids)


def _run_scorer(
    worker: TraceScorer,
    pipe: Any,
    stats: ScorerRunStats,
    config: Any,
    store: StateStore,
    now: datetime,
    exp_ids: list[str],
) -> ScorerRunStats:
    """Retries due, then the new traces since the watermark (by start time), then the late
    arrivals; the watermark moves on to where this pass finished."""
    sc = config.scoring
    budget = sc.max_traces_per_cycle - _retry_errors(worker, pipe, stats, sc, exp_ids)
    now_ms = to_ms(now)
    window = _ScanWindow.of(sc, worker.spec, store, now_ms)
    if window.upper_ms <= window.start_ms:
        stats.watermark_ms = window.start_ms
        return stats
    scan = _IncrementalScan(worker, pipe, stats, exp_ids)
    give_up_ms = now_ms - int(sc.max_in_progress_wait.total_seconds() * 1000)
    new_wm, budget = scan.scan(window, budget, give_up_ms)
    late = None
    if budget > 0:
        late = _late_arrivals(scan, sc, store, now_ms, window.scan_from, budget)
        scan.take(late.outcomes)
    scan.take(pipe.drain())  # every trace before the new watermark is written
    if late is not None:
        late.save(store, scan.held)
    new_wm = scan.watermark(new_wm, window.start_ms)
    store.set_watermark(window.name, json.dumps({"ts": new_wm, "last_run_ms": now_ms}))
    stats.watermark_ms = new_wm
    return stats


@dataclass(frozen=True)
class _ScanWindow:
    """The start times one incremental pass scans: from its watermark (less the late
    arrival margin after the first run) to now less the completion buffer."""

    name: str  # the watermark's
    start_ms: int
    upper_ms: int
    scan_from: int

    @classmethod
    def of(cls, sc: Any, spec: ScorerSpec, store: StateStore, now_ms: int) -> _ScanWindow:
        name = f"scoring:{spec.name}:v{spec.version}"
        raw = store.get_watermark(name)
        start_ms = (
            int(json.loads(raw)["ts"])
            if raw
            else now_ms - int(sc.initial_lookback.total_seconds() * 1000)
        )
        upper_ms = now_ms - int(sc.completion_buffer.total_seconds() * 1000)
        scan_from = (
            max(0, start_ms - int(sc.late_arrival.total_seconds() * 1000)) if raw else start_ms
        )
        return cls(name, start_ms, upper_ms, scan_from)


class _IncrementalScan:
    """Feeds one scorer's pipeline from MLflow, page by page, within a trace budget, and
    keeps what the watermark must not pass (traces in progress or held elsewhere)."""

    def __init__(
        self, worker: TraceScorer, pipe: Any, stats: ScorerRunStats, exp_ids: list[str]
    ) -> None:
        self.worker, self.pipe, self.stats, self.exp_ids = worker, pipe, stats, exp_ids
        self.hold_ms: int | None = None  # the first trace still in progress, not given up on
        self.ts_of: dict[str, int] = {}
        self.held: list[str] = []  # traces another live worker holds: not finished

    def take(self, outcomes: Iterable[TraceOutcome]) -> None:
        for o in outcomes:
            self.stats.add(o)
            if o.state == "held":
                self.held.append(o.trace_id)

    def scan(self, window: _ScanWindow, budget: int, give_up_ms: int) -> tuple[int, int]:
        """Feed the window's unscored traces, at most ``budget``; returns the watermark
        reached and the budget left."""
        spec, client = self.worker.spec, self.worker.client
        flt = combine_filters(
            spec.filter_string,
            f"trace.timestamp_ms >= {window.scan_from}",
            f"trace.timestamp_ms < {window.upper_ms}",
        )
        new_wm, token = window.upper_ms, None
        todo: list[Any] = []
        while budget > 0:
            page = _search_page(client, self.exp_ids, flt, min(500, max(budget, 100)), False, token)
            todo = self._candidates(page, window.start_ms, give_up_ms)
            ids = self._unfinished(todo, window.start_ms)
            if len(ids) > budget:  # stop here; the next cycle goes on from this trace
                ids = ids[:budget]
                new_wm = next(i.timestamp_ms for i in todo if i.trace_id == ids[-1])
                page.token = None
            budget -= len(ids)
            self.ts_of.update((i.trace_id, i.timestamp_ms) for i in todo)
            for chunk in range(0, len(ids), 200):
                self.take(self.pipe.feed(load_traces(client, ids[chunk : chunk + 200])))
            token = page.token
            if not token:
                break
        else:
            new_wm = min(
                new_wm, max(window.start_ms, todo[-1].timestamp_ms if todo else window.start_ms)
            )
        return new_wm, budget

    def _candidates(self, page: Any, start_ms: int, give_up_ms: int) -> list[Any]:
        """The page's finished, sampled traces (infos); counts those sampled out."""
        from mlflow.entities import TraceState

        spec, stats = self.worker.spec, self.stats
        todo = []
        for t in page:
            info = t.info
            if info.state == TraceState.IN_PROGRESS:
                if info.timestamp_ms >= give_up_ms and self.hold_ms is None:
                    self.hold_ms = info.timestamp_ms
                continue
            if not sampled(info.trace_id, spec.name, spec.sample_rate):
                if info.timestamp_ms >= start_ms:
                    stats.considered += 1
                    stats.sampled_out += 1
                continue
            todo.append(info)
        return todo

    def _unfinished(self, todo: list[Any], start_ms: int) -> list[str]:
        """The ids of ``todo`` the ledger has not finished; counts those it has."""
        spec, stats = self.worker.spec, self.stats
        done = self.worker.ledger.finished(spec.name, spec.version, (i.trace_id for i in todo))
        for i in todo:
            if i.timestamp_ms >= start_ms or i.trace_id not in done:
                stats.considered += 1
                stats.skipped += i.trace_id in done
        return [i.trace_id for i in todo if i.trace_id not in done]

    def watermark(self, new_wm: int, start_ms: int) -> int:
        """``new_wm``, held back to a trace still in progress or held by another worker."""
        if self.hold_ms is not None:
            new_wm = min(new_wm, self.hold_ms)
        held_ms = [self.ts_of[t] for t in self.held if t in self.ts_of]
        if held_ms:  # not finished: the next run scans them again
            new_wm = min(new_wm, min(held_ms))
        return max(new_wm, start_ms)

    def feed_arrivals(self, scan: LateScan, minute: int, before_ms: int, budget: int) -> int:
        """Feed the unscored traces stamped with arrival ``minute`` that started before
        ``before_ms``, at most ``budget``; returns the budget left."""
        from mlflow.entities import TraceState

        from mlflow_llmops.core.keys import INGESTED_MINUTE, ingested_minute

        spec, client, stats = self.worker.spec, self.worker.client, self.stats
        flt = combine_filters(
            spec.filter_string,
            f"metadata.`{INGESTED_MINUTE}` = '{ingested_minute(minute)}'",
            f"trace.timestamp_ms < {before_ms}",
        )
        token = None
        while True:
            page = _search_page(client, self.exp_ids, flt, 500, False, token)
            infos = [
                t.info
                for t in page
                if t.info.state != TraceState.IN_PROGRESS
                and sampled(t.info.trace_id, spec.name, spec.sample_rate)
            ]
            done = self.worker.ledger.finished(spec.name, spec.version, (i.trace_id for i in infos))
            ids = [i.trace_id for i in infos if i.trace_id not in done][:budget]
            budget -= len(ids)
            stats.considered += len(ids)
            stats.late += len(ids)
            scan.minute_of.update((i, minute) for i in ids)
            for chunk in range(0, len(ids), 200):
                scan.outcomes.extend(self.pipe.feed(load_traces(client, ids[chunk : chunk + 200])))
            token = page.token
            if not token or budget <= 0:
                return budget


#: Arrival minutes one run reads at most (the rest waits for the next run).
MAX_ARRIVAL_MINUTES = 240


def _late_arrivals(
    feeder: _IncrementalScan,
    sc: Any,
    store: StateStore,
    now_ms: int,
    before_ms: int,
    budget: int,
) -> LateScan:
    """Traces that started before the start-time scan's window but were written since the
    last run: found by the minute the exporter stamped on them (``llmops.ingested_minute``),
    however late they came (a store outage, a spool replayed an hour later)."""
    spec = feeder.worker.spec
    scan = LateScan(f"scoring:{spec.name}:v{spec.version}:arrivals")
    raw = store.get_watermark(scan.watermark)
    last = now_ms // 60_000 * 60_000
    # one minute of overlap: a write may be stamped with a minute that was read as it ended
    first = (
        int(json.loads(raw)["minute_ms"]) - 60_000
        if raw
        else last - int(max(sc.late_arrival.total_seconds(), 60) * 1000) // 60_000 * 60_000
    )
    minute = max(first, last - MAX_ARRIVAL_MINUTES * 60_000)
    while minute <= last and budget > 0:
        budget = feeder.feed_arrivals(scan, minute, before_ms, budget)
        if budget <= 0:
            break  # this minute again next run
        minute += 60_000
    scan.next_minute_ms = min(minute, last)
    return scan


@dataclass
class LateScan:
    """What ``_late_arrivals`` fed, and where the next run's scan of arrivals starts."""

    watermark: str
    outcomes: list[TraceOutcome] = field(default_factory=list)
    minute_of: dict[str, int] = field(default_factory=dict)  # trace id -> arrival minute
    next_minute_ms: int | None = None

    def save(self, store: StateStore, held: Iterable[str]) -> None:
        """Move the watermark on, but not past a trace another live worker holds."""
        if self.next_minute_ms is None:
            return
        minute = min(
            [self.next_minute_ms, *(self.minute_of[t] for t in held if t in self.minute_of)]
        )
        store.set_watermark(self.watermark, json.dumps({"minute_ms": minute}))


def _retry_errors(
    worker: TraceScorer, pipe: Any, stats: ScorerRunStats, sc: Any, exp_ids: list[str]
) -> int:
    """Score again the traces whose last attempt failed long enough ago (at most half the
    cycle's budget, so new traffic still moves on); how many."""
    spec, ledger = worker.spec, worker.ledger
    before_ms = to_ms(worker.clock.now()) - int(sc.retry_backoff.total_seconds() * 1000)
    due = ledger.retry_due(
        spec.name,
        spec.version,
        before_ms=before_ms,
        limit=(sc.max_traces_per_cycle + 1) // 2,
        experiment_ids=exp_ids,
    )
    for chunk in range(0, len(due), 200):
        ids = due[chunk : chunk + 200]
        traces = load_traces(worker.client, ids)
        gone = set(ids) - {t.info.trace_id for t in traces}
        if gone:  # deleted (e.g. by retention): nothing left to score
            ledger.forget_errors(spec.name, spec.version, gone)
        for o in pipe.score_all(traces):
            stats.retried += 1
            stats.add(o)
    return len(due)


def _last_run_ms(store: StateStore, spec: ScorerSpec) -> int | None:
    raw = store.get_watermark(f"scoring:{spec.name}:v{spec.version}")
    return int(json.loads(raw).get("last_run_ms", 0)) if raw else None


def run_due_scorers(
    config: Any,
    store: StateStore,
    now: datetime,
    *,
    names: Sequence[str] | None = None,
    force: bool = False,
    clock: Clock | None = None,
) -> ScoringRunReport:
    """Run every active scorer whose schedule is due (all of them with ``force``)."""
    from mlflow_llmops.scoring.registry import SCORING_MIGRATIONS

    store.ensure_schema(SCORING_MIGRATIONS)
    report = ScoringRunReport()
    sc = config.scoring
    if not sc.enabled:
        return report
    registry = ScorerRegistry(store)
    specs = [registry.get(n) for n in names] if names else registry.list(active_only=True)
    if not specs:
        return report
    exp_ids = resolve_experiment_ids(
        config.tracking.uri, sc.experiments or [config.tracking.experiment_name]
    )
    limiter = RateLimiter(sc.rate_limit_rps)
    clock = clock or SystemClock()
    now_ms = to_ms(now)
    calculator: Any = None
    for spec in specs:
        last = _last_run_ms(store, spec)
        if not force and last is not None and now_ms - last < spec.schedule_s * 1000:
            report.not_due.append(spec.name)
            continue
        if spec.kind == "judge" and calculator is None:
            calculator, problem = _judge_prices(config, clock)
            if problem is not None:  # bad prices stop the judges, not the rest
                report.scorers.append(ScorerRunStats(spec.name, spec.version, problem=problem))
                continue
        report.scorers.append(
            run_scorer_once(
                spec,
                config=config,
                store=store,
                now=now,
                exp_ids=exp_ids,
                clock=clock,
                limiter=limiter,
                calculator=calculator,
            )
        )
    return report


def _judge_prices(config: Any, clock: Clock) -> tuple[Any, str | None]:
    """The judges' calculator, or why there is none."""
    try:
        return judge_calculator(config, clock), None
    except Exception as e:  # noqa: BLE001 - bad prices stop the judges, not the rest
        return None, f"cannot price the judge: {type(e).__name__}: {e}"


def judge_calculator(config: Any, clock: Clock | None = None) -> Any:
    """The user's prices (``pricing:`` overrides and catalogs) for the judges' own calls."""
    from mlflow_llmops.pricing import CostCalculator

    return CostCalculator.from_config(config.pricing, clock=clock)
