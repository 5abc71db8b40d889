"""mlflow-llmops: production monitoring for LLM applications on MLflow traces.

Public API (imported lazily so ``import mlflow_llmops`` stays cheap).
"""

from __future__ import annotations

from mlflow_llmops.extras import install_guard
from mlflow_llmops.lazy import lazy_exports

install_guard()

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_config": "mlflow_llmops.config",
    "LlmopsConfig": "mlflow_llmops.config",
    "StateStore": "mlflow_llmops.statestore.state",
    "setup_production_tracing": "mlflow_llmops.tracing",
    "request_context": "mlflow_llmops.tracing",
    "llm_call": "mlflow_llmops.tracing",
    "CostCalculator": "mlflow_llmops.pricing.calculator",
    "ScorerRegistry": "mlflow_llmops.scoring.registry",
    "ScorerSpec": "mlflow_llmops.scoring.registry",
    "run_due_scorers": "mlflow_llmops.scoring.runner",
    "backfill_scorer": "mlflow_llmops.scoring.backfill_job",
    "BackfillParams": "mlflow_llmops.scoring.backfill_job",
    "quality_aggregates": "mlflow_llmops.scoring.aggregates",
    "record_user_feedback": "mlflow_llmops.scoring.feedback",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["__version__", *_EXPORTS]
