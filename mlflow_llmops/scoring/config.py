"""Configuration section `scoring:` of mlflow-llmops.yaml. Import-light: models only."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from pydantic import Field

from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import Duration, PositiveDuration


class JudgeDefaults(_Section):
    """Where LLM judges send their requests unless a scorer says otherwise."""

    #: Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LiteLLM proxy, Azure...).
    base_url: str | None = None
    #: Name of the environment variable holding the API key (never the key itself).
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    #: Provider name used to price the judge's own calls.
    provider: str = "openai"
    timeout_s: float = Field(default=60.0, gt=0)
    #: Retries for 429 / 5xx / connection errors / malformed answers (Retry-After honoured).
    max_retries: int = Field(default=5, ge=0)


class ScoringConfig(_Section):
    """Settings for scoring; every field has a working default."""

    enabled: bool = True
    #: Experiments to score (names or ids); empty means ``tracking.experiment_name``.
    experiments: list[str] = Field(default_factory=list)
    #: Traces younger than this (or still IN_PROGRESS) wait for the next cycle.
    completion_buffer: Duration = timedelta(minutes=2)
    #: An IN_PROGRESS trace older than this is given up on (it no longer holds the watermark).
    max_in_progress_wait: Duration = timedelta(hours=1)
    #: Each cycle re-reads this far behind the watermark for traces that arrived late
    #: (already scored ones are skipped through the ledger).
    late_arrival: Duration = timedelta(minutes=15)
    #: A new scorer (or a new version) starts scoring this far back in time.
    initial_lookback: Duration = timedelta(hours=1)
    #: Upper bound of traces one scorer handles per cycle (the rest waits for the next).
    max_traces_per_cycle: int = Field(default=5000, ge=1)
    #: Traces scored in parallel (threads) by the runner and by backfills.
    concurrency: int = Field(default=8, ge=1, le=256)
    #: Requests per second to judges, shared by all threads of a process (None: unlimited).
    rate_limit_rps: float | None = Field(default=None, gt=0)
    #: A claimed trace or a leased backfill item is taken over after this long.
    lease_ttl: PositiveDuration = timedelta(minutes=5)
    #: Attempts per trace and scorer version before giving up: a failure (429 storm, timeout)
    #: is tried again on later runs; the last one is logged on the trace as a Feedback error.
    max_attempts: int = Field(default=3, ge=1)
    #: A failed trace is tried again no sooner than this after its previous attempt.
    retry_backoff: Duration = timedelta(minutes=5)
    #: A backfill tries a failed trace again within the same run, after this long (doubling
    #: per attempt), up to ``max_attempts``; then logs the error Feedback.
    backfill_retry_backoff: Duration = timedelta(seconds=2)
    judge: JudgeDefaults = Field(default_factory=JudgeDefaults)

    deprecated_keys: ClassVar[dict[str, str]] = {
        f"{new}_s": new
        for new in (
            "completion_buffer",
            "max_in_progress_wait",
            "late_arrival",
            "initial_lookback",
            "lease_ttl",
            "retry_backoff",
            "backfill_retry_backoff",
        )
    }
