"""``setup_production_tracing``: one call at start-up wires sampling, metadata, redaction,
loss-counted async export, graceful shutdown, GenAI metrics and optional OTLP export.

Why take over MLflow's export stage: with MLflow 3.17.2 defaults a burst of 2,000
traces kept 680 and SIGTERM lost 192 of 200 queued traces, with no counter. We keep
MLflow's span processor (trace assembly, metadata, previews, cost) in its
synchronous mode and replace its exporter by ours (see ``export.py``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_llmops.core import keys
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.pricing.config import PricingConfig
from mlflow_llmops.tracing.config import TracingConfig
from mlflow_llmops.tracing.cost import TraceCoster
from mlflow_llmops.tracing.export import (
    UNRESOLVED_EXPERIMENT,
    ExportWorker,
    LlmopsSpanExporter,
    StoreWriter,
    TraceQueue,
    TracingStats,
)
from mlflow_llmops.tracing.metrics import GenAiMetrics
from mlflow_llmops.tracing.minimal import Recorder, light_trace_cost
from mlflow_llmops.tracing.otlp import (
    SampledOtlpProcessor,
    abandon_exporter,
    make_metric_reader,
    make_span_exporter,
)
from mlflow_llmops.tracing.processors import (
    SpanEndProcessor,
    make_mlflow_span_processor,
    make_tracer_provider,
)
from mlflow_llmops.tracing.prometheus import PrometheusEndpoint
from mlflow_llmops.tracing.redaction import Redactor
from mlflow_llmops.tracing.sampling import Sampler
from mlflow_llmops.tracing.spool import open_spool

_logger = logging.getLogger("mlflow_llmops.tracing")
_ACTIVE: TracingHandle | None = None
_ACTIVE_LOCK = threading.Lock()


def _git_commit() -> str | None:
    for var in ("GIT_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA", "SOURCE_COMMIT"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            cwd=Path.cwd(),
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def static_metadata(service_name: str, config: TracingConfig) -> dict[str, str]:
    """Metadata set once per process; detected values fill what the config leaves out."""
    m = config.metadata
    values = {
        keys.SERVICE: service_name,
        keys.ENVIRONMENT: m.environment or os.environ.get("LLMOPS_ENVIRONMENT"),
        keys.SERVICE_VERSION: m.service_version or os.environ.get("LLMOPS_SERVICE_VERSION"),
        keys.GIT_COMMIT: m.git_commit or _git_commit(),
        keys.HOST: m.host or socket.gethostname(),
        keys.DEPLOYMENT: m.deployment or os.environ.get("LLMOPS_DEPLOYMENT"),
    }
    return {k: str(v) for k, v in values.items() if v}


def _redact_url(url: str | None) -> str:
    """A URL fit for logs: no password, no query string (tokens often travel there)."""
    if not url:
        return "off"
    url = url.split("?", 1)[0].split("#", 1)[0]
    return re.sub(r"//([^/:@]*):[^/@]*@", r"//\1:***@", url)


@dataclass(frozen=True)
class TracingTarget:
    """Where a handle's traces go, and under which service name they are recorded."""

    tracking_uri: str
    experiment_name: str
    service_name: str
    #: None while the store was unreachable at start-up (resolved by the export worker)
    experiment_id: str | None = None


class TracingHandle:
    """What ``setup_production_tracing`` returns: live counters and a bounded shutdown.

    Built in stages, in this order: sampling (sampler, coster), telemetry (OTLP traces,
    metric readers, Prometheus, GenAI metrics), export (exporter, store writer, spool,
    worker, redacting processor), then installation as MLflow's tracer provider."""

    def __init__(
        self,
        config: TracingConfig,
        target: TracingTarget,
        *,
        metric_readers: list[Any] | None = None,
        app_span_processors: list[Any] | None = None,
        pricing: PricingConfig | None = None,
    ) -> None:
        self.config = config
        self.tracking_uri = target.tracking_uri
        self.experiment_id = target.experiment_id
        self.experiment_name = target.experiment_name
        self.service_name = target.service_name
        self._lock = threading.Lock()
        self._stats = TracingStats()
        self._closed = False
        self._shutdown_done = threading.Event()
        self._shutdown_thread: int | None = None
        self._shutdown_report: dict[str, Any] | None = None
        self._shutdown_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self.queue = TraceQueue(config.queue_capacity)
        self.static_metadata = static_metadata(self.service_name, config)
        self._build_sampling(pricing)
        self._build_telemetry(list(metric_readers or []))
        self._build_export()
        self._install_processors(list(app_span_processors or []))

    # -- stages of __init__ ------------------------------------------------
    def _build_sampling(self, pricing: PricingConfig | None) -> None:
        """The head/tail sampler, and the coster its cost rule needs (warmed up now)."""
        self.sampler = Sampler(self.config.sampling)
        self.coster: TraceCoster | None = None
        if self.sampler.needs_cost:
            self.coster = TraceCoster(pricing)
            self.coster.warm_up()

    def _build_telemetry(self, readers: list[Any]) -> None:
        """OTLP trace export, the metric readers (the application's, OTLP, Prometheus) and
        the GenAI metrics that feed them; the Prometheus endpoint starts serving now."""
        otlp_cfg = self.config.otlp
        timeout = otlp_cfg.timeout.total_seconds()
        self.otlp: SampledOtlpProcessor | None = None
        if otlp_cfg.traces_endpoint:
            self.otlp = SampledOtlpProcessor(
                make_span_exporter(otlp_cfg.traces_endpoint, otlp_cfg.headers, timeout)
            )
        self._otlp_reader: Any = None
        if otlp_cfg.metrics_enabled and otlp_cfg.metrics_endpoint:
            headers = otlp_cfg.metrics_headers
            self._otlp_reader = make_metric_reader(
                otlp_cfg.metrics_endpoint,
                headers if headers is not None else otlp_cfg.headers,
                timeout,
                otlp_cfg.metrics_export_interval.total_seconds(),
            )
            readers.append(self._otlp_reader)
        self.prometheus: PrometheusEndpoint | None = None
        prom = self.config.metrics
        if otlp_cfg.metrics_enabled and prom.prometheus_port is not None:
            self.prometheus = PrometheusEndpoint(
                prom.prometheus_port,
                host=prom.prometheus_host,
                directory=prom.prometheus_dir,
                interval_s=prom.prometheus_interval.total_seconds(),
            )
            readers.append(self.prometheus.reader)
        self.metrics: GenAiMetrics | None = None
        if otlp_cfg.metrics_enabled and readers:
            self.metrics = GenAiMetrics(
                service_name=self.service_name, readers=readers, stats=self._counter_snapshot
            )
        if self.prometheus is not None:
            self.prometheus.start()
        #: runs the OTLP and metrics shutdown, given up at the deadline; started now, as a
        #: thread may not start at interpreter exit (Python 3.12's atexit) or in a handler
        self._closer = _TaskThread("llmops-telemetry-close") if self.otlp or self.metrics else None

    def _build_export(self) -> None:
        """Our exporter in MLflow's place, the store writer, the spool, the export worker
        (not started yet) and the span processor that redacts and measures."""
        config = self.config
        self.exporter = LlmopsSpanExporter(
            self.sampler,
            self.queue,
            self._stats,
            self._lock,
            self.static_metadata,
            on_decision=self.otlp.decide if self.otlp else None,
            coster=self.coster,
        )
        self.writer = StoreWriter(self.tracking_uri, self._resolve_experiment)
        self.spool = open_spool(config.spool, self.tracking_uri, self.experiment_name)
        self.worker = ExportWorker(
            self.queue,
            self.writer,
            self._stats,
            self._lock,
            batch_size=min(config.batch_size, config.queue_capacity),
            retry_backoff_s=config.retry_backoff.total_seconds(),
            max_backoff_s=config.max_backoff.total_seconds(),
            spool=self.spool,
        )
        if self.spool is not None:
            self.exporter.overflow = self.worker.spool_traces
        self.span_processor = SpanEndProcessor(Redactor(config.redaction), self.metrics)

        #: head-dropped traces recorded outside MLflow (``sampling.minimal_when_dropped``)
        self.recorder: Recorder | None = None
        if config.sampling.minimal_when_dropped and not self.sampler.always_keeps:
            coster = self.coster
            self.recorder = Recorder(
                sampler=self.sampler,
                exporter=self.exporter,
                metrics_of=self.span_processor.light_metrics,
                cost_of=None if coster is None else lambda t: light_trace_cost(coster, t),
                omit_io=config.sampling.light_when_dropped,
            )

    def _install_processors(self, app_span_processors: list[Any]) -> None:
        """Our tracer provider (MLflow's processor fed by our exporter, plus OTLP) becomes
        MLflow's; the export worker starts; the application's span processors are kept."""
        import mlflow
        from opentelemetry.sdk.resources import Resource

        tp = make_tracer_provider(
            Resource.create({"service.name": self.service_name}), self.recorder
        )
        # MLflow's processor, plus the head decision at trace start (sampled-out traces are
        # recorded light: no input/output serialisation; see processors.py)
        tp.add_span_processor(
            make_mlflow_span_processor(
                self.exporter, self.sampler, light=self.config.sampling.light_when_dropped
            )
        )
        if self.otlp is not None:
            tp.add_span_processor(self.otlp)
        self.tracer_provider = tp
        self.worker.start()
        self._install(tp)
        if self.recorder is not None:
            self.recorder.install()
        # keep the application's own span processors; ours runs first (redaction before them)
        self._previous_span_processors = app_span_processors
        mlflow.tracing.configure(
            span_processors=[self.span_processor, *self._previous_span_processors]
        )

    # -- wiring ----------------------------------------------------------
    @staticmethod
    def _install(tp: Any) -> None:
        from mlflow.tracing.provider import provider

        provider.set(tp)
        provider.once.do_once(lambda: None)

    def _resolve_experiment(self) -> str | None:
        """Called by the export worker; resolves the experiment once the store answers
        (it may have been unreachable at start-up)."""
        if self.experiment_id is None:
            try:
                experiment_id = _get_or_create_experiment(self.tracking_uri, self.experiment_name)
            except Exception:  # noqa: BLE001 - still unreachable; the worker retries
                return None
            self.experiment_id = experiment_id
            _activate_experiment(experiment_id, only_if_unresolved=True)
            _logger.warning(
                "mlflow-llmops tracing: tracking store %s reachable: experiment %r resolved "
                "(id %s); writing the queued traces",
                _redact_url(self.tracking_uri),
                self.experiment_name,
                experiment_id,
            )
        return self.experiment_id

    def _counter_snapshot(self) -> Mapping[str, int]:
        with self._lock:
            s = self._stats
            return {
                "created": s.created,
                "kept": s.kept,
                "sampled_out": s.sampled_out,
                "dropped": s.dropped,
                "exported": s.exported,
                "failed": s.failed,
            }

    # -- public ----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters: created, kept, sampled_out, exported, dropped, failed, export_errors,
        queued (waiting now), unsent_at_shutdown, by_reason, sampled_out_by_route. After
        shutdown, ``created = exported + sampled_out + dropped + failed + unsent_at_shutdown
        (+ spooled)``: every finished trace is stored or counted."""
        with self._lock:
            out = self._stats.as_dict()
        out["queued"] = self.queue.pending()
        out["spool_pending"] = self.spool.pending() if self.spool is not None else 0
        out["last_export_error"] = self.worker.last_error
        out["experiment_resolved"] = self.experiment_id is not None
        if self.otlp is not None:
            out.update(self.otlp.counters())
        return out

    def on_shutdown(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(report)`` once shutdown has its final report (e.g. to write it
        where a supervisor reads it): the last word of a worker that exits on SIGTERM."""
        self._shutdown_callbacks.append(callback)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued trace is written (True) or the timeout passes (False)."""
        self.exporter.shutdown()  # finish traces whose root waited for background spans
        return self.worker.wait_flushed(time.monotonic() + timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Flush within ``timeout_s`` (default ``shutdown_timeout``), stop, and report what
        could not be sent. Idempotent: a second caller (atexit while a signal's flush runs)
        waits for the first one's report, within its own timeout."""
        timeout_s = self.config.shutdown_timeout.total_seconds() if timeout_s is None else timeout_s
        with _ACTIVE_LOCK:
            first = not self._closed
            self._closed = True
            if first:
                self._shutdown_thread = threading.get_ident()
        if not first:
            self._shutdown_done.wait(timeout_s)
            return self._shutdown_report or self.stats()
        try:
            return self._shutdown(timeout_s)
        finally:
            self._shutdown_done.set()

    def _shutting_down_on(self, thread_id: int | None) -> bool:
        """Whether ``shutdown`` is running now on that thread."""
        done = self._shutdown_done.is_set()
        return self._closed and not done and self._shutdown_thread == thread_id

    def _shutdown(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(max(0.0, deadline - time.monotonic()))
        self.worker.stop(abandon=not flushed)
        self.worker.join(max(0.0, deadline - time.monotonic()) + 0.5)
        with self._lock:
            self.exporter.closed = True
        leftover = self.queue.drain()
        if self.spool is not None:  # what is still in memory goes to disk
            unsent = self.worker.spill_at_shutdown(leftover)
            self.spool.close()
        else:
            # a batch the worker is still writing at the deadline may not land: count it too
            unsent = len(leftover) + (self.queue.pending() if self.worker.is_alive() else 0)
        with self._lock:
            self._stats.unsent_at_shutdown += unsent
        self._close_telemetry(deadline)
        report = self.stats()
        report["flushed"] = flushed
        self._shutdown_report = report
        lost = report["unsent_at_shutdown"] + report["dropped"] + report["failed"]
        (_logger.warning if lost else _logger.info)(
            "mlflow-llmops tracing shut down: created=%d kept=%d exported=%d sampled_out=%d "
            "dropped=%d failed=%d unsent=%d spooled=%d",
            report["created"],
            report["kept"],
            report["exported"],
            report["sampled_out"],
            report["dropped"],
            report["failed"],
            report["unsent_at_shutdown"],
            report.get("spooled", 0),
        )
        for callback in self._shutdown_callbacks:
            try:
                callback(report)
            except Exception:  # noqa: BLE001 - a report reader must not stop the shutdown
                _logger.exception("mlflow-llmops tracing: shutdown callback failed")
        self._uninstall()
        return report

    def _close_telemetry(self, deadline: float) -> None:
        """Flush and stop OTLP traces, the Prometheus endpoint and metrics by ``deadline``.

        The OTLP exporters retry a refused or hanging collector with backoff for up to
        their own timeout, for each of force_flush and shutdown (6-15 s for
        ``shutdown(2)``): each step runs on a helper thread started ahead of time and is
        given up at the deadline; OTLP spans not confirmed by then count as dropped."""
        otlp, metrics = self.otlp, self.metrics
        if otlp is not None:

            def close_otlp() -> None:
                otlp.force_flush(int(max(0.1, deadline - time.monotonic()) * 1000))
                otlp.shutdown()

            if not self._run_bounded(close_otlp, deadline):
                otlp.abandon()
        if self.prometheus is not None:
            self.prometheus.shutdown()
        if metrics is not None:

            def close_metrics() -> None:
                metrics.force_flush(max(0.1, deadline - time.monotonic()))
                metrics.shutdown(max(0.1, deadline - time.monotonic()))

            if not self._run_bounded(close_metrics, deadline):
                _logger.warning("mlflow-llmops tracing: metrics export did not finish in time")
                if self._otlp_reader is not None:
                    abandon_exporter(self._otlp_reader)
        if self._closer is not None:
            self._closer.stop()

    def _run_bounded(self, task: Callable[[], None], deadline: float) -> bool:
        """Run ``task`` on the closer thread; False when it has not finished by ``deadline``."""
        done = threading.Event()

        def run() -> None:
            try:
                task()
            except Exception:  # noqa: BLE001 - a failing exporter must not stop the shutdown
                _logger.debug("telemetry shutdown step failed", exc_info=True)
            finally:
                done.set()

        assert self._closer is not None
        self._closer.submit(run)
        return done.wait(max(0.1, deadline - time.monotonic()))

    def _progress(self) -> tuple[Any, ...] | None:
        """Changes while the export makes headway; None while the store is failing and the
        worker waits to retry (slow, not stuck). Read without locks: the caller may be a
        signal handler that interrupted a thread holding them."""
        if self.worker.in_backoff:
            return None
        s = self._stats
        return (
            s.exported,
            s.failed,
            s.export_errors,
            s.unsent_at_shutdown,
            self.writer.progress,
            self.worker.position(),
            self._shutdown_done.is_set(),
        )

    def _flush_locks_taken(self) -> bool:
        """Whether a lock the flush needs is taken now, perhaps by the main thread that a
        signal interrupted: our plain locks (owner unknown), and logging handler locks
        owned by this (the main) thread."""
        plain = [self._lock, self.queue.mutex, self.exporter._deferred_lock, _ACTIVE_LOCK]
        if self.otlp is not None:
            plain.append(self.otlp._lock)
        if any(lock.locked() for lock in plain):
            return True
        logger: logging.Logger | None = _logger
        while logger is not None:
            for h in logger.handlers:
                owned = getattr(h.lock, "_is_owned", None)
                if owned is not None and owned():
                    return True
            logger = logger.parent if logger.propagate else None
        return False

    def _uninstall(self) -> None:
        global _ACTIVE
        import mlflow
        from mlflow.tracing.provider import provider

        if self.recorder is not None:
            self.recorder.uninstall()
        try:
            if provider.get() is self.tracer_provider:
                mlflow.tracing.reset()  # also resets MLflow's tracing config
            mlflow.tracing.configure(span_processors=list(self._previous_span_processors))
        except Exception:  # noqa: BLE001
            _logger.debug("could not restore MLflow tracing", exc_info=True)
        _uninstall_signal_handlers(self)
        with _ACTIVE_LOCK:
            if _ACTIVE is self:
                _ACTIVE = None
        _release_held()  # flushed: a signal a server re-raised may end the process now

    def describe(self) -> str:
        """The start-up line: endpoints without credentials or query strings."""
        o = self.config.otlp
        s = self.config.sampling
        pending = "" if self.experiment_id is not None else " (unresolved: store unreachable)"
        return (
            f"mlflow-llmops tracing: service={self.service_name} "
            f"store={_redact_url(self.tracking_uri)} experiment={self.experiment_name}{pending} "
            f"queue={self.config.queue_capacity} sampling.ratio={s.ratio} "
            f"otlp.traces={_redact_url(o.traces_endpoint)} "
            f"otlp.metrics={_redact_url(o.metrics_endpoint) if o.metrics_enabled else 'off'}"
            + (f" prometheus=:{self.prometheus.port}" if self.prometheus is not None else "")
            + (f" (auth headers: {len(o.headers)})" if o.headers else "")
        )


# -- signals -------------------------------------------------------------
_PREVIOUS: dict[int, Any] = {}
_INSTALLED: dict[int, Any] = {}
_FLUSHER: _SignalFlusher | None = None
#: a flush may wait this long for the interrupted main thread to release our locks
_MAX_DEFER_S = 1.0
#: a flush that makes no headway this long may be waiting for something the interrupted
#: main thread holds (a lock inside MLflow, a class-wide ``cached_property`` lock on
#: Python 3.11, a logging handler): the handler lets the main thread run, then waits again
_STALL_S = 2.0
_POLL_S = 0.1


class _TaskThread:
    """A daemon thread started ahead of time that runs the callables handed to it: a
    signal handler must not start threads (the interrupted code may hold threading's
    own locks)."""

    def __init__(self, name: str) -> None:
        self._tasks: collections.deque[Callable[[], None]] = collections.deque()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.append(task)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._tasks:
                self._tasks.popleft()()
            if self._stopped:
                return

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()


class _SignalFlusher:
    """Runs the flush a SIGTERM/SIGINT asked for on a thread of its own.

    A Python signal handler runs on the main thread between two bytecodes, maybe in
    the middle of code holding a lock the flush needs (the stats or queue lock, a
    logging handler's lock, a lock inside MLflow): flushing right there can deadlock.
    So the handler hands the flush to one thread and waits for it with the deadline.
    When one of our locks is taken at that moment, or the flush stops making headway,
    the handler returns instead and a second thread re-sends the signal to the main
    thread a few milliseconds later, once the interrupted code has moved on.
    """

    def __init__(self) -> None:
        self._done = threading.Event()
        self._flushing: TracingHandle | None = None
        self._main_id = threading.main_thread().ident
        self._flusher = _TaskThread("llmops-signal-flush")
        self._resender = _TaskThread("llmops-signal-resend")

    def _flush(self, handle: TracingHandle) -> None:
        try:
            handle.shutdown()
        except Exception:  # noqa: BLE001
            _logger.exception("mlflow-llmops tracing: flush on signal failed")
        finally:
            self._done.set()

    def _resend(self, signum: int) -> None:
        time.sleep(0.005)
        try:
            signal.pthread_kill(self._main_id, signum)  # type: ignore[arg-type]
        except (OSError, ValueError):
            pass

    def resend_later(self, signum: int) -> None:
        self._resender.submit(lambda: self._resend(signum))

    def start(self, handle: TracingHandle) -> None:
        """Run ``handle.shutdown()`` on the flush thread, once per handle."""
        if self._flushing is handle:
            return
        self._flushing = handle
        self._done.clear()
        self._flusher.submit(lambda: self._flush(handle))

    def wait(self, handle: TracingHandle, deadline: float) -> bool | None:
        """True once the flush finished, False at ``deadline``, None when it made no
        headway for ``_STALL_S`` (perhaps waiting for the interrupted thread)."""
        last, since = handle._progress(), time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._done.wait(min(_POLL_S, deadline - now)):
                return True
            token = handle._progress()
            if token is None or token != last:  # headway, or a store that is failing
                last, since = token, time.monotonic()
            elif time.monotonic() - since >= _STALL_S:
                return None

    def stop(self) -> None:
        self._flusher.stop()
        self._resender.stop()


_DEFERRED_SINCE: float | None = None
_FLUSH_DEADLINE: float | None = None
_IN_HANDLER = False
#: signals held (blocked on the main thread) until the flush at exit: see ``_hold``
_HELD: set[int] = set()


def _ends_process_now(previous: Any) -> bool:
    """Whether the handler we chain to ends the process on the spot (the default action
    of SIGTERM/SIGINT): then the flush must happen in our handler, before chaining."""
    return previous is None or previous == signal.SIG_DFL


def _on_signal(signum: int, frame: Any, previous: Any) -> None:
    """SIGTERM/SIGINT: flush now only when the process is about to die of the signal.

    A server's handler (uvicorn, gunicorn workers) or the application's own one starts
    a graceful shutdown: the server stops accepting, lets the requests in flight finish,
    then exits. Flushing here would close tracing under those requests (their traces
    would be lost, uncounted). So we chain to it and flush when the process really ends
    (``atexit``); the signal uvicorn re-raises at its end is held until then.
    """
    global _DEFERRED_SINCE, _FLUSH_DEADLINE, _IN_HANDLER
    active, flusher = _ACTIVE, _FLUSHER
    if active is None or flusher is None or not _ends_process_now(previous):
        if previous is not None and previous != signal.SIG_IGN:
            if previous is not signal.default_int_handler:  # KeyboardInterrupt exits via atexit
                _hold(signum)
        _chain(signum, frame, previous)
        return
    if not _IN_HANDLER:  # a 2nd signal while we wait: no second wait
        now = time.monotonic()
        if _FLUSH_DEADLINE is None:
            since = _DEFERRED_SINCE if _DEFERRED_SINCE is not None else now
            main_id = threading.main_thread().ident
            if active._shutting_down_on(main_id) or (
                active._flush_locks_taken() and now - since < _MAX_DEFER_S
            ):
                # the main thread is inside a critical section (or its own bounded
                # shutdown): let it leave, and take the signal again then
                _DEFERRED_SINCE = since
                flusher.resend_later(signum)
                return
            _DEFERRED_SINCE = None
            _FLUSH_DEADLINE = now + active.config.shutdown_timeout.total_seconds() + 2.0
            flusher.start(active)
        _IN_HANDLER = True
        try:
            done = flusher.wait(active, _FLUSH_DEADLINE)
        finally:
            _IN_HANDLER = False
        if done is None:  # no headway: let the interrupted code release what it holds
            flusher.resend_later(signum)
            return
        if not done:
            _logger.warning(
                "mlflow-llmops tracing: flush on signal %d did not finish in time", signum
            )
        _FLUSH_DEADLINE = None
        _uninstall_signal_handlers(active)
    _chain(signum, frame, previous)


def _hold(signum: int) -> None:
    """Block ``signum`` on the main thread until the flush at exit.

    uvicorn (alone, as ``--workers`` children, as a gunicorn worker class) installs its
    handler around ``serve()``; at the end it restores the handler it found (the
    default one when tracing was set up at import or in the lifespan, both inside
    ``serve()``) and re-raises the signal on the main thread to die of it: no atexit,
    the traces of the last requests lost. Blocked, that signal stays pending while the
    process exits normally; ``_release_held`` (at the end of the flush at exit) lets it
    through, so the process still ends by the signal, as the server meant. Only the
    main thread blocks it: a signal sent to the process still reaches the other
    threads, and so the server's handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask (Windows)
        return
    _HELD.add(signum)


def _release_held() -> None:
    """Unblock the held signals: one the server re-raised meanwhile is delivered now."""
    if not _HELD or threading.current_thread() is not threading.main_thread():
        return
    held = set(_HELD)
    _HELD.clear()
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    except (AttributeError, OSError, ValueError):
        pass


def _install_signal_handlers(handle: TracingHandle) -> None:
    global _FLUSHER, _FLUSH_DEADLINE
    if threading.current_thread() is not threading.main_thread():
        _logger.info("not on the main thread: SIGTERM/SIGINT handlers not installed")
        return
    if _FLUSHER is None:
        _FLUSHER = _SignalFlusher()
    _FLUSH_DEADLINE = None
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if getattr(previous, "_llmops_handler", False):  # ours, from an earlier set-up
            previous = _PREVIOUS.get(sig, signal.SIG_DFL)

        def handler(signum: int, frame: Any, _prev: Any = previous) -> None:
            _on_signal(signum, frame, _prev)

        handler._llmops_handler = True  # type: ignore[attr-defined]
        _PREVIOUS[sig] = previous
        _INSTALLED[sig] = handler
        signal.signal(sig, handler)


def _chain(signum: int, frame: Any, previous: Any) -> None:
    """Hand the signal to whatever handled it before us, or to the default action."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _uninstall_signal_handlers(handle: TracingHandle) -> None:
    """Restore the previous handlers where ours is still installed (a server may have
    put back its own meanwhile; only possible on the main thread)."""
    global _FLUSHER
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_PREVIOUS.items()):
        try:
            if signal.getsignal(sig) is _INSTALLED.get(sig):
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, TypeError):
            pass
        _PREVIOUS.pop(sig, None)
        _INSTALLED.pop(sig, None)
    if _FLUSHER is not None:
        _FLUSHER.stop()
        _FLUSHER = None


def _atexit() -> None:
    """The process really ends: every request the server answered has ended its trace."""
    active = _ACTIVE
    try:
        if active is not None:
            active.shutdown()
    finally:
        _release_held()


atexit.register(_atexit)


def _resolve_at_startup(
    uri: str, name: str, timeout_s: float
) -> tuple[str | None, Exception | None]:
    """One attempt, in a helper thread joined with ``timeout_s``: a store that refuses
    connections fails fast and set-up goes on; one that hangs (MLflow retries a database
    connection for minutes) is not waited for beyond the timeout."""
    result: dict[str, Any] = {}

    def attempt() -> None:
        try:
            result["id"] = _get_or_create_experiment(uri, name)
        except Exception as e:  # noqa: BLE001 - any store failure means "not now"
            result["error"] = e

    t = threading.Thread(target=attempt, name="llmops-resolve-experiment", daemon=True)
    t.start()
    t.join(timeout_s)
    if "id" in result:
        return result["id"], None
    error = result.get("error") or TimeoutError(f"no answer within {timeout_s}s")
    return None, error


def _file_pricing(config_file: str | os.PathLike[str] | None) -> PricingConfig | None:
    """The file's ``pricing:`` section when it sets one (else None: MLflow's catalog)."""
    from mlflow_llmops.core.configfile import load_section_model

    cfg = load_section_model("pricing", PricingConfig, config_file)
    return None if cfg == PricingConfig() else cfg


def _activate_experiment(experiment_id: str, *, only_if_unresolved: bool = False) -> None:
    """Make ``experiment_id`` MLflow's active experiment, so traces are created in it.

    While the store is unreachable this is the ``UNRESOLVED_EXPERIMENT`` placeholder:
    ``mlflow.set_experiment`` needs the store, and without an active experiment MLflow
    files traces under the default one. Once tracing is installed the id is set
    directly, as ``set_experiment`` does: that function also resets MLflow's tracer
    provider, which would drop ours.
    """
    import mlflow
    import mlflow.tracking.fluent as fluent

    if only_if_unresolved:
        if fluent._active_experiment_id == UNRESOLVED_EXPERIMENT:
            fluent._active_experiment_id = experiment_id
        return  # else the application chose another experiment meanwhile
    if experiment_id != UNRESOLVED_EXPERIMENT:
        try:
            mlflow.set_experiment(experiment_id=experiment_id)
            return
        except Exception:  # noqa: BLE001 - the store failed again between two calls
            _logger.debug("set_experiment failed; setting the id directly", exc_info=True)
    fluent._active_experiment_id = experiment_id


def _experiment_client(tracking_uri: str) -> Any:
    """``MlflowClient`` with full MLflow; with only ``mlflow-tracing``, the tracking
    service client that its ``mlflow.set_experiment`` uses (same two methods)."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        from mlflow.tracking._tracking_service.client import TrackingServiceClient

        return TrackingServiceClient(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _get_or_create_experiment(tracking_uri: str, name: str) -> str:
    client = _experiment_client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        exp = client.get_experiment_by_name(name)  # created concurrently
        if exp is None:
            raise
        return exp.experiment_id


def setup_production_tracing(
    experiment_name: str,
    service_name: str | None = None,
    *,
    tracking_uri: str | None = None,
    config: TracingConfig | Mapping[str, Any] | None = None,
    metric_readers: list[Any] | None = None,
    pricing: PricingConfig | Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> TracingHandle:
    """Turn on production tracing for this process and return its handle.

    The ``tracing:`` and ``pricing:`` sections of the configuration file are read first
    (``config_file``, else ``$MLFLOW_LLMOPS_CONFIG``, else ``mlflow-llmops.yaml`` in the
    working directory; ``MLFLOW_LLMOPS__TRACING__...`` variables too). ``config`` (a dict:
    keys of the ``tracing:`` section, merged over the file; a ``TracingConfig``: used as
    it is) and keyword ``overrides`` (e.g. ``queue_capacity=50_000``,
    ``shutdown_timeout="30s"``, ``sampling={"ratio": 0.1}``) win over the file. The old
    ``*_s`` keys (``shutdown_timeout_s=30``) still work, with a DeprecationWarning.
    ``metric_readers`` adds OpenTelemetry metric readers
    (e.g. a Prometheus reader) beside the OTLP one. ``pricing`` (the ``pricing:``
    section) prices traces for the tail rule ``sampling.tail.cost_above_usd``; default:
    MLflow's bundled catalog. Calling it again replaces the previous set-up (the old one
    is flushed first).

    A tracking store that is down at start-up does not fail or block set-up: after
    at most ``startup_timeout`` it logs a warning and continues; traces queue and
    are written once the store answers.

    Sets ``MLFLOW_MODEL_CATALOG_URI=""`` unless already set: otherwise MLflow fetches a
    remote price catalog for the first LLM span of each provider (a 6.6 s stall
    without network); prices then come from the catalog bundled with MLflow.
    """
    if not experiment_name or not str(experiment_name).strip():
        raise ConfigError("setup_production_tracing: experiment_name must be a non-empty string")
    cfg = _resolve_config(config, config_file, overrides)
    price_cfg = _resolve_pricing(pricing, config_file)
    service_name = service_name or cfg.service_name
    if not service_name or not str(service_name).strip():
        raise ConfigError(
            "setup_production_tracing: service_name must be a non-empty string "
            "(argument, or tracing.service_name in the config)"
        )
    with _ACTIVE_LOCK:
        previous = _ACTIVE
    if previous is not None:
        previous.shutdown()
    uri, app_span_processors = _point_mlflow_at(tracking_uri, cfg)
    target = TracingTarget(
        tracking_uri=uri,
        experiment_name=experiment_name,
        service_name=service_name,
        experiment_id=_connect_store(uri, experiment_name, cfg),
    )
    handle = TracingHandle(
        cfg,
        target,
        metric_readers=metric_readers,
        app_span_processors=app_span_processors,
        pricing=price_cfg,
    )
    _activate(handle)
    return handle


def _resolve_config(
    config: TracingConfig | Mapping[str, Any] | None,
    config_file: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
) -> TracingConfig:
    """The ``tracing:`` section: a ``TracingConfig`` as given (the keyword overrides
    replacing its top-level keys), else the file and environment under ``config`` and the
    overrides. Deprecated ``*_s`` keys are renamed in each source before they merge."""
    from pydantic import ValidationError

    from mlflow_llmops.core.configfile import (
        format_validation_error,
        load_section_model,
        renamed,
    )

    try:
        if isinstance(config, TracingConfig):
            if not overrides:
                return config
            update = renamed(TracingConfig, overrides, "arguments", "tracing.")
            return TracingConfig.model_validate({**config.model_dump(), **update})
        from_args = renamed(TracingConfig, dict(config or {}), "config", "tracing.")
        from_args.update(renamed(TracingConfig, overrides, "arguments", "tracing."))
        return load_section_model("tracing", TracingConfig, config_file, overrides=from_args)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "tracing config", prefix="tracing.")) from None


def _resolve_pricing(
    pricing: PricingConfig | Mapping[str, Any] | None,
    config_file: str | os.PathLike[str] | None,
) -> PricingConfig | None:
    """The ``pricing:`` section for the cost tail rule (None: MLflow's bundled catalog)."""
    from mlflow_llmops.core.configfile import load_section_model

    if isinstance(pricing, PricingConfig):
        return pricing
    if pricing is None:
        return _file_pricing(config_file)
    return load_section_model("pricing", PricingConfig, config_file, overrides=dict(pricing))


def _point_mlflow_at(tracking_uri: str | None, cfg: TracingConfig) -> tuple[str, list[Any]]:
    """Set MLflow's tracking URI and the environment defaults our export relies on;
    returns the URI and the application's span processors, read before
    ``set_tracking_uri`` / ``set_experiment`` reset MLflow's tracing config."""
    import mlflow
    from mlflow.tracing.config import get_config

    app_span_processors = [
        p for p in get_config().span_processors if not isinstance(p, SpanEndProcessor)
    ]
    uri = tracking_uri or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ASYNC_TRACE_LOGGING_RETRY_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    if cfg.http_max_retries is not None and uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.http_max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    return uri, app_span_processors


def _connect_store(uri: str, experiment_name: str, cfg: TracingConfig) -> str | None:
    """Resolve and activate the experiment within ``startup_timeout``; a store that does
    not answer only gets a warning (None: the export worker resolves it later)."""
    timeout = cfg.startup_timeout.total_seconds()
    experiment_id, error = _resolve_at_startup(uri, experiment_name, timeout)
    if experiment_id is not None:
        _activate_experiment(experiment_id)
        return experiment_id
    _activate_experiment(UNRESOLVED_EXPERIMENT)
    _logger.warning(
        "mlflow-llmops tracing: tracking store %s unreachable at start-up (%s); continuing "
        "without it: traces queue (up to %d) and are written once experiment %r resolves",
        _redact_url(uri),
        str(error)[:300],
        cfg.queue_capacity,
        experiment_name,
    )
    return None


def _activate(handle: TracingHandle) -> None:
    """Make ``handle`` the process's active set-up: the one flushed at exit and on
    SIGTERM/SIGINT (handlers installed unless the config says not to)."""
    global _ACTIVE
    with _ACTIVE_LOCK:
        _ACTIVE = handle
    if handle.config.install_signal_handlers:
        _install_signal_handlers(handle)
    _logger.info(handle.describe())
