"""Tables we create inside the analytics database (the MLflow tracking database
when it is SQL, else the state store), so SQL analyses join them with traces
in one query. Names start with ``llmops_`` and never collide with MLflow's.
"""

from __future__ import annotations

import sqlalchemy as sa

from mlflow_llmops.statestore.state import Migration, create_tables

analytics_metadata = sa.MetaData()

COST = sa.Numeric(24, 12)

#: One row per priced LLM span: the latest pricing by our CostCalculator.
span_costs = sa.Table(
    "llmops_span_costs",
    analytics_metadata,
    sa.Column("trace_id", sa.String(50), primary_key=True),
    sa.Column("span_id", sa.String(50), primary_key=True),
    sa.Column("experiment_id", sa.String(32), nullable=False),
    sa.Column("trace_timestamp_ms", sa.BigInteger, nullable=False),
    sa.Column("model", sa.String(250), nullable=True),
    sa.Column("provider", sa.String(100), nullable=True),
    sa.Column("matched_entry", sa.String(300), nullable=True),
    sa.Column("service_tier", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # priced | unpriced | partial
    sa.Column("currency", sa.String(3), nullable=False, default="USD"),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, default=0),  # uncached input
    sa.Column("cache_read_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("cache_write_5m_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("cache_write_1h_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, default=0),  # incl. reasoning
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("input_cost_usd", COST, nullable=True),
    sa.Column("cache_read_cost_usd", COST, nullable=True),
    sa.Column("cache_write_cost_usd", COST, nullable=True),
    sa.Column("output_cost_usd", COST, nullable=True),
    sa.Column("other_cost_usd", COST, nullable=True),
    sa.Column("total_cost_usd", COST, nullable=True),  # NULL when unpriced, never 0
    sa.Column("catalog_version", sa.String(64), nullable=False),
    sa.Column("priced_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_llmops_span_costs_ts", "trace_timestamp_ms"),
    sa.Index("ix_llmops_span_costs_model", "model"),
)

ANALYTICS_MIGRATIONS: tuple[Migration, ...] = (
    Migration("analytics", 1, "llmops_span_costs", create_tables(span_costs)),
)
