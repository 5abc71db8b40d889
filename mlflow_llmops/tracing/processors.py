"""The MLflow span processor (``mlflow.tracing.configure(span_processors=[...])``) that
runs at every span end on the caller's thread: redaction, enrichment of autologged
LLM spans with reasoning tokens, and GenAI metrics for every LLM call.

It runs before the sampling decision, so metrics cover 100% of calls.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from mlflow_llmops.core import keys
from mlflow_llmops.tracing.metrics import GenAiMetrics
from mlflow_llmops.tracing.minimal import HeadTracer, LightSpan, replaying
from mlflow_llmops.tracing.redaction import CHUNK_EVENT_PREFIX, CHUNK_VALUE_KEY, Redactor

_logger = logging.getLogger("mlflow_llmops.tracing")
_LLM_TYPES_JSON = frozenset(f'"{t}"' for t in keys.LLM_SPAN_TYPES)  # as MLflow stores them
_INPUTS = "mlflow.spanInputs"
_OUTPUTS = "mlflow.spanOutputs"
_KNOWN_FORMATS = frozenset({"openai", "anthropic", "gemini", "bedrock", "groq", "mistral"})
_OPERATION_BY_TYPE = {"CHAT_MODEL": "chat", "LLM": "text_completion"}
_SERVICE_TIER = re.compile(r'"service_tier":\s*"([A-Za-z0-9_.-]{1,40})"')


def _decoded(raw: Any) -> Any:
    """A raw (JSON-serialized) MLflow span attribute, decoded as ``LiveSpan.get_attribute``
    decodes it: ``span.get_attribute(k)`` is ``_decoded(attributes.get(k))``. A plain JSON
    string without escapes is unquoted without the JSON parser."""
    if not raw:
        return None
    if type(raw) is str and len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        inner = raw[1:-1]
        # printable: no control character, which the parser would reject
        if '"' not in inner and "\\" not in inner and inner.isprintable():
            return inner
    try:
        return json.loads(raw)
    except Exception:  # noqa: BLE001 - as MLflow: a value set directly is returned as is
        return raw


def _attributes_of(otel: Any) -> Any:
    """The OTel span's attributes, to read: the SDK's own dict when it has one (a look-up
    through the public read-only view costs a new view and two Python calls, and a
    missing key an exception), else that public view."""
    d = getattr(getattr(otel, "_attributes", None), "_dict", None)
    return d if type(d) is dict else getattr(otel, "attributes", None)


def _usage_dict(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            value = json.loads(raw)
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}
    return {}


def _reasoning_from_outputs(outputs: Any) -> int | None:
    """``usage.completion_tokens_details.reasoning_tokens`` of an OpenAI response."""
    usage = None
    if isinstance(outputs, dict):
        usage = outputs.get("usage")
    elif outputs is not None:
        usage = getattr(outputs, "usage", None)
    if usage is None:
        return None
    details = (
        usage.get("completion_tokens_details")
        if isinstance(usage, dict)
        else getattr(usage, "completion_tokens_details", None)
    )
    if details is None:
        details = (
            usage.get("output_tokens_details")
            if isinstance(usage, dict)
            else getattr(usage, "output_tokens_details", None)
        )
    if details is None:
        return None
    value = (
        details.get("reasoning_tokens")
        if isinstance(details, dict)
        else getattr(details, "reasoning_tokens", None)
    )
    return int(value) if isinstance(value, int | float) else None


def _requested_model(span: Any, attrs: Any) -> str | None:
    """The model the call asked for (autolog sets ``mlflow.llm.model`` from the response,
    and a failed call has none): the ``model`` attribute or the ``model`` input. From the
    raw attributes, the inputs JSON is parsed only when it names a model."""
    if getattr(span, "_llmops_light", False):  # recorded light: the inputs as given
        model, inputs = _decoded((attrs or {}).get("model")), getattr(span, "_llmops_inputs", None)
    elif attrs is None:
        model, inputs = span.get_attribute("model"), span.inputs
    else:
        model, raw = _decoded(attrs.get("model")), attrs.get(_INPUTS)
        inputs = _decoded(raw) if isinstance(raw, str) and '"model"' in raw else None
    if isinstance(model, str):
        return model
    model = inputs.get("model") if isinstance(inputs, dict) else None
    return model if isinstance(model, str) else None


def _error_type(span: Any) -> str | None:
    code = span.status.status_code
    if getattr(code, "value", str(code)) != "ERROR":
        return None
    for event in reversed(span.events or []):
        if event.name == "exception":
            return str(event.attributes.get("exception.type") or "error")
    return "error"


class SpanEndProcessor:
    """Callable given to ``mlflow.tracing.configure``; never raises into the caller."""

    def __init__(self, redactor: Redactor | None, metrics: GenAiMetrics | None) -> None:
        self.redactor = redactor if redactor is not None and redactor.active else None
        self.metrics = metrics

    def __call__(self, span: Any) -> None:
        try:
            otel = getattr(span, "_span", None)
            attrs = _attributes_of(otel)  # read only; writes go through set_attribute
            raw_type = attrs.get(keys.SPAN_TYPE) if attrs is not None else None
            if raw_type in _LLM_TYPES_JSON or (
                raw_type is None and span.span_type in keys.LLM_SPAN_TYPES
            ):
                self._llm_span(span, attrs)
            r = self.redactor
            if r is not None and attrs is not None:
                # every attribute, event, the status message and the name, before the span
                # is frozen: the MLflow exporter and the OTLP copy both get the redacted span
                r.redact_span(otel, attrs)
                if getattr(otel, "parent", None) is None:
                    self._redact_trace(span)
        except Exception:  # noqa: BLE001 - instrumentation must never break the request
            _logger.debug("llmops span processor failed", exc_info=True)

    @staticmethod
    def _from_stream(span: Any, attrs: Any, get: Any, ttft_ms: Any) -> Any:
        """Time to first chunk and service tier of an autologged call, which MLflow does not
        record: the first chunk event's time (autolog adds one per chunk as it arrives) and
        the ``service_tier`` the provider names in its chunks or its response. Returns the
        time to first chunk (ms) now on the span."""
        otel = getattr(span, "_span", None)
        events = getattr(otel, "_events", None) or ()
        first = next((e for e in events if e.name.startswith(CHUNK_EVENT_PREFIX)), None)
        if ttft_ms is None and first is not None and first.timestamp:
            ttft_ms = round(max(0, first.timestamp - span.start_time_ns) / 1e6, 3)
            span.set_attribute(keys.TTFT_MS, ttft_ms)
        if get(keys.SERVICE_TIER) is None:
            raws: list[Any] = [(attrs or {}).get(_OUTPUTS)]
            if first is not None:  # the tier is in every chunk; the last one is enough
                last = next(e for e in reversed(events) if e.name.startswith(CHUNK_EVENT_PREFIX))
                raws.append((last.attributes or {}).get(CHUNK_VALUE_KEY))
            for raw in raws:
                m = _SERVICE_TIER.search(raw) if isinstance(raw, str) else None
                if m:
                    span.set_attribute(keys.SERVICE_TIER, m.group(1))
                    break
        return ttft_ms

    def _redact_trace(self, span: Any) -> None:
        """At the root span's end: the trace's tags, metadata and previews (MLflow adds its
        previews from the root's already redacted inputs and outputs right after)."""
        from mlflow.tracing.trace_manager import InMemoryTraceManager

        with InMemoryTraceManager.get_instance().get_trace(span.trace_id) as trace:
            if trace is not None:
                self.redactor.redact_trace_info(trace.info)  # type: ignore[union-attr]

    def _llm_span(self, span: Any, attrs: Any = None) -> None:
        get: Any = span.get_attribute if attrs is None else lambda k: _decoded(attrs.get(k))
        provider = get(keys.PROVIDER)
        if provider is None:
            # Autologged spans name their message format (openai, anthropic, ...) but not
            # always the provider; cost and SQL group by provider.
            fmt = get("mlflow.message.format")
            if isinstance(fmt, str) and fmt in _KNOWN_FORMATS:
                provider = fmt
                span.set_attribute(keys.PROVIDER, provider)
        if get(keys.REASONING_TOKENS) is None:
            raw = (attrs if attrs is not None else {}).get(_OUTPUTS)
            if getattr(span, "_llmops_light", False):
                reasoning = _reasoning_from_outputs(getattr(span, "_llmops_outputs", None))
                if reasoning:
                    span.set_attribute(keys.REASONING_TOKENS, reasoning)
            elif not isinstance(raw, str) or "reasoning_tokens" in raw:
                reasoning = _reasoning_from_outputs(span.outputs)
                if reasoning:
                    span.set_attribute(keys.REASONING_TOKENS, reasoning)
        ttft_ms = get(keys.TTFT_MS)
        if ttft_ms is None or get(keys.SERVICE_TIER) is None:
            ttft_ms = self._from_stream(span, attrs, get, ttft_ms)
        if self.metrics is None or replaying():  # a replayed light trace: measured already
            return
        usage = _usage_dict(get(keys.TOKEN_USAGE))
        # autolog sets mlflow.llm.model from the response (a dated snapshot), and a failed
        # call has none: the request model labels every call, the response model beside it
        response_model = get(keys.MODEL)
        self.metrics.record(
            provider=provider,
            model=_requested_model(span, attrs) or response_model,
            response_model=response_model,
            operation=_OPERATION_BY_TYPE.get(
                (span.span_type if attrs is None else get(keys.SPAN_TYPE)) or "", "chat"
            ),
            duration_s=max(0.0, (time.time_ns() - span.start_time_ns) / 1e9),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            ttft_s=float(ttft_ms) / 1000 if ttft_ms is not None else None,
            error_type=_error_type(span),
        )

    def light_metrics(self, span: LightSpan) -> None:
        """GenAI metrics of an LLM call in a head-dropped trace recorded minimally
        (``minimal.py``): the same labels and values as from an MLflow span."""
        m = self.metrics
        if m is None:
            return
        a = span.attrs
        provider = a.get(keys.PROVIDER)
        if provider is None:
            fmt = a.get("mlflow.message.format")
            provider = fmt if isinstance(fmt, str) and fmt in _KNOWN_FORMATS else None
        model = a.get("model")
        if not isinstance(model, str):
            inputs = span.inputs
            model = inputs.get("model") if isinstance(inputs, dict) else None
        response_model = a.get(keys.MODEL)
        usage = _usage_dict(a.get(keys.TOKEN_USAGE))
        ttft_ms = a.get(keys.TTFT_MS)
        if ttft_ms is None:
            first = next((e for e in span.events if e.name.startswith(CHUNK_EVENT_PREFIX)), None)
            if first is not None and first.timestamp:
                ttft_ms = max(0, first.timestamp - span.start_ns) / 1e6
        error_type = None
        if span.status_error:
            error_type = "error"
            for event in reversed(span.events):
                if event.name == "exception":
                    error_type = str(event.attributes.get("exception.type") or "error")
                    break
        m.record(
            provider=provider if isinstance(provider, str) else None,
            model=(model if isinstance(model, str) else None) or response_model,
            response_model=response_model if isinstance(response_model, str) else None,
            operation=_OPERATION_BY_TYPE.get(span.span_type or "", "chat"),
            duration_s=max(0.0, ((span.end_ns or time.time_ns()) - span.start_ns) / 1e9),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            ttft_s=float(ttft_ms) / 1000 if ttft_ms is not None else None,
            error_type=error_type,
        )


#: trace metadata set on a trace recorded light (head-dropped at its start) that a tail rule
#: kept: its spans carry no ``mlflow.spanInputs`` / ``mlflow.spanOutputs``
IO_OMITTED = "llmops.io_omitted"
_LIGHT_SPAN_CLASSES: dict[type, type] = {}


def light_span_class(live_cls: type) -> type:
    """A ``LiveSpan`` subclass whose ``set_inputs`` / ``set_outputs`` keep a reference to the
    value instead of serialising it to JSON (the costliest part of recording a span). Used
    for the spans of a trace the head ratio drops at its start: unless a tail rule keeps the
    trace, nothing reads them; if one does, the trace is stored without them."""
    cls = _LIGHT_SPAN_CLASSES.get(live_cls)
    if cls is None:

        class LightSpan(live_cls):  # type: ignore[misc,valid-type]
            _llmops_light = True

            def set_inputs(self, inputs: Any) -> None:
                self._llmops_inputs = inputs

            def set_outputs(self, outputs: Any) -> None:
                self._llmops_outputs = outputs

        cls = _LIGHT_SPAN_CLASSES[live_cls] = LightSpan
    return cls


def make_mlflow_span_processor(exporter: Any, sampler: Any, light: bool = False) -> Any:
    """MLflow's synchronous span processor, plus (``light``) the head decision taken at
    trace start.

    With ``light`` (``sampling.light_when_dropped``), a trace the head ratio drops (ratio
    from the ``request_context`` route and tenant known when the root span starts) is
    recorded light: same spans, attributes, events, status,
    tags and metadata (all the tail rules and the GenAI metrics read), but span inputs and
    outputs are not serialised. The keep/drop decision itself is still taken at the root
    span's end by the exporter, with the tail rules.
    """
    from mlflow.entities.span import LiveSpan
    from mlflow.tracing.processor.mlflow_v3 import MlflowV3SpanProcessor
    from mlflow.tracing.utils import encode_span_id

    light_cls = light_span_class(LiveSpan)

    class LlmopsMlflowSpanProcessor(MlflowV3SpanProcessor):
        def __init__(self) -> None:
            super().__init__(exporter, export_metrics=False, use_batch_processor=False)
            self.sampler = sampler
            #: OTel trace ids of the open traces recorded light
            self.light: set[int] = set()

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            super().on_start(span, parent_context)
            try:
                s = self.sampler
                if s.always_keeps or not light:
                    return
                tid = span.context.trace_id
                manager = self._trace_manager
                if span.parent is None:
                    mlflow_id = manager.get_mlflow_trace_id_from_otel_id(tid)
                    with manager.get_trace(mlflow_id) as trace:
                        meta = trace.info.trace_metadata if trace is not None else {}
                    ratio = s.ratio_for(meta.get(keys.ROUTE), meta.get(keys.TENANT))
                    if ratio >= 1.0 or s.head_keeps(tid, ratio):
                        return
                    if len(self.light) > 100_000:  # roots that never ended (MLflow's TTL)
                        self.light.clear()
                    self.light.add(tid)
                elif tid not in self.light:
                    return
                else:
                    mlflow_id = manager.get_mlflow_trace_id_from_otel_id(tid)
                live = manager.get_span_from_id(mlflow_id, encode_span_id(span.context.span_id))
                if type(live) is LiveSpan:
                    live.__class__ = light_cls
            except Exception:  # noqa: BLE001 - a failure here only leaves the span full
                _logger.debug("llmops head decision at span start failed", exc_info=True)

        def _update_trace_info(self, trace: Any, root_span: Any) -> None:
            super()._update_trace_info(trace, root_span)
            if root_span.context.trace_id in self.light:
                trace.info.trace_metadata[IO_OMITTED] = "head_sampled_out"

        def on_end(self, span: Any) -> None:
            try:
                super().on_end(span)
            finally:
                if span.parent is None:
                    self.light.discard(span.context.trace_id)

    return LlmopsMlflowSpanProcessor()


def make_tracer_provider(resource: Any, recorder: Any = None) -> Any:
    """An OpenTelemetry SDK ``TracerProvider`` whose ``get_tracer`` answers from a dict.

    MLflow calls ``get_tracer`` for every span; the SDK then builds two scope objects and
    re-installs a warnings filter before finding the tracer it already made for that scope.
    The cache returns that same tracer (so tracer configurators still apply to it).
    With a ``recorder`` (``minimal.Recorder``), the tracer takes the head decision at
    trace start and hands a head-dropped trace light spans."""
    from opentelemetry.sdk.trace import TracerProvider

    class CachedTracerProvider(TracerProvider):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self._llmops_tracers: dict[tuple[str, str | None, str | None], Any] = {}

        def get_tracer(
            self,
            instrumenting_module_name: str,
            instrumenting_library_version: str | None = None,
            schema_url: str | None = None,
            attributes: Any = None,
        ) -> Any:
            if attributes is not None:
                return super().get_tracer(
                    instrumenting_module_name, instrumenting_library_version, schema_url, attributes
                )
            key = (instrumenting_module_name, instrumenting_library_version, schema_url)
            tracer = self._llmops_tracers.get(key)
            if tracer is None:
                tracer = super().get_tracer(*key)
                if recorder is not None:
                    tracer = HeadTracer(tracer, recorder.ids, recorder.ratio)
                self._llmops_tracers[key] = tracer
            return tracer

    if recorder is None:
        return CachedTracerProvider(resource=resource)
    return CachedTracerProvider(resource=resource, id_generator=recorder.ids)
