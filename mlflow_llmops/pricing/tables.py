"""Tables we create inside the analytics database (the MLflow tracking database
when it is SQL, else the state store), so SQL analyses join them with traces
in one query. Names start with ``llmops_`` and never collide with MLflow's.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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

#: One row per trace with a row in ``llmops_span_costs``: its cost and span counts, so an
#: analysis of traces reads one narrow row per trace (a primary-key probe, or one pass of
#: a hash join) instead of grouping the span costs. Kept by :func:`refresh_trace_costs`
#: in the transaction that writes the span costs.
trace_costs = sa.Table(
    "llmops_trace_costs",
    analytics_metadata,
    sa.Column("trace_id", sa.String(50), primary_key=True),
    sa.Column("cost_usd", COST, nullable=True),  # NULL when no span of it has a price
    sa.Column("spans", sa.Integer, nullable=False),
    sa.Column("unpriced_spans", sa.Integer, nullable=False),
)

_ROLLUP_SELECT = (
    f"SELECT trace_id, SUM(total_cost_usd), COUNT(*), "
    f"SUM(CASE WHEN status = 'unpriced' THEN 1 ELSE 0 END) FROM {span_costs.name}"
)
_ROLLUP_INSERT = f"INSERT INTO {trace_costs.name} (trace_id, cost_usd, spans, unpriced_spans) "


def refresh_trace_costs(conn: Connection, trace_ids: Iterable[str] | None = None) -> None:
    """Recompute the ``llmops_trace_costs`` rows of ``trace_ids`` (None: of every trace)
    from ``llmops_span_costs``; call it in the transaction that wrote their span costs."""
    if trace_ids is None:
        conn.exec_driver_sql(f"DELETE FROM {trace_costs.name}")
        conn.exec_driver_sql(f"{_ROLLUP_INSERT}{_ROLLUP_SELECT} GROUP BY trace_id")
        return
    ids = sorted(set(trace_ids))
    if not ids:
        return
    if conn.dialect.name == "postgresql":  # one array parameter, any batch size
        chunks, where = [ids], "trace_id = ANY(:ids)"
    else:
        chunks = [ids[i : i + 500] for i in range(0, len(ids), 500)]
        where = "trace_id IN :ids"
    delete = sa.text(f"DELETE FROM {trace_costs.name} WHERE {where}")
    insert = sa.text(f"{_ROLLUP_INSERT}{_ROLLUP_SELECT} WHERE {where} GROUP BY trace_id")
    if conn.dialect.name != "postgresql":
        delete = delete.bindparams(sa.bindparam("ids", expanding=True))
        insert = insert.bindparams(sa.bindparam("ids", expanding=True))
    for chunk in chunks:
        conn.execute(delete, {"ids": chunk})
        conn.execute(insert, {"ids": chunk})


def _add_trace_costs(conn: Connection) -> None:
    trace_costs.create(conn, checkfirst=True)
    refresh_trace_costs(conn)  # the costs priced before this table existed


ANALYTICS_MIGRATIONS: tuple[Migration, ...] = (
    Migration("analytics", 1, "llmops_span_costs", create_tables(span_costs)),
    Migration("analytics", 2, "llmops_trace_costs, filled from the span costs", _add_trace_costs),
)
