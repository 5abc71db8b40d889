"""Optional OTLP trace export beside MLflow (dual export), honouring our sampling.

Spans are held per trace until the root span ends; the MLflow-side exporter has
decided by then (it runs first), and only kept traces go to the OTLP batch
exporter. Held spans are bounded; overflow, batch-queue losses and failed exports
are counted (the OpenTelemetry batch processor only logs them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class CountingSpanExporter(SpanExporter):
    """Counts what the wrapped exporter sent and what it could not send (after its own
    retries): with a collector down or refusing, spans are otherwise lost silently."""

    def __init__(self, delegate: SpanExporter) -> None:
        self.delegate = delegate
        self.exported_spans = 0
        self.failed_spans = 0
        self.export_errors = 0  # failed export calls
        self.last_error: str | None = None
        self.idle = threading.Event()  # no export call under way
        self.idle.set()
        self.frozen = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.idle.clear()
        try:
            result = self.delegate.export(spans)
        except Exception as e:  # noqa: BLE001 - counted, as the batch processor would only log
            result = SpanExportResult.FAILURE
            self.last_error = f"{type(e).__name__}: {e}"[:300]
        finally:
            self.idle.set()
        if self.frozen:  # abandoned at the shutdown deadline: already counted as dropped
            return result
        if result is SpanExportResult.SUCCESS:
            self.exported_spans += len(spans)
        else:
            self.export_errors += 1
            self.failed_spans += len(spans)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.delegate.shutdown()


class SampledOtlpProcessor(SpanProcessor):
    """Forwards the spans of kept traces to an OTLP ``BatchSpanProcessor``."""

    def __init__(
        self,
        exporter: Any,
        *,
        max_queue_size: int = 20_000,
        max_open_traces: int = 10_000,
        schedule_delay_millis: int = 1000,
    ) -> None:
        self.exporter = CountingSpanExporter(exporter)
        self.delegate = BatchSpanProcessor(
            self.exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=min(512, max_queue_size),
        )
        self._held: dict[int, list[ReadableSpan]] = {}
        self._decisions: dict[int, bool] = {}
        self._lock = threading.Lock()
        self.max_open_traces = max_open_traces
        self.dropped_spans = 0
        self.exported_traces = 0
        self._handed_spans = 0  # given to the batch processor

    def decide(self, otel_trace_id: int, keep: bool) -> None:
        """Called by the MLflow-side exporter when the root span ends."""
        with self._lock:
            self._decisions[otel_trace_id] = keep

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        tid = span.context.trace_id
        if span.parent is not None:
            with self._lock:
                held = self._held.get(tid)
                if held is None:
                    if len(self._held) >= self.max_open_traces:
                        self.dropped_spans += 1
                        return
                    held = self._held[tid] = []
                held.append(span)
            return
        with self._lock:
            spans = self._held.pop(tid, [])
            keep = self._decisions.pop(tid, False)
        if not keep:
            return
        spans.append(span)
        self.exported_traces += 1
        self._handed_spans += len(spans)
        for s in spans:
            self.delegate.on_end(s)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """After this, spans handed over but neither sent nor failed were dropped by the
        batch queue (full) or left in it at the deadline: counted as dropped."""
        self.delegate.shutdown()
        self._count_unconfirmed()

    def abandon(self) -> None:
        """The shutdown deadline passed with the collector still refusing or hanging: stop
        the exporter's retry backoff and count what it has not confirmed as dropped."""
        try:
            self.exporter.delegate.shutdown()  # sets the event its retry loop waits on
        except Exception:  # noqa: BLE001 - already shut down, or a broken exporter
            pass
        self.exporter.idle.wait(0.5)  # the aborted call records its failure
        self.exporter.frozen = True
        self._count_unconfirmed()

    def _count_unconfirmed(self) -> None:
        with self._lock:
            e = self.exporter
            self.dropped_spans += max(0, self._handed_spans - e.exported_spans - e.failed_spans)
            self._handed_spans = e.exported_spans + e.failed_spans

    def counters(self) -> dict[str, Any]:
        e = self.exporter
        return {
            "otlp_traces_sent": self.exported_traces,
            "otlp_spans_exported": e.exported_spans,
            "otlp_spans_failed": e.failed_spans,
            "otlp_spans_dropped": self.dropped_spans,
            "otlp_export_errors": e.export_errors,
            "otlp_last_error": e.last_error,
        }


def make_span_exporter(endpoint: str, headers: dict[str, str], timeout_s: float) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers), timeout=timeout_s)


def make_metric_reader(
    endpoint: str, headers: dict[str, str], timeout_s: float, interval_s: float
) -> Any:
    """A periodic OTLP reader; its exporter is kept as ``reader.llmops_exporter`` so that a
    shutdown past its deadline can stop the exporter's retries (see ``abandon_exporter``)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter = OTLPMetricExporter(endpoint=endpoint, headers=dict(headers), timeout=timeout_s)
    reader = PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=int(interval_s * 1000),
        export_timeout_millis=int(timeout_s * 1000),
    )
    reader.llmops_exporter = exporter  # type: ignore[attr-defined]
    return reader


def abandon_exporter(reader: Any) -> None:
    """Stop the retry backoff of an OTLP metric reader made by ``make_metric_reader``: a
    refused collector otherwise holds the metrics shutdown, and the exit of the process
    (OpenTelemetry's own atexit joins the reader's thread), for the exporter's timeout."""
    exporter = getattr(reader, "llmops_exporter", None)
    if exporter is not None:
        try:
            exporter.shutdown(timeout_millis=0)
        except Exception:  # noqa: BLE001 - already shut down
            pass
