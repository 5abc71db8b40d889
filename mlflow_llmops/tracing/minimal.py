"""Minimal recording of head-dropped traces (``sampling.minimal_when_dropped``).

MLflow's own sampler makes a dropped trace cost almost nothing: its tracer hands out a
non-recording OpenTelemetry span and MLflow wraps it in a ``NoOpSpan``. Tail rules and the
100% GenAI metrics still need every call, so here a trace the head ratio drops at its start
gets a :class:`LightSpan` (non-recording for MLflow, but it keeps name, type, times, status,
events, attributes and references to inputs and outputs), and MLflow's ``NoOpSpan`` is
swapped for :class:`RecordingNoOpSpan`, which forwards to it. At the root's end the tail
rules read the light record; a kept trace is replayed through MLflow's normal span path
(so it is stored complete, redacted and exported as any other trace), a dropped one is
counted. GenAI metrics are recorded from the light record at each LLM span's end.

``mlflow.get_current_active_span()`` and ``mlflow.update_current_trace()`` reach the light
record too. Not recorded: what only MLflow's in-memory trace manager would hold (spans added
through ``MlflowClient``, ``mlflow.get_active_trace_id()``), and spans still open when the
root ends (a live trace waits for them; a light one is decided at the root's end).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mlflow_llmops.core import keys

_logger = logging.getLogger("mlflow_llmops.tracing")
_UNSET: Any = object()
#: set while a kept light trace is replayed through MLflow: full spans, no metrics twice
_replaying = threading.local()


def replaying() -> bool:
    """True on a thread that is replaying a kept light trace through MLflow."""
    return getattr(_replaying, "on", False)


class LightTrace:
    """What the tail rules need of a head-dropped trace, filled while it runs."""

    __slots__ = (
        "trace_id", "spans", "metadata", "tags", "context", "updates", "state", "experiment_id"
    )  # fmt: skip

    def __init__(self, trace_id: int, context: Any) -> None:
        self.trace_id = trace_id
        self.spans: list[LightSpan] = []
        self.context = context  # mlflow.tracing.context() in force at the root's start
        self.metadata: dict[str, str] = dict(context.metadata) if context is not None else {}
        self.tags: dict[str, str] = dict(context.tags) if context is not None else {}
        self.updates: list[dict[str, Any]] = []  # update_current_trace calls, replayed
        self.state: str | None = None
        self.experiment_id: str | None = None  # the root's own destination, if it named one


class LightSpan(NonRecordingSpan):
    """A non-recording OTel span (MLflow takes the ``NoOpSpan`` path) that records."""

    def __init__(self, trace: LightTrace, name: str, parent: LightSpan | None) -> None:
        super().__init__(SpanContext(trace.trace_id, random.getrandbits(64), False, TraceFlags(0)))
        self.trace = trace
        self.name = name
        self.parent = parent
        self.start_ns = time.time_ns()
        self.end_ns: int | None = None
        self.span_type: str | None = None
        self.attrs: dict[str, Any] = {}
        self.inputs: Any = _UNSET
        self.outputs: Any = _UNSET
        self.error: str | None = None  # status description when ERROR
        self.status_error = False
        self.events: list[Any] = []
        self.claimed = False
        trace.spans.append(self)


class _PresetIdGenerator(RandomIdGenerator):
    """Hands the SDK the trace id the head decision was taken on."""

    def __init__(self) -> None:
        self._local = threading.local()

    def preset(self, trace_id: int) -> None:
        self._local.trace_id = trace_id

    def generate_trace_id(self) -> int:
        tid = getattr(self._local, "trace_id", None)
        if tid is not None:
            self._local.trace_id = None
            return int(tid)
        return super().generate_trace_id()


class HeadTracer:
    """Wraps the SDK tracer: a root the head ratio drops becomes a :class:`LightSpan`, its
    descendants too; everything else is the SDK's span."""

    def __init__(self, tracer: Any, ids: _PresetIdGenerator, ratio: Callable[[Any], float]):
        self._tracer = tracer
        self._ids = ids
        self._ratio = ratio

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracer, name)

    def start_span(self, name: str, context: Any = None, *args: Any, **kw: Any) -> Any:
        parent = trace_api.get_current_span(context)
        if type(parent) is LightSpan:
            return LightSpan(parent.trace, name, parent)
        if parent.get_span_context().is_valid or replaying():
            return self._tracer.start_span(name, context, *args, **kw)
        from mlflow.tracing.context import _USER_TRACE_CONTEXT

        from mlflow_llmops.tracing.sampling import Sampler

        tid = random.getrandbits(128) or 1
        ctx = _USER_TRACE_CONTEXT.get()
        if Sampler.head_keeps(tid, self._ratio(ctx)):
            self._ids.preset(tid)
            return self._tracer.start_span(name, context, *args, **kw)
        return LightSpan(LightTrace(tid, ctx), name, None)

    def start_as_current_span(self, *args: Any, **kw: Any) -> Any:
        return self._tracer.start_as_current_span(*args, **kw)


def _code(fn: Any) -> Any:
    return getattr(fn, "__wrapped__", fn).__code__


class Recorder:
    """Installs the MLflow hooks and turns a finished light trace into a decision."""

    def __init__(
        self,
        *,
        sampler: Any,
        exporter: Any,
        metrics_of: Callable[[LightSpan], None],
        cost_of: Callable[[LightTrace], float | None] | None,
        omit_io: bool,
    ) -> None:
        self.sampler = sampler
        self.exporter = exporter
        self.metrics_of = metrics_of
        self.cost_of = cost_of
        self.omit_io = omit_io
        self.ids = _PresetIdGenerator()
        self._saved: list[tuple[Any, str, Any]] = []

    def ratio(self, ctx: Any) -> float:
        meta = ctx.metadata if ctx is not None else {}
        return float(self.sampler.ratio_for(meta.get(keys.ROUTE), meta.get(keys.TENANT)))

    # -- hooks into MLflow -----------------------------------------------------
    def install(self) -> None:
        import mlflow
        import mlflow.tracing.fluent as fluent
        import mlflow.tracing.provider as mlflow_provider
        from mlflow.entities import NoOpSpan

        recorder = self
        start_code = _code(fluent.start_span)
        no_context_code = _code(fluent.start_span_no_context)
        base_noop = fluent.NoOpSpan if not hasattr(fluent.NoOpSpan, "_llmops") else NoOpSpan

        class RecordingNoOpSpan(base_noop):  # type: ignore[misc,valid-type]
            """MLflow's ``NoOpSpan`` that forwards to the :class:`LightSpan` it wraps."""

            _llmops = True

            def __init__(self, otel_span: Any = None) -> None:
                super().__init__(otel_span)
                light = otel_span if type(otel_span) is LightSpan else None
                self._light = light
                self._auto_end = False
                if light is None:
                    return
                f = sys._getframe(1)
                code = f.f_code
                if code is no_context_code:
                    loc = f.f_locals
                    if light.claimed:  # start_span_no_context(parent_span=<no-op span>)
                        light = self._light = LightSpan(light.trace, loc.get("name"), light)
                    start = loc.get("start_time_ns")
                    if start:
                        light.start_ns = start
                    light.span_type = loc.get("span_type")
                    if loc.get("inputs") is not None:
                        light.inputs = loc["inputs"]
                    light.attrs.update(loc.get("attributes") or {})
                    light.trace.tags.update(loc.get("tags") or {})
                    light.trace.metadata.update(loc.get("metadata") or {})
                    if light.parent is None:
                        light.trace.experiment_id = loc.get("experiment_id")
                elif code is start_code:
                    loc = f.f_locals
                    light.span_type = loc.get("span_type")
                    light.attrs.update(loc.get("attributes") or {})
                    self._auto_end = not light.claimed
                    if light.parent is None:
                        dest = loc.get("trace_destination")
                        light.trace.experiment_id = getattr(dest, "experiment_id", None)
                light.claimed = True

            @property
            def inputs(self) -> Any:
                v = self._light.inputs if self._light is not None else _UNSET
                return None if v is _UNSET else v

            @property
            def outputs(self) -> Any:
                v = self._light.outputs if self._light is not None else _UNSET
                return None if v is _UNSET else v

            def set_inputs(self, inputs: Any) -> None:
                if self._light is not None:
                    self._light.inputs = inputs

            def set_outputs(self, outputs: Any) -> None:
                if self._light is not None:
                    self._light.outputs = outputs

            def set_attributes(self, attributes: dict[str, Any]) -> None:
                if self._light is not None and attributes:
                    self._light.attrs.update(attributes)

            def set_attribute(self, key: str, value: Any) -> None:
                if self._light is not None:
                    self._light.attrs[key] = value

            def set_span_type(self, span_type: str) -> None:
                if self._light is not None:
                    self._light.span_type = span_type

            def set_status(self, status: Any) -> None:
                light = self._light
                if light is None:
                    return
                code = getattr(status, "status_code", status)
                light.status_error = getattr(code, "value", code) == "ERROR"
                light.error = getattr(status, "description", None) if light.status_error else None

            def add_event(self, event: Any) -> None:
                if self._light is not None:
                    self._light.events.append(event)

            def record_exception(self, exception: Any) -> None:
                from mlflow.entities import SpanEvent

                light = self._light
                if light is None:
                    return
                if isinstance(exception, str):
                    exception = Exception(exception)
                light.events.append(SpanEvent.from_exception(exception))
                light.status_error = True
                light.error = f"{type(exception).__name__}: {exception}"

            def end(
                self,
                outputs: Any = None,
                attributes: dict[str, Any] | None = None,
                status: Any = None,
                end_time_ns: int | None = None,
            ) -> None:
                light = self._light
                if light is None or light.end_ns is not None:
                    return
                if outputs is not None:
                    light.outputs = outputs
                if attributes:
                    light.attrs.update(attributes)
                if status is not None:
                    self.set_status(status)
                light.end_ns = end_time_ns or time.time_ns()
                recorder.span_ended(light)

        class SafeSet:
            """``safe_set_span_in_context``; also ends the no-op span ``start_span`` yields
            (MLflow never ends a no-op span), recording the exception that left it."""

            __slots__ = ("span", "token")

            def __init__(self, span: Any) -> None:
                self.span = span

            def __enter__(self) -> None:
                self.token = mlflow_provider.set_span_in_context(self.span)

            def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
                mlflow_provider.detach_span_from_context(self.token)
                s = self.span
                if getattr(s, "_auto_end", False):
                    try:
                        if ev is not None and isinstance(ev, Exception):
                            s.record_exception(ev)
                        s.end()
                    except Exception:  # noqa: BLE001 - never break the request
                        _logger.debug("llmops light span end failed", exc_info=True)
                return False

        real_update = fluent.update_current_trace

        def update_current_trace(*args: Any, **kw: Any) -> Any:
            span = fluent.get_current_otel_span()
            if type(span) is not LightSpan:
                return real_update(*args, **kw)
            names = ("tags", "metadata", "client_request_id", "request_preview",
                     "response_preview", "state", "model_id", "session_id", "user")  # fmt: skip
            kw.update(zip(names, args, strict=False))
            t = span.trace
            t.tags.update({k: str(v) for k, v in (kw.get("tags") or {}).items()})
            t.metadata.update({k: str(v) for k, v in (kw.get("metadata") or {}).items()})
            if kw.get("state") is not None:
                t.state = str(getattr(kw["state"], "value", kw["state"]))
            t.updates.append(kw)
            return None

        real_active = mlflow.get_current_active_span

        def get_current_active_span() -> Any:
            span = fluent.get_current_otel_span()
            if type(span) is LightSpan:  # the span the caller's code runs in, recording
                return RecordingNoOpSpan(span)
            return real_active()

        self._save(fluent, "NoOpSpan", RecordingNoOpSpan)
        # the public name only: MLflow's own callers keep seeing None, as under its sampling
        self._save(mlflow, "get_current_active_span", get_current_active_span)
        self._save(fluent, "safe_set_span_in_context", SafeSet)
        self._save(fluent, "update_current_trace", update_current_trace)
        self._save(mlflow, "update_current_trace", update_current_trace)
        self._real_update = real_update

    def _save(self, module: Any, name: str, value: Any) -> None:
        self._saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    def uninstall(self) -> None:
        """Put MLflow's own functions back (shutdown)."""
        for module, name, value in reversed(self._saved):
            setattr(module, name, value)
        self._saved.clear()

    # -- at span end -----------------------------------------------------------
    def span_ended(self, span: LightSpan) -> None:
        try:
            if span.span_type in keys.LLM_SPAN_TYPES:
                self.metrics_of(span)
            if span.parent is None:
                self._root_ended(span.trace, span)
        except Exception:  # noqa: BLE001 - instrumentation must never break the request
            _logger.debug("llmops light span end failed", exc_info=True)

    def _root_ended(self, trace: LightTrace, root: LightSpan) -> None:
        is_error = trace.state == "ERROR" if trace.state else root.status_error
        cost_of = self.cost_of
        decision = self.sampler.decide(
            trace_id_int=trace.trace_id,
            is_error=is_error,
            duration_ms=((root.end_ns or 0) - root.start_ns) / 1e6,
            metadata=trace.metadata,
            tags=trace.tags,
            cost_usd=None if cost_of is None else lambda: cost_of(trace),
        )
        if not decision.keep:
            self.exporter.count_sampled_out(trace.metadata.get(keys.ROUTE))
            return
        try:
            self.replay(trace, decision)
        except Exception:  # noqa: BLE001 - instrumentation must never break the request
            _logger.warning("llmops: could not record a tail-kept trace", exc_info=True)

    def replay(self, trace: LightTrace, decision: Any) -> None:
        """Write the kept trace through MLflow's normal span path, with its recorded times;
        the exporter takes ``decision`` for it (the tail rule that kept it). A replay that
        fails before the exporter has the trace counts it as failed."""
        import mlflow.tracing.fluent as fluent
        from mlflow.tracing.context import _USER_TRACE_CONTEXT

        from mlflow_llmops.tracing.processors import IO_OMITTED

        token = _USER_TRACE_CONTEXT.set(trace.context)
        _replaying.on = True
        root_tid: int | None = None
        try:
            live: dict[int, Any] = {}
            for s in trace.spans:
                root = s.parent is None
                meta = dict(trace.metadata) if root else None
                if meta is not None and self.omit_io:
                    meta[IO_OMITTED] = "head_sampled_out"
                span = fluent.start_span_no_context(
                    s.name,
                    span_type=s.span_type or "UNKNOWN",
                    parent_span=None if root else live[id(s.parent)],
                    inputs=None if self.omit_io or s.inputs is _UNSET else s.inputs,
                    attributes=s.attrs,
                    tags=dict(trace.tags) if root else None,
                    metadata=meta,
                    experiment_id=trace.experiment_id if root else None,
                    start_time_ns=s.start_ns,
                )
                if root:
                    root_tid = span._span.context.trace_id
                    self.exporter.force(root_tid, decision)
                live[id(s)] = span
            with fluent.safe_set_span_in_context(live[id(trace.spans[0])]):
                for kw in trace.updates:
                    self._real_update(**kw)
            # children first, in the order they ended; the root last (the exporter's turn)
            for s in sorted(trace.spans, key=lambda s: (s.parent is None, s.end_ns or 0)):
                self._end(live[id(s)], s)
        except BaseException:
            if root_tid is None or self.exporter.unforce(root_tid):
                self.exporter.count_failed(root_tid)
            raise
        finally:
            _replaying.on = False
            _USER_TRACE_CONTEXT.reset(token)

    def _end(self, span: Any, s: LightSpan) -> None:
        from mlflow.entities import SpanStatus, SpanStatusCode

        for e in s.events:
            span.add_event(e)
        status = (
            SpanStatus(SpanStatusCode.ERROR, s.error or "")
            if s.status_error
            else SpanStatus(SpanStatusCode.OK)
        )
        outputs = None if self.omit_io or s.outputs is _UNSET else s.outputs
        span.end(outputs=outputs, status=status, end_time_ns=s.end_ns or time.time_ns())


def light_cost_attrs(span: LightSpan) -> dict[str, Any]:
    """The span's attributes as MLflow would store them (JSON text), for pricing."""
    out: dict[str, Any] = {}
    for k, v in span.attrs.items():
        try:
            out[k] = json.dumps(v)
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


def light_trace_cost(coster: Any, trace: LightTrace) -> float | None:
    """``TraceCoster.trace_cost_usd`` over a light trace: priced spans summed, a span
    skipped when an ancestor is priced (its cost includes its children's)."""
    costs: dict[int, float] = {}
    for s in trace.spans:
        if keys.LLM_COST in s.attrs or keys.MODEL in s.attrs:
            cost = coster.span_cost_usd(light_cost_attrs(s))
            if cost is not None:
                costs[id(s)] = cost
    if not costs:
        return None
    total = 0.0
    for s in trace.spans:
        if id(s) not in costs:
            continue
        p = s.parent
        while p is not None and id(p) not in costs:
            p = p.parent
        if p is None:
            total += costs[id(s)]
    return total
