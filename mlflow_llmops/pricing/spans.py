"""The fields of an LLM span that pricing reads, parsed from its attributes.

Shared by the re-pricing job (spans read from the store) and the tracing tail rule (spans
in the process): import-light, so a service with only ``mlflow-tracing`` can use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_llmops.pricing.usage import TokenUsage, UsageError, usage_from_span_attributes


@dataclass(frozen=True)
class LlmSpan:
    """The fields of one LLM span that pricing needs."""

    trace_id: str
    span_id: str
    experiment_id: str
    trace_timestamp_ms: int
    model: str | None
    provider: str | None
    service_tier: str | None
    usage: TokenUsage | None
    usage_error: str | None = None


def decode_attr(v: Any) -> Any:
    """A raw OpenTelemetry attribute as MLflow wrote it (JSON text), decoded."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def span_from_attributes(
    trace_id: str,
    span_id: str,
    experiment_id: str,
    ts_ms: int,
    attrs: Mapping[str, Any],
    *,
    model_col: str | None = None,
    provider_col: str | None = None,
) -> LlmSpan | None:
    """An :class:`LlmSpan` from decoded span attributes, or None when it has no usage."""
    try:
        usage = usage_from_span_attributes(attrs)
        err = None
    except UsageError as e:
        usage, err = None, str(e)
    if usage is None and err is None:
        return None
    model = (
        attrs.get("mlflow.llm.model")
        or model_col
        or attrs.get("gen_ai.response.model")
        or attrs.get("gen_ai.request.model")
    )
    provider = (
        attrs.get("mlflow.llm.provider")
        or provider_col
        or attrs.get("gen_ai.provider.name")
        or attrs.get("gen_ai.system")
    )
    tier = (
        attrs.get("llmops.service_tier")
        or attrs.get("openai.response.service_tier")
        or attrs.get("gen_ai.openai.response.service_tier")
    )
    return LlmSpan(
        trace_id,
        span_id,
        str(experiment_id),
        int(ts_ms),
        str(model) if model else None,
        str(provider) if provider else None,
        str(tier) if tier else None,
        usage,
        err,
    )


#: The span attributes pricing reads (model, provider, tier, usage in every shape).
PRICING_ATTRIBUTES = (
    "mlflow.llm.model",
    "mlflow.llm.provider",
    "mlflow.chat.tokenUsage",
    "llmops.service_tier",
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "gen_ai.response.model",
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
)
