"""Scoring test helpers: a real SQLite MLflow store per test (copied from a session template),
traces bulk-loaded in MLflow's own format, a state store, and the config tying them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from mlflow_llmops.config import LlmopsConfig, load_config
from mlflow_llmops.testing.seed import SeedSpan, SeedTrace, bulk_load

EPOCH = datetime(2026, 3, 1, tzinfo=UTC)
EPOCH_MS = int(EPOCH.timestamp() * 1000)

ANSWERS = [
    "Paris is the capital of France.",
    "",  # empty answer
    "Write to alice@example.com for a refund.",  # PII
    "I'm sorry, but I can't help with that.",  # refusal
    '{"status": "ok", "items": [1, 2]}',
]


@dataclass
class MlflowDb:
    uri: str
    experiment_id: str
    path: Path
    seed: int | None = None  # trace ids of a load; None: the number of traces

    def load(self, traces: Sequence[SeedTrace]) -> None:
        engine = sa.create_engine(self.uri)
        try:
            seed = len(traces) if self.seed is None else self.seed
            bulk_load(engine, self.experiment_id, traces, seed=seed)
        finally:
            engine.dispose()

    def assessments(self) -> list[tuple[str, str, str | None]]:
        """(trace_id, name, source_id) of every assessment, straight from MLflow's table."""
        engine = sa.create_engine(self.uri)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(
                    "SELECT trace_id, name, source_id FROM assessments"))]  # fmt: skip
        finally:
            engine.dispose()


def make_traces(n: int, *, start_ms: int = EPOCH_MS, step_ms: int = 1000) -> list[SeedTrace]:
    return [
        SeedTrace(
            timestamp_ms=start_ms + i * step_ms,
            latency_ms=200 + (i % 4) * 400,  # 200, 600, 1000, 1400
            request=f"question {i}",
            response=ANSWERS[i % len(ANSWERS)],
            spans=(
                SeedSpan(model="gpt-4o-mini", input_tokens=100 + 50 * (i % 3), output_tokens=20),
            ),  # fmt: skip
        )
        for i in range(n)
    ]


def config_for(
    tracking_uri: str, state_url: str, *, pricing: dict | None = None, **scoring
) -> LlmopsConfig:
    overrides = {
        "tracking": {"uri": tracking_uri, "experiment_name": "exp"},
        "state_store": {"url": state_url},
        "scoring": {"completion_buffer": 0, "initial_lookback": 86400 * 3650, **scoring},
    }
    if pricing is not None:
        overrides["pricing"] = pricing
    return load_config(None, env={}, overrides=overrides)


# -- scorers referenced as module:function by the tests -----------------------
from mlflow.genai.scorers import scorer  # noqa: E402


@scorer
def mentions_paris(outputs) -> bool:  # noqa: ANN001
    return "paris" in str(outputs).lower()


def exploding(outputs) -> bool:  # noqa: ANN001
    raise ValueError(f"boom on {str(outputs)[:20]}")


def min_length(n: int):  # noqa: ANN201 - a factory taking params
    @scorer(name="min_length")
    def _f(outputs) -> bool:  # noqa: ANN001
        return len(str(outputs.get("response", ""))) >= n

    return _f


FLAKY = {"fail": True}


def flaky(outputs) -> bool:  # noqa: ANN001
    if FLAKY["fail"]:
        raise ConnectionError("upstream unavailable")
    return True
