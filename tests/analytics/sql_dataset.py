"""The seeded dataset of the SQL tests, in a module of its own: test files import it by
this name (a `from conftest import` could find another folder's conftest)."""

from __future__ import annotations

from datetime import UTC, datetime

from sql_times import START

from mlflow_llmops.testing.seed import Incident, SeedSpan, SeedTrace, synthetic_traffic

SPIKE = Incident(
    datetime(2026, 3, 10, 11, tzinfo=UTC), datetime(2026, 3, 10, 12, tzinfo=UTC), "traffic", 40
)
EXPERIMENT = "sql-analyses"


def dataset() -> list[SeedTrace]:
    traces = list(
        synthetic_traffic(START, days=9.5, rate_per_min=0.005, seed=11, incidents=[SPIKE])
    )
    # An expensive outlier and a trace with cache writes, at known times.
    big = int(datetime(2026, 3, 9, 15, tzinfo=UTC).timestamp() * 1000)
    traces.append(
        SeedTrace(
            timestamp_ms=big,
            latency_ms=9000,
            user="user-whale",
            session="sess-whale",
            task_type="agent",
            route="/agent",
            name="POST /agent",
            spans=(
                SeedSpan(
                    "gpt-4o", "openai", 90_000, 8_000, cache_read_tokens=30_000, latency_ms=8000
                ),
                SeedSpan(
                    "claude-sonnet-4-20250514",
                    "anthropic",
                    5_000,
                    500,
                    cache_write_tokens=2_000,
                    start_offset_ms=8100,
                    latency_ms=800,
                ),
            ),
        )  # fmt: skip
    )
    return sorted(traces, key=lambda t: t.timestamp_ms)
