"""OpenTelemetry GenAI client metrics from 100% of LLM calls, sampled or not.

Instruments and bucket boundaries follow the GenAI semantic conventions. Labels
are bounded: provider, model (capped), operation, error type, token type. Never
prompts, never trace tags (MLflow's own span-duration metric labels every tag).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
OPERATION_DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
TRACES = "llmops.traces"  # counter, label llmops.outcome: created|kept|sampled_out|dropped|exported
MAX_MODELS = 200
OTHER = "_other"


class GenAiMetrics:
    """Owns a private MeterProvider (never the global one) so shutdown is ours to call."""

    def __init__(
        self,
        *,
        service_name: str,
        readers: list[Any],
        stats: Callable[[], Mapping[str, int]] | None = None,
        max_models: int = MAX_MODELS,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource

        views = [
            View(
                instrument_name=OPERATION_DURATION,
                aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
            ),
            View(
                instrument_name=TIME_TO_FIRST_CHUNK,
                aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
            ),
            View(
                instrument_name=TOKEN_USAGE,
                aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
            ),
        ]
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=Resource.create({"service.name": service_name}),
            views=views,
        )
        meter = self.provider.get_meter("mlflow_llmops.tracing")
        self._duration = meter.create_histogram(
            OPERATION_DURATION, unit="s", description="GenAI operation duration."
        )
        self._tokens = meter.create_histogram(
            TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used."
        )
        self._ttfc = meter.create_histogram(
            TIME_TO_FIRST_CHUNK, unit="s", description="Time to receive the first chunk."
        )
        self._max_models = max_models
        self._models: set[str] = set()
        self._lock = threading.Lock()
        if stats is not None:
            from opentelemetry.metrics import Observation

            def observe(_options: Any) -> list[Any]:
                s = stats()
                return [
                    Observation(s[k], {"llmops.outcome": k})
                    for k in ("created", "kept", "sampled_out", "dropped", "exported", "failed")
                ]

            meter.create_observable_counter(
                TRACES, callbacks=[observe], unit="{trace}", description="Traces by outcome."
            )

    def _model(self, model: str | None) -> str:
        if not model:
            return "unknown"
        if model in self._models:
            return model
        with self._lock:
            if len(self._models) < self._max_models:
                self._models.add(model)
                return model
        return OTHER

    def record(
        self,
        *,
        provider: str | None,
        model: str | None,
        operation: str,
        response_model: str | None = None,
        duration_s: float,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        ttft_s: float | None = None,
        error_type: str | None = None,
    ) -> None:
        """One finished LLM call: ``model`` is the requested model (every call, failed ones
        too), ``response_model`` the one the answer named (absent when it failed)."""
        attrs: dict[str, str] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider or "unknown",
            "gen_ai.request.model": self._model(model),
        }
        if response_model:
            attrs["gen_ai.response.model"] = self._model(response_model)
        if error_type:
            attrs["error.type"] = error_type
        self._duration.record(duration_s, attrs)
        if ttft_s is not None:
            self._ttfc.record(ttft_s, attrs)
        if not error_type:
            if input_tokens is not None:
                self._tokens.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
            if output_tokens is not None:
                self._tokens.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})

    def force_flush(self, timeout_s: float) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float) -> None:
        self.provider.shutdown(timeout_millis=max(1, int(timeout_s * 1000)))
