"""Metadata and attribute keys shared with pricing, SQL and alerting (docs/contracts.md)."""

from __future__ import annotations

import time

USER = "mlflow.trace.user"
SESSION = "mlflow.trace.session"
ENVIRONMENT = "llmops.environment"
SERVICE = "llmops.service"
SERVICE_VERSION = "llmops.service_version"
GIT_COMMIT = "llmops.git_commit"
HOST = "llmops.host"
DEPLOYMENT = "llmops.deployment"
TASK_TYPE = "llmops.task_type"
ROUTE = "llmops.route"
TENANT = "llmops.tenant"
SAMPLE_WEIGHT = "llmops.sample_weight"
SAMPLING = "llmops.sampling"
#: The UTC minute the exporter wrote the trace to the store (``2026-12-04T19:05Z``): a trace
#: that arrives late (spooled through an outage) is found by when it arrived, not by when
#: it started. Search filters compare metadata for equality only, hence minutes as text.
INGESTED_MINUTE = "llmops.ingested_minute"


def ingested_minute(epoch_ms: int) -> str:
    """The ``INGESTED_MINUTE`` value of a moment."""
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(epoch_ms // 60_000 * 60))


MODEL = "mlflow.llm.model"
PROVIDER = "mlflow.llm.provider"
TOKEN_USAGE = "mlflow.chat.tokenUsage"
LLM_COST = "mlflow.llm.cost"  # explicit cost of a span; MLflow keeps it as is
SPAN_TYPE = "mlflow.spanType"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
TTFT_MS = "llmops.ttft_ms"
SERVICE_TIER = "llmops.service_tier"
LLM_SPAN_TYPES = frozenset({"LLM", "CHAT_MODEL"})
