"""Production tracing: ``setup_production_tracing``, ``request_context``, ``llm_call``."""

from mlflow_llmops.tracing.config import TracingConfig
from mlflow_llmops.tracing.context import request_context
from mlflow_llmops.tracing.export import TracingStats
from mlflow_llmops.tracing.manual import LlmCall, llm_call
from mlflow_llmops.tracing.setup import TracingHandle, setup_production_tracing

__all__ = [
    "LlmCall",
    "TracingConfig",
    "TracingHandle",
    "TracingStats",
    "llm_call",
    "request_context",
    "setup_production_tracing",
]
