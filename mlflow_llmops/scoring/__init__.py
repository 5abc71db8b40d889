"""Scorers: registry, built-in code scorers, an LLM judge, scheduled scoring and backfill.

Names are imported lazily so ``mlflow_llmops.config`` (which imports
``scoring.config``) stays cheap.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ScorerSpec": "mlflow_llmops.scoring.registry",
    "ScorerRegistry": "mlflow_llmops.scoring.registry",
    "ScorerRegistryError": "mlflow_llmops.scoring.registry",
    "SCORING_MIGRATIONS": "mlflow_llmops.scoring.registry",
    "parse_duration": "mlflow_llmops.scoring.registry",
    "BUILTIN_SCORERS": "mlflow_llmops.scoring.builtin",
    "JudgeSpec": "mlflow_llmops.scoring.judge",
    "LlmJudge": "mlflow_llmops.scoring.judge",
    "JudgeError": "mlflow_llmops.scoring.judge",
    "RateLimiter": "mlflow_llmops.scoring.ratelimit",
    "resolve": "mlflow_llmops.scoring.resolver",
    "run_due_scorers": "mlflow_llmops.scoring.runner",
    "ScoringRunReport": "mlflow_llmops.scoring.runner",
    "sampled": "mlflow_llmops.scoring.runner",
    "backfill": "mlflow_llmops.scoring.backfill_job",
    "BackfillParams": "mlflow_llmops.scoring.backfill_job",
    "BackfillReport": "mlflow_llmops.scoring.backfill_job",
    "BackfillError": "mlflow_llmops.scoring.backfill_job",
    "quality_aggregates": "mlflow_llmops.scoring.aggregates",
    "QualityAggregate": "mlflow_llmops.scoring.aggregates",
    "record_user_feedback": "mlflow_llmops.scoring.feedback",
    "FeedbackError": "mlflow_llmops.scoring.feedback",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = list(_EXPORTS)
