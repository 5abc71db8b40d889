"""The export stage: a bounded trace queue with exact drop accounting, and store writers.

MLflow's default async path (a 2,048-span BatchSpanProcessor that drops the
oldest span, then a 1,000-task queue that discards with one warning) loses
traces under a burst and cannot say how many. Here the whole trace is handed
over once, when its root span ends, to a queue whose capacity is counted in
traces; a worker writes batches through MLflow's store API (``start_trace`` per
trace, one ``log_spans`` per batch, which the SQL store accepts across traces),
retrying with backoff while the store is down. The only loss is a full queue,
and each lost trace is counted.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from mlflow_llmops.core import keys
from mlflow_llmops.tracing.cost import TraceCoster
from mlflow_llmops.tracing.sampling import ALWAYS, Decision, Sampler

_logger = logging.getLogger("mlflow_llmops.tracing")
#: MLflow's active experiment while the store is unreachable at start-up: traces created
#: meanwhile carry it, and the writer swaps in the real id once it can resolve it.
UNRESOLVED_EXPERIMENT = "llmops-unresolved"
#: how often an idle worker looks for spool directories of processes that ended
ADOPT_EVERY_S = 30.0


@dataclass
class TracingStats:
    """Counters since start-up; ``queued`` is the current queue length.

    Every trace created is in exactly one of: ``exported``, ``sampled_out``, ``dropped``,
    ``failed``, ``unsent_at_shutdown``, ``spooled`` (in the on-disk spool, not yet in the
    store). ``replayed`` counts traces written from the spool (also those left by an ended
    process, which this process did not create); ``spool_dropped`` counts traces refused
    by a full spool (each also in ``dropped`` or ``unsent_at_shutdown``).
    """

    created: int = 0
    kept: int = 0
    sampled_out: int = 0
    exported: int = 0
    dropped: int = 0  # queue full (and spool full or off): never reached the store
    failed: int = 0  # rejected by the store as invalid (permanent error)
    unsent_at_shutdown: int = 0
    spooled: int = 0  # own traces on disk now, waiting to be replayed
    replayed: int = 0
    spool_dropped: int = 0
    export_errors: int = 0  # failed write attempts (each retried)
    queued: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    sampled_out_by_route: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "kept": self.kept,
            "sampled_out": self.sampled_out,
            "exported": self.exported,
            "dropped": self.dropped,
            "failed": self.failed,
            "unsent_at_shutdown": self.unsent_at_shutdown,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "spool_dropped": self.spool_dropped,
            "export_errors": self.export_errors,
            "queued": self.queued,
            "by_reason": dict(self.by_reason),
            "sampled_out_by_route": dict(self.sampled_out_by_route),
        }


class RateLimitedLog:
    """At most one log line per ``every_s`` seconds; says how many were suppressed."""

    def __init__(self, every_s: float = 10.0, monotonic: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self._monotonic = monotonic
        self._last = -1e18
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args: object) -> bool:
        with self._lock:
            now = self._monotonic()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return False
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        suffix = f" ({suppressed} similar messages suppressed)" if suppressed else ""
        _logger.warning(msg + suffix, *args)
        return True


class TraceQueue:
    """A bounded FIFO of finished traces. ``put`` never blocks: when full it refuses."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.deque[Any] = collections.deque()
        self.mutex = threading.Lock()  # exposed so a signal handler can tell it is taken
        self._cond = threading.Condition(self.mutex)
        self.in_flight = 0  # taken by a worker, not yet written

    def put(self, item: Any) -> bool:
        with self.mutex:  # the condition's lock, without the Python-level __enter__
            if len(self._items) >= self.capacity:
                return False
            self._items.append(item)
            if len(self._items) == 1:
                self._cond.notify()
            return True

    def take(self, max_items: int, timeout_s: float) -> list[Any]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            n = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self.in_flight += n
            return batch

    def done(self, n: int) -> None:
        with self._cond:
            self.in_flight -= n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    def pending(self) -> int:
        with self._cond:
            return len(self._items) + self.in_flight

    def wait_empty(self, deadline: float) -> bool:
        with self._cond:
            while self._items or self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def drain(self) -> list[Any]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


def _is_permanent(exc: Exception) -> bool:
    """A 4xx other than 408/429 from the store: retrying the same trace cannot succeed."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429) and status != 404
    return False


def _to_trace(item: Any) -> Any:
    return item.to_mlflow_trace() if hasattr(item, "to_mlflow_trace") else item


def _probe_database(uri: str) -> None:
    """Fail fast when a database server is down: MLflow's SQL store retries the first
    connection for about 100 s, which would hold the export worker (and the spool)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("postgresql", "postgres", "mysql", "mssql"):
        return
    import sqlalchemy as sa

    args = {"connect_timeout": 5} if scheme in ("postgresql", "postgres", "mysql") else {}
    engine = sa.create_engine(uri, connect_args=args, poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


class StoreWriter:
    """Writes batches of MLflow ``Trace`` objects so that each trace lands with all its
    spans or not at all.

    SQLite and PostgreSQL stores: our bulk path (``bulk.py``), one transaction per batch.
    Other stores (an MLflow server over HTTP, SQL stores we do not mirror): one
    ``log_spans`` for the whole batch first (over HTTP, one OTLP ``/v1/traces`` request that
    the server writes in one transaction, creating each trace with its spans), then
    ``start_trace`` per trace, which merges metadata and tags into the existing row. A kill
    between the two leaves complete traces lacking our metadata, never orphan rows; both
    calls are idempotent, so a retried or replayed batch is not duplicated.
    """

    def __init__(self, tracking_uri: str, experiment_id: Callable[[], str | None]) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._bulk: Any = None
        self._experiment_id = experiment_id
        self.supports_log_spans = True
        #: bumped after each store call: lets a waiting signal handler tell slow from stuck
        self.progress = 0

    @property
    def client(self) -> Any:
        """Built on first write, in the export worker: building a SQL store connects to
        the database (with MLflow's own retries), which must not hold up start-up."""
        if self._client is None:
            from mlflow.tracing.client import TracingClient

            _probe_database(self.tracking_uri)

            from mlflow_llmops.tracing.bulk import SqlBulkWriter, bulk_supported

            client = TracingClient(self.tracking_uri)
            self._bulk = SqlBulkWriter(client.store) if bulk_supported(client.store) else False
            self._client = client
        return self._client

    @property
    def path(self) -> str:
        """``bulk`` or ``mlflow`` (known after the first write)."""
        return "bulk" if self._bulk else "mlflow"

    def _resolve(self, traces: Sequence[Any]) -> None:
        from mlflow.entities.trace_location import TraceLocation

        minute = keys.ingested_minute(int(time.time() * 1000))
        for trace in traces:
            info = trace.info
            exp = info.experiment_id
            if exp is None or exp == UNRESOLVED_EXPERIMENT:
                exp = self._experiment_id()
                if exp is None:
                    raise RuntimeError("experiment not resolved yet (tracking store unreachable)")
                info.trace_location = TraceLocation.from_experiment_id(exp)
            info.trace_metadata.setdefault(keys.INGESTED_MINUTE, minute)

    def write(
        self,
        traces: Sequence[Any],
        on_permanent: Callable[[Any, Exception], None],
        on_existing: Callable[[Any], None] | None = None,
    ) -> int:
        """Write ``traces`` (MLflow ``Trace`` objects); return how many are now stored
        (written, or found already there). Raises on a store error: retry the same batch."""
        client = self.client
        self._resolve(traces)
        if self._bulk:
            existing: list[Any] = []

            def _existing(trace: Any) -> None:
                existing.append(trace)
                if on_existing is not None:
                    on_existing(trace)

            written = self._bulk.write(traces, on_permanent, _existing)
            self.progress += 1
            return len(written) + len(existing)
        by_exp: dict[str, list[Any]] = collections.defaultdict(list)
        for trace in traces:
            by_exp[trace.info.experiment_id].append(trace)
        written = 0
        for exp, group in by_exp.items():
            spans = [s for t in group for s in t.data.spans]
            if spans and self.supports_log_spans:
                try:
                    client.log_spans(exp, spans)
                except NotImplementedError:
                    self.supports_log_spans = False
                self.progress += 1
            for trace in group:
                try:
                    client.start_trace(trace.info)
                except Exception as e:
                    if not _is_permanent(e):
                        raise
                    on_permanent(trace, e)
                    continue
                self.progress += 1
                if not self.supports_log_spans:
                    client._upload_trace_data(trace.info, trace.data)
                    self.progress += 1
                written += 1
        return written


class ExportWorker:
    """Background writer: batches, backoff on store errors, never touches the caller.

    With a spool: a batch the store refuses goes to the spool, and while the spool holds
    anything new batches follow it there (replay keeps the order); every backoff interval
    the oldest spool file is retried, and once one is written the rest follow at full
    speed. Without a spool a failing batch is retried in memory until shutdown.
    """

    def __init__(
        self,
        queue: TraceQueue,
        writer: StoreWriter,
        stats: TracingStats,
        lock: threading.Lock,
        *,
        batch_size: int,
        retry_backoff_s: float,
        max_backoff_s: float,
        spool: Any = None,
    ) -> None:
        self.queue = queue
        self.writer = writer
        self.stats = stats
        self._lock = lock
        self.batch_size = batch_size
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.spool = spool
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._log = RateLimitedLog()
        self._spool_log = RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name="llmops-trace-export", daemon=True)
        self.last_error: str | None = None
        #: what the worker is doing, for a signal handler telling slow from stuck
        self.writing = False
        self.in_backoff = False
        #: the batch being written now; shutdown may spool it if the write hangs
        self._current: list[Any] | None = None
        self._current_taken = False
        self._backoff = retry_backoff_s
        self._next_try = 0.0
        self.outage = False
        self._next_adopt = time.monotonic() + ADOPT_EVERY_S

    def position(self) -> tuple[int, int] | None:
        """Where the worker's code is while it writes (None otherwise): changes as long
        as it runs Python code, stays put while it waits on a lock or a long I/O call."""
        if not self.writing:
            return None
        frame = sys._current_frames().get(self._thread.ident or 0)
        return None if frame is None else (id(frame.f_code), frame.f_lasti)

    def start(self) -> None:
        self._thread.start()

    def stop(self, abandon: bool = False) -> None:
        """Ask the worker to finish; ``abandon`` makes it give up a batch it is retrying."""
        if abandon:
            self._abandon.set()
        self._stop.set()
        self.queue.wake()

    def join(self, timeout_s: float) -> None:
        self._thread.join(max(0.0, timeout_s))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _permanent(self, trace: Any, exc: Exception) -> None:
        with self._lock:
            self.stats.failed += 1
        self._log.warning("trace %s rejected by the tracking store: %s", trace.info.trace_id, exc)

    def _permanent_adopted(self, trace: Any, exc: Exception) -> None:
        """A spooled trace of an ended process refused by the store: logged, not counted
        (this process did not create it)."""
        self._log.warning(
            "spooled trace %s (from an ended process) rejected by the tracking store: %s",
            trace.info.trace_id,
            exc,
        )

    def _error(self, e: Exception, what: str) -> None:
        with self._lock:
            self.stats.export_errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        self._log.warning(
            "tracking store write failed (%s; %d traces waiting in memory, %d in the spool; "
            "retrying in %.1fs): %s",
            what,
            self.queue.pending(),
            self.spool.pending() if self.spool else 0,
            self._backoff,
            self.last_error[:300],
        )
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)
        self.outage = True

    def _ok(self) -> None:
        self.last_error = None
        self._backoff = self.retry_backoff_s
        self._next_try = 0.0
        self.outage = False

    # -- spool -----------------------------------------------------------------
    def spool_traces(self, traces: list[Any]) -> bool:
        """Put ``traces`` (this process's) in the spool; False when it is off or full."""
        if self.spool is None or not traces or self.spool.closed:
            return False
        try:
            ok = self.spool.put(traces)
        except OSError as e:
            self._spool_log.warning("spool write failed: %s", e)
            ok = False
        with self._lock:
            if ok:
                self.stats.spooled += len(traces)
            else:
                self.stats.spool_dropped += len(traces)
        if not ok:
            self._spool_log.warning(
                "trace spool full or unavailable (%d bytes max): %d traces not spooled",
                self.spool.max_bytes,
                len(traces),
            )
        return ok

    def spill_at_shutdown(self, leftover: list[Any]) -> int:
        """At the deadline: spool what is left in memory (the queue's ``leftover`` and a
        batch the worker may still be writing); return how many traces could not be."""
        batch: list[Any] = []
        with self._lock:
            if self.is_alive() and self._current is not None and not self._current_taken:
                batch = list(self._current)
                self._current_taken = True  # the worker will not count it any more
        traces = [_to_trace(i) for i in leftover] + batch
        if not traces:
            return 0
        return 0 if self.spool_traces(traces) else len(traces)

    def _replay_one(self) -> bool:
        """Write the oldest spool file; False when the store failed (retry later)."""
        f = self.spool.head()
        if f is None:
            return True
        try:
            traces = self.spool.read(f)
        except (OSError, ValueError, KeyError) as e:
            self.spool.quarantine(f, f"{type(e).__name__}: {e}")
            with self._lock:
                if f.own:
                    self.stats.spooled -= f.traces
                    self.stats.failed += f.traces
            return True
        on_permanent = self._permanent if f.own else self._permanent_adopted
        try:
            self.writing = True
            try:
                stored = self.writer.write(traces, on_permanent)
            finally:
                self.writing = False
        except Exception as e:  # noqa: BLE001 - the store may fail in any way
            self._error(e, "replaying the spool")
            return False
        self.spool.remove(f)
        with self._lock:
            self.stats.replayed += stored
            if f.own:
                self.stats.spooled -= f.traces
                self.stats.exported += stored
        self._ok()
        return True

    def wait_flushed(self, deadline: float) -> bool:
        """Until the queue is written or spooled and the spool replayed (or the store is
        down, so replay waits for a later attempt or the next process): True, else False
        at ``deadline``."""
        if not self.queue.wait_empty(deadline):
            return False
        while self.spool is not None and self.spool.head() is not None and not self.outage:
            if time.monotonic() >= deadline or not self.is_alive():
                return False
            time.sleep(0.02)
        return True

    # -- main loop -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            spool = self.spool
            if spool is not None and spool.head() is not None:
                if not self._stop.is_set() and time.monotonic() >= self._next_try:
                    self._replay_one()
                    batch = self.queue.take(self.batch_size, 0.0)
                else:
                    wait = max(0.0, min(0.2, self._next_try - time.monotonic()))
                    batch = self.queue.take(self.batch_size, wait)
                if batch:  # the spool is not empty: keep the order
                    self._spool_or_write(batch)
                elif self._stop.is_set():
                    return
                continue
            batch = self.queue.take(self.batch_size, 0.2)
            if not batch:
                if self._stop.is_set():
                    return
                if spool is not None and time.monotonic() >= self._next_adopt:
                    self._next_adopt = time.monotonic() + ADOPT_EVERY_S
                    spool.adopt()  # a sibling worker process that died meanwhile
                continue
            self._write_batch(batch)

    def _spool_or_write(self, batch: list[Any]) -> None:
        """Behind a non-empty spool: to the spool (order), else (full) to the store."""
        traces = [_to_trace(i) for i in batch]
        if not self.spool_traces(traces):
            self._write_batch(batch, traces)
            return
        self.queue.done(len(batch))

    def _write_batch(self, batch: list[Any], traces: list[Any] | None = None) -> None:
        traces = traces if traces is not None else [_to_trace(i) for i in batch]
        with self._lock:
            self._current, self._current_taken = traces, False
        spooled = False
        while True:
            try:
                self.writing = True
                try:
                    written = self.writer.write(traces, self._permanent)
                finally:
                    self.writing = False
                with self._lock:
                    if not self._current_taken:
                        self.stats.exported += written
                self._ok()
                break
            except Exception as e:  # noqa: BLE001 - the store may fail in any way
                self._error(e, "writing a batch")
                with self._lock:
                    taken = self._current_taken
                if taken:
                    break
                if not spooled and self.spool is not None:
                    with self._lock:
                        self._current_taken = True
                    if self.spool_traces(traces):
                        break
                    with self._lock:  # spool full: keep retrying in memory
                        self._current_taken = False
                        self.stats.spool_dropped -= len(traces)
                    spooled = True
                self.in_backoff = True
                try:
                    abandon = self._abandon.wait(max(0.0, self._next_try - time.monotonic()))
                finally:
                    self.in_backoff = False
                if abandon:
                    with self._lock:
                        if not self._current_taken:
                            self._current_taken = True
                            self.stats.unsent_at_shutdown += len(traces)
                    break
        with self._lock:
            self._current = None
        self.queue.done(len(batch))


class LlmopsSpanExporter(SpanExporter):
    """Runs on the caller's thread when a span ends (MLflow's synchronous processor path).

    Child spans stay in MLflow's in-memory trace manager; when the root span ends
    the whole trace is popped, the sampling decision is taken, static metadata is
    added and the trace is queued. Costs a dict update and a deque append.
    """

    def __init__(
        self,
        sampler: Sampler,
        queue: TraceQueue,
        stats: TracingStats,
        lock: threading.Lock,
        static_metadata: dict[str, str],
        on_decision: Callable[[int, bool], None] | None = None,
        coster: TraceCoster | None = None,
    ) -> None:
        from mlflow.tracing.trace_manager import InMemoryTraceManager

        self._manager = InMemoryTraceManager.get_instance()
        self.sampler = sampler
        self.queue = queue
        self.stats = stats
        self._lock = lock
        self.static_metadata = static_metadata
        self.on_decision = on_decision
        #: prices the trace for the cost tail rule; None when no rule needs it
        self.coster = coster if sampler.needs_cost else None
        self._deferred: dict[int, ReadableSpan] = {}
        self._deferred_lock = threading.Lock()
        self._drop_log = RateLimitedLog()
        #: set (under ``lock``) once shutdown has stopped the worker: a trace ending later
        #: can no longer be written and is counted as unsent instead of sitting in the queue
        self.closed = False
        #: takes traces the queue cannot (the spool's ``put``); True when it took them
        self.overflow: Callable[[list[Any]], bool] | None = None
        #: decisions already taken for a trace (a head-dropped trace a tail rule kept,
        #: replayed through MLflow: ``minimal.py``), by OTel trace id
        self._forced: dict[int, Decision] = {}

    def force(self, otel_trace_id: int, decision: Decision) -> None:
        """Take ``decision`` for this trace when its root ends instead of deciding again."""
        self._forced[otel_trace_id] = decision

    def unforce(self, otel_trace_id: int) -> bool:
        """Withdraw a forced decision; False when the trace's root already ended here."""
        return self._forced.pop(otel_trace_id, None) is not None

    def count_failed(self, otel_trace_id: int | None) -> None:
        """A trace that could not be handed over (a failed replay): counted created and
        failed; its unfinished spans, if any, are taken out of MLflow's trace manager."""
        if otel_trace_id is not None:
            self._pop(otel_trace_id)
        with self._lock:
            self.stats.created += 1
            self.stats.failed += 1

    def count_sampled_out(self, route: str | None) -> None:
        """A trace decided (dropped) outside this exporter: counted as created, sampled out."""
        with self._lock:
            self.stats.created += 1
            self.stats.sampled_out += 1
            by_route = self.stats.sampled_out_by_route
            by_route[route or ""] = by_route.get(route or "", 0) + 1

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            if span.parent is not None:
                continue
            tid = span.context.trace_id
            still_open, trace = self._take(tid)
            if still_open:
                with self._deferred_lock:
                    self._deferred[tid] = span
                continue
            if trace is not None:
                self._finish_trace(tid, trace)
        if self._deferred:
            self._flush_deferred()
        return SpanExportResult.SUCCESS

    def _flush_deferred(self) -> None:
        with self._deferred_lock:
            ready = [t for t in self._deferred if not self._manager.has_open_spans(t)]
            for t in ready:
                del self._deferred[t]
        for t in ready:
            self._finish(t)

    def _pop(self, otel_trace_id: int) -> Any:
        """Take the in-memory trace out of MLflow's manager without converting it: the
        conversion to an immutable ``Trace`` is deferred to the export worker."""
        m = self._manager
        try:
            with m._lock:
                mlflow_id = m._otel_id_to_mlflow_trace_id.pop(otel_trace_id, None)
                return m._traces.pop(mlflow_id, None) if mlflow_id else None
        except AttributeError:  # MLflow internals moved: take the public, slower path
            popped = m.pop_trace(otel_trace_id)
            return None if popped is None else popped.trace

    def _take(self, otel_trace_id: int) -> tuple[bool, Any]:
        """``(True, None)`` while spans of the trace are still open, else ``(False, the
        popped trace or None)``: ``has_open_spans`` then ``_pop`` under one lock hold."""
        m = self._manager
        try:
            lock, ids, traces = m._lock, m._otel_id_to_mlflow_trace_id, m._traces
        except AttributeError:  # MLflow internals moved: take the public path
            if m.has_open_spans(otel_trace_id):
                return True, None
            return False, self._pop(otel_trace_id)
        with lock:
            mlflow_id = ids.get(otel_trace_id)
            if mlflow_id is not None:
                trace = traces.get(mlflow_id)
                if trace is not None:
                    for span in trace.span_dict.values():
                        if span.end_time_ns is None:
                            return True, None
            ids.pop(otel_trace_id, None)
            return False, (traces.pop(mlflow_id, None) if mlflow_id else None)

    def _finish(self, otel_trace_id: int) -> None:
        trace = self._pop(otel_trace_id)
        if trace is not None:
            self._finish_trace(otel_trace_id, trace)

    def _finish_trace(self, otel_trace_id: int, trace: Any) -> None:
        info = trace.info
        meta = info.trace_metadata
        sampler = self.sampler
        forced = self._forced.pop(otel_trace_id, None) if self._forced else None
        if forced is not None:
            decision = forced
        elif sampler.always_keeps:  # the decision needs nothing from the trace
            decision = ALWAYS
        else:
            coster = self.coster
            decision = sampler.decide(
                trace_id_int=otel_trace_id,
                is_error=info.state.value == "ERROR",
                duration_ms=info.execution_duration,
                metadata=meta,
                tags=info.tags,
                cost_usd=None if coster is None else lambda: coster.trace_cost_usd(trace),
            )
        if self.on_decision is not None:
            self.on_decision(otel_trace_id, decision.keep)
        if not decision.keep:
            self.count_sampled_out(meta.get(keys.ROUTE))
            return
        meta.update(self.static_metadata)
        meta[keys.SAMPLING] = decision.reason  # type: ignore[assignment]
        meta[keys.SAMPLE_WEIGHT] = decision.weight  # type: ignore[assignment]
        with self._lock:
            s = self.stats
            s.created += 1
            s.kept += 1
            s.by_reason[decision.reason] = s.by_reason.get(decision.reason, 0) + 1  # type: ignore[index]
            closed = self.closed
            accepted = False if closed else self.queue.put(trace)
        if accepted:
            return
        # queue full, or shutdown already stopped the worker: the spool, else counted
        overflow = self.overflow
        if overflow is not None and overflow([_to_trace(trace)]):
            return
        with self._lock:
            if closed:
                s.unsent_at_shutdown += 1
                return
            s.dropped += 1
            dropped = s.dropped
        self._drop_log.warning(
            "trace export queue full (capacity %d): dropped trace %s; %d dropped so far. "
            "Raise tracing.queue_capacity or check the tracking store.",
            self.queue.capacity,
            info.trace_id,
            dropped,
        )

    def pending_deferred(self) -> int:
        with self._deferred_lock:
            return len(self._deferred)

    def shutdown(self) -> None:
        self._flush_deferred()
