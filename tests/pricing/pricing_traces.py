"""Test helper: log real MLflow traces with LLM span attributes at explicit times."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import SpanType
from mlflow_state import use_tracking_uri


@dataclass
class LlmCall:
    """One LLM span to log: model, provider, MLflow token usage, optional extra attributes."""

    model: str | None
    provider: str | None
    usage: dict[str, int] | None
    extra: dict[str, Any] = field(default_factory=dict)
    span_type: str = SpanType.CHAT_MODEL


def log_traces(
    tracking_uri: str,
    experiment_name: str,
    traces: Iterable[tuple[datetime, list[LlmCall]]],
) -> str:
    """Log real traces (root span + LLM child spans) at explicit times; returns the experiment id.

    Restores MLflow's global tracking URI (and its environment variable) afterwards.
    """
    with use_tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name)
        for when, calls in traces:
            t0 = int(when.replace(tzinfo=when.tzinfo or UTC).timestamp() * 1e9)
            root = mlflow.start_span_no_context(
                "request", experiment_id=exp_id, start_time_ns=t0, inputs={"q": "hi"}
            )
            for i, c in enumerate(calls):
                attrs: dict[str, Any] = {}
                if c.model:
                    attrs["mlflow.llm.model"] = c.model
                if c.provider:
                    attrs["mlflow.llm.provider"] = c.provider
                if c.usage is not None:
                    attrs["mlflow.chat.tokenUsage"] = c.usage
                attrs.update(c.extra)
                s = mlflow.start_span_no_context(
                    f"llm-{i}",
                    span_type=c.span_type,
                    parent_span=root,
                    attributes=attrs,
                    start_time_ns=t0 + 1_000_000 * (i + 1),
                )
                s.end(end_time_ns=t0 + 1_000_000 * (i + 2))
            root.end(end_time_ns=t0 + 1_000_000 * (len(calls) + 3))
        mlflow.flush_trace_async_logging()
        return exp_id
