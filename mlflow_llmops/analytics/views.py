"""SQL views over the MLflow tracking database, so analyses never name MLflow's tables.

``create_views(engine)`` creates ``llmops_traces``, ``llmops_spans``,
``llmops_assessments`` and ``llmops_costs`` on the tracking database (SQLite or
PostgreSQL); ``create_views(duckdb_connection, parquet_dir=...)`` creates the same
views over a Parquet export (:mod:`mlflow_llmops.analytics.export`). Columns are listed in
docs/contracts.md; timestamps are epoch milliseconds, costs USD as floats.

``experiment_id`` is MLflow's integer id everywhere (compare it with a number) so the
database can use MLflow's (experiment_id, time) indexes.

Token columns of ``llmops_traces`` and ``llmops_spans`` follow MLflow's convention
(``input_tokens`` includes cached tokens, ``output_tokens`` includes reasoning). The
columns of ``llmops_costs`` are billing buckets of the cost table instead
(``input_tokens`` there is the uncached input).

The views read MLflow's internal tables, whose layout changes between MLflow versions:
they are tested against every supported MLflow release (``TESTED_SCHEMAS``: its tracking
schema's alembic revision -> the release), :func:`check_mlflow_schema` refuses a database
whose revision is not the one the installed MLflow expects, with the command that fixes
it, and :func:`schema_release` names the release a database's schema belongs to.

On PostgreSQL ``create_views`` also adds an index and statistics of ours to MLflow's
``spans`` table (:data:`PG_INDEXES`, :data:`PG_STATISTICS`, :func:`ensure_pg_indexes`): a
time filter on ``llmops_spans.start_ms`` becomes an index range the planner estimates right.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mlflow_llmops.errors import StoreError

_logger = logging.getLogger(__name__)

VIEW_NAMES = ("llmops_traces", "llmops_spans", "llmops_assessments", "llmops_costs")

#: The MLflow releases the views are tested on, by the alembic head revision of their
#: tracking schema (3.18 added no trace, span or assessment columns: same views).
TESTED_SCHEMAS: dict[str, str] = {"dc11669786a5": "3.17.2", "f4a9b2c7d1e6": "3.18.0"}

#: What the views need from MLflow's schema; checked before the views are created.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "trace_info": (
        "request_id",
        "experiment_id",
        "timestamp_ms",
        "execution_time_ms",
        "status",
        "trace_name",
        "session_id",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "total_cost",
    ),
    "trace_request_metadata": ("request_id", "key", "value"),
    "spans": (
        "trace_id",
        "span_id",
        "parent_span_id",
        "experiment_id",
        "name",
        "type",
        "status",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "content",
        "model_name",
        "model_provider",
        "total_cost",
    ),
    "assessments": (
        "assessment_id",
        "trace_id",
        "experiment_id",
        "name",
        "assessment_type",
        "value",
        "aggregate_value",
        "source_type",
        "source_id",
        "created_timestamp",
        "trace_timestamp_ms",
        "rationale",
        "error",
        "valid",
        "assessment_metadata",
    ),
}

#: Output columns of every view, in order (docs/contracts.md).
VIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "llmops_traces": (
        "trace_id",
        "experiment_id",
        "timestamp_ms",
        "status",
        "latency_ms",
        "trace_name",
        "user_id",
        "session_id",
        "task_type",
        "route",
        "tenant",
        "environment",
        "service",
        "service_version",
        "model",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "sample_weight",
        "cost_usd",
        "cost_source",
        "unpriced_spans",
    ),
    "llmops_spans": (
        "trace_id",
        "span_id",
        "parent_span_id",
        "experiment_id",
        "name",
        "span_type",
        "status",
        "start_ms",
        "end_ms",
        "latency_ms",
        "model",
        "provider",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "ttft_ms",
        "cost_usd",
        "cost_source",
        "cost_status",
        "sample_weight",
    ),
    "llmops_assessments": (
        "assessment_id",
        "trace_id",
        "experiment_id",
        "name",
        "assessment_type",
        "value_num",
        "value_json",
        "source_type",
        "source_id",
        "created_ms",
        "trace_timestamp_ms",
        "rationale",
        "error",
        "valid",
        "scorer_version",
    ),
    "llmops_costs": (
        "trace_id",
        "span_id",
        "experiment_id",
        "timestamp_ms",
        "model",
        "provider",
        "status",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "input_cost_usd",
        "cache_read_cost_usd",
        "cache_write_cost_usd",
        "output_cost_usd",
        "total_cost_usd",
        "catalog_version",
        "sample_weight",
    ),
}

#: ``llmops_spans.start_ms``: the expression of the view, of the index and of the statistics
#: below (PostgreSQL matches an indexed expression only when it is written the same way).
START_MS_SQL = "start_time_unix_nano / 1000000"

_META_COLUMNS = {
    "user_id": "mlflow.trace.user",
    "task_type": "llmops.task_type",
    "route": "llmops.route",
    "tenant": "llmops.tenant",
    "environment": "llmops.environment",
    "service": "llmops.service",
    "service_version": "llmops.service_version",
    "sample_weight_raw": "llmops.sample_weight",
}

#: PostgreSQL indexes ``create_views`` adds to MLflow's tables, name -> definition. A
#: narrow index over LLM spans, keyed on ``start_ms``: a time filter on ``llmops_spans``
#: becomes an index range, and a query that needs only these columns (no token counts,
#: which live in the span's JSON) is answered by an index-only scan instead of reading
#: every span's ``content``. The ``llmops_`` prefix keeps it apart from MLflow's own
#: indexes; PostgreSQL drops it by itself if a migration drops a column it uses.
PG_INDEXES: dict[str, str] = {
    "ix_llmops_spans_llm_start": (
        f"ON spans (({START_MS_SQL})) "
        "INCLUDE (start_time_unix_nano, end_time_unix_nano, experiment_id, trace_id, span_id, "
        "status, model_name, model_provider, total_cost) "
        "WHERE type IN ('LLM', 'CHAT_MODEL')"
    ),
    # The traces' sample weights, for the join that weights every span and cost row: an
    # index-only scan of one small entry per trace instead of all of the metadata.
    "ix_llmops_trace_weight": (
        "ON trace_request_metadata (request_id) INCLUDE (value) WHERE key = 'llmops.sample_weight'"
    ),
    # The metadata the trace analyses group by (user, task type, tenant): like the weights,
    # one small entry per trace, read from the index instead of a scan of all metadata.
    **{
        f"ix_llmops_trace_{col}": (
            f"ON trace_request_metadata (request_id) INCLUDE (value) "
            f"WHERE key = '{_META_COLUMNS[col]}'"
        )
        for col in ("user_id", "task_type", "tenant")
    },
    # A trace's first LLM model (llmops_traces.model): the first entry of the trace's
    # range, without reading any span's JSON (MLflow's own cost index skips unpriced spans).
    "ix_llmops_spans_llm_trace": (
        "ON spans (trace_id, start_time_unix_nano, span_id) INCLUDE (model_name) "
        "WHERE type IN ('LLM', 'CHAT_MODEL') AND model_name IS NOT NULL"
    ),
    # A trace's span costs, for refresh_trace_costs: one index-only probe per trace
    # instead of the primary key and every row it points to.
    "ix_llmops_span_costs_trace": "ON llmops_span_costs (trace_id) INCLUDE (total_cost_usd, status)",
}

#: PostgreSQL (14+) statistics on ``start_ms`` and on its UTC day (``start_ms - start_ms %
#: 86400000``, as the queries write it), so the planner knows how many spans a time range
#: selects (it ignores the statistics of partial indexes) and how few days a GROUP BY day
#: makes: it then aggregates in a small hash table instead of sorting every span.
PG_STATISTICS: dict[str, str] = {
    "llmops_spans_start_ms": f"ON (({START_MS_SQL})) FROM spans",
    "llmops_spans_start_day": f"ON (({START_MS_SQL} - ({START_MS_SQL}) % 86400000)) FROM spans",
    # The traces' UTC day (daily_totals): 14 days hash into 14 groups instead of a sort
    # of every trace planned for a million groups.
    "llmops_traces_day": "ON ((timestamp_ms - timestamp_ms % 86400000)) FROM trace_info",
}

#: Advisory lock key: one process at a time builds the indexes.
_PG_INDEX_LOCK = 0x6C6C6D6F7073  # "llmops"


#: A trace's ``llmops.sample_weight`` (1 / P(kept)); 1 where absent (unsampled traffic).
_WEIGHT_SQL = "COALESCE(CAST({m}.value AS DOUBLE PRECISION), 1.0)"


def _weight_join(alias: str, trace_id_sql: str) -> str:
    """The LEFT JOIN that gives ``alias.value``, the trace's ``llmops.sample_weight``: one
    join on the metadata primary key (request_id, key), however often a query reads the
    weight (a scalar subquery would run once per reference and row), and dropped by the
    database when a query does not read ``sample_weight``."""
    return (
        f"LEFT JOIN trace_request_metadata {alias} "
        f"ON {alias}.request_id = {trace_id_sql} AND {alias}.key = 'llmops.sample_weight'"
    )


class _Json:
    """Dialect-specific access to span attributes (JSON strings inside ``content``)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def attr(self, attr: str) -> str:
        """The decoded attribute value as text (attributes are JSON-encoded strings)."""
        if self.dialect == "postgresql":
            # One path extraction: each json operator re-parses its whole input text.
            return f"json_extract_path_text(s.content::json, 'attributes', '{attr}')"
        return f"json_extract(s.content, '$.attributes.\"{attr}\"')"

    def key(self, doc_sql: str, key: str) -> str:
        if self.dialect == "postgresql":
            return f"(({doc_sql})::json ->> '{key}')"
        return f"json_extract({doc_sql}, '$.\"{key}\"')"

    def usage(self, key: str) -> str:
        return f"CAST({self.key(self.attr('mlflow.chat.tokenUsage'), key)} AS BIGINT)"

    def number(self, attr: str) -> str:
        return f"CAST({self.attr(attr)} AS DOUBLE PRECISION)"


def _traces_sql(dialect: str) -> str:
    # One LEFT JOIN per metadata key on its primary key (request_id, key): the database
    # drops the joins a query does not use and probes the index for the ones it does, so
    # a query over one day of traces never scans the whole metadata table.
    joins = "\n".join(
        f"LEFT JOIN trace_request_metadata m_{col} "
        f"ON m_{col}.request_id = t.request_id AND m_{col}.key = '{key}'"
        for col, key in _META_COLUMNS.items()
    )
    if dialect == "postgresql":
        return _pg_traces_sql(joins)
    return f"""
CREATE VIEW llmops_traces AS
SELECT
  {_TRACE_COLUMNS},
  (SELECT s.model_name FROM spans s
    WHERE s.trace_id = t.request_id AND s.type IN ('LLM', 'CHAT_MODEL')
      AND s.model_name IS NOT NULL
    ORDER BY s.start_time_unix_nano, s.span_id LIMIT 1) AS model,
  {_TRACE_TOKENS},
  {_TRACE_COST}
FROM trace_info t
{_TRACE_COST_JOIN}
{joins}
"""


def _pg_traces_sql(joins: str) -> str:
    """PostgreSQL: the same columns, but a trace's first model comes from a join to its
    LLM spans' first model instead of a correlated subquery: a view's columns are
    expanded into the query wherever it names them, and a join is one pass over an index
    of ours (:data:`PG_INDEXES`), hashed, dropped by the planner when a query does not
    read ``model`` (it is unique on the trace id)."""
    return f"""
CREATE VIEW llmops_traces AS
SELECT
  {_TRACE_COLUMNS},
  fm.model AS model,
  {_TRACE_TOKENS},
  {_TRACE_COST}
FROM trace_info t
{_TRACE_COST_JOIN}
LEFT JOIN (
  SELECT DISTINCT ON (s.trace_id) s.trace_id, s.model_name AS model FROM spans s
  WHERE s.type IN ('LLM', 'CHAT_MODEL') AND s.model_name IS NOT NULL
  ORDER BY s.trace_id, s.start_time_unix_nano, s.span_id
) fm ON fm.trace_id = t.request_id
{joins}
"""


#: A trace's cost: ours (``llmops_trace_costs``, one row per trace the re-pricing job
#: priced, read by primary key) where we priced it, else MLflow's.
_TRACE_COST_JOIN = "LEFT JOIN llmops_trace_costs oc ON oc.trace_id = t.request_id"
_TRACE_COST = """CASE WHEN oc.trace_id IS NOT NULL THEN CAST(oc.cost_usd AS DOUBLE PRECISION)
       ELSE CAST(t.total_cost AS DOUBLE PRECISION) END AS cost_usd,
  CASE WHEN oc.trace_id IS NOT NULL THEN 'llmops'
       WHEN t.total_cost IS NOT NULL THEN 'mlflow' END AS cost_source,
  COALESCE(oc.unpriced_spans, 0) AS unpriced_spans"""

_TRACE_COLUMNS = """t.request_id AS trace_id,
  t.experiment_id AS experiment_id,
  t.timestamp_ms AS timestamp_ms,
  t.status AS status,
  t.execution_time_ms AS latency_ms,
  t.trace_name AS trace_name,
  m_user_id.value AS user_id,
  t.session_id AS session_id,
  m_task_type.value AS task_type,
  m_route.value AS route,
  m_tenant.value AS tenant,
  m_environment.value AS environment,
  m_service.value AS service,
  m_service_version.value AS service_version"""

_TRACE_TOKENS = f"""COALESCE(t.input_tokens, 0) AS input_tokens,
  COALESCE(t.output_tokens, 0) AS output_tokens,
  COALESCE(t.total_tokens, 0) AS total_tokens,
  COALESCE(t.cache_read_input_tokens, 0) AS cache_read_tokens,
  COALESCE(t.cache_creation_input_tokens, 0) AS cache_write_tokens,
  {_WEIGHT_SQL.format(m="m_sample_weight_raw")} AS sample_weight"""


def _spans_sql(dialect: str) -> str:
    j = _Json(dialect)
    return f"""
CREATE VIEW llmops_spans AS
SELECT
  s.trace_id AS trace_id,
  s.span_id AS span_id,
  s.parent_span_id AS parent_span_id,
  s.experiment_id AS experiment_id,
  s.name AS name,
  s.type AS span_type,
  s.status AS status,
  s.{START_MS_SQL} AS start_ms,
  s.end_time_unix_nano / 1000000 AS end_ms,
  (s.end_time_unix_nano - s.start_time_unix_nano) / 1000000 AS latency_ms,
  COALESCE(c.model, s.model_name) AS model,
  COALESCE(c.provider, s.model_provider) AS provider,
  COALESCE({j.usage("input_tokens")}, 0) AS input_tokens,
  COALESCE({j.usage("output_tokens")}, 0) AS output_tokens,
  COALESCE({j.usage("cache_read_input_tokens")}, 0) AS cache_read_tokens,
  COALESCE({j.usage("cache_creation_input_tokens")}, 0) AS cache_write_tokens,
  COALESCE(CAST({j.attr("gen_ai.usage.reasoning.output_tokens")} AS BIGINT), 0)
    AS reasoning_tokens,
  {j.number("llmops.ttft_ms")} AS ttft_ms,
  CASE WHEN c.trace_id IS NOT NULL THEN CAST(c.total_cost_usd AS DOUBLE PRECISION)
       ELSE CAST(s.total_cost AS DOUBLE PRECISION) END AS cost_usd,
  CASE WHEN c.trace_id IS NOT NULL THEN 'llmops'
       WHEN s.total_cost IS NOT NULL THEN 'mlflow' END AS cost_source,
  c.status AS cost_status,
  {_WEIGHT_SQL.format(m="m_w")} AS sample_weight
FROM spans s
LEFT JOIN llmops_span_costs c ON c.trace_id = s.trace_id AND c.span_id = s.span_id
{_weight_join("m_w", "s.trace_id")}
"""


def _assessments_sql(dialect: str) -> str:
    if dialect == "postgresql":
        version = "(a.assessment_metadata::json ->> 'llmops.scorer_version')"
    else:
        version = "json_extract(a.assessment_metadata, '$.\"llmops.scorer_version\"')"
    return f"""
CREATE VIEW llmops_assessments AS
SELECT
  a.assessment_id AS assessment_id,
  a.trace_id AS trace_id,
  a.experiment_id AS experiment_id,
  a.name AS name,
  LOWER(a.assessment_type) AS assessment_type,
  a.aggregate_value AS value_num,
  a.value AS value_json,
  a.source_type AS source_type,
  a.source_id AS source_id,
  a.created_timestamp AS created_ms,
  a.trace_timestamp_ms AS trace_timestamp_ms,
  a.rationale AS rationale,
  a.error AS error,
  a.valid AS valid,
  {version} AS scorer_version
FROM assessments a
"""


def _costs_sql(dialect: str) -> str:
    f = "CAST({} AS DOUBLE PRECISION)"
    return f"""
CREATE VIEW llmops_costs AS
SELECT
  trace_id, span_id,
  CAST(experiment_id AS BIGINT) AS experiment_id,
  trace_timestamp_ms AS timestamp_ms,
  model, provider, status,
  input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
  output_tokens, reasoning_tokens,
  {f.format("input_cost_usd")} AS input_cost_usd,
  {f.format("cache_read_cost_usd")} AS cache_read_cost_usd,
  {f.format("cache_write_cost_usd")} AS cache_write_cost_usd,
  {f.format("output_cost_usd")} AS output_cost_usd,
  {f.format("total_cost_usd")} AS total_cost_usd,
  catalog_version,
  {_WEIGHT_SQL.format(m="m_w")} AS sample_weight
FROM llmops_span_costs
{_weight_join("m_w", "llmops_span_costs.trace_id")}
"""


def view_ddl(dialect: str) -> dict[str, str]:
    """The ``CREATE VIEW`` statements for ``sqlite`` or ``postgresql``, by view name."""
    if dialect not in ("sqlite", "postgresql"):
        raise StoreError(
            f"SQL views support SQLite and PostgreSQL tracking databases, not {dialect!r}; "
            "export to Parquet instead (mlflow-llmops export parquet) and query it with DuckDB"
        )
    return {
        "llmops_traces": _traces_sql(dialect),
        "llmops_spans": _spans_sql(dialect),
        "llmops_assessments": _assessments_sql(dialect),
        "llmops_costs": _costs_sql(dialect),
    }


def mlflow_head_revision() -> str:
    """The alembic revision the installed MLflow expects its tracking database at."""
    import mlflow.store.db_migrations as migrations
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(migrations.__file__).parent)).get_current_head() or ""


def check_mlflow_schema(engine: Engine) -> str:
    """Verify ``engine`` is an MLflow tracking database at the installed MLflow's revision;
    return the revision. Raises :class:`StoreError` saying what to run otherwise."""
    url = engine.url.render_as_string(hide_password=True)
    insp = sa.inspect(engine)
    tables = set(insp.get_table_names())
    if "alembic_version" not in tables or "trace_info" not in tables:
        raise StoreError(
            f"{url} is not an MLflow tracking database (no alembic_version/trace_info table). "
            "Point tracking.uri (or tracking.database_url) at the database your MLflow server "
            f"uses, or create it with: mlflow db upgrade {url}"
        )
    with engine.connect() as conn:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    head = mlflow_head_revision()
    if revision != head:
        import mlflow

        raise StoreError(
            f"{url} has MLflow schema revision {revision!r}, but the installed MLflow "
            f"{mlflow.__version__} expects {head!r}. Upgrade the database with "
            f"`mlflow db upgrade {url}` (back it up first), or install the MLflow version "
            "that created it."
        )
    for table, cols in REQUIRED_COLUMNS.items():
        have = {c["name"] for c in insp.get_columns(table)} if table in tables else set()
        missing = [c for c in cols if c not in have]
        if missing:
            raise StoreError(
                f"{url}: MLflow table {table!r} lacks columns {missing}; the views are "
                f"tested on MLflow {', '.join(TESTED_SCHEMAS.values())}. "
                f"Run `mlflow db upgrade {url}`."
            )
    if revision not in TESTED_SCHEMAS:
        _logger.warning(
            "%s: MLflow schema revision %s is not one the views are tested on (%s); the "
            "columns they read are there, so they are created",
            url,
            revision,
            ", ".join(f"{r} = MLflow {v}" for r, v in TESTED_SCHEMAS.items()),
        )
    return revision


def schema_release(revision: str) -> str | None:
    """The tested MLflow release whose tracking schema is at ``revision`` (None: untested)."""
    return TESTED_SCHEMAS.get(revision)


def pg_index_ddl() -> list[str]:
    """The statements :func:`ensure_pg_indexes` runs, for a DBA to run by hand."""
    return [
        *(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {n} {d};" for n, d in PG_INDEXES.items()),
        *(f"CREATE STATISTICS IF NOT EXISTS {n} {d};" for n, d in PG_STATISTICS.items()),
        "ANALYZE spans;",
        "ANALYZE trace_info;",
    ]


def ensure_pg_indexes(engine: Engine) -> list[str]:
    """Create the missing :data:`PG_INDEXES` and :data:`PG_STATISTICS` on a PostgreSQL
    tracking database; return the names created (none when all exist).

    Idempotent and safe while MLflow writes: indexes are built ``CONCURRENTLY`` (writes
    go on) by one process at a time (advisory lock; the others skip, as waiting inside a
    statement would hold up the build); an invalid index left by an interrupted build is
    dropped and rebuilt. New statistics are filled by one ``ANALYZE`` of their table. Without the
    privilege to index ``spans`` (not its owner) it logs the statements to ask a DBA for
    and returns: the views work without them, only slower.
    """
    created: list[str] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        lock = {"k": _PG_INDEX_LOCK}
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), lock).scalar():
            return created  # another process is building them right now
        try:
            created += _create_pg_indexes(conn)
            if conn.dialect.server_version_info >= (14,):  # statistics on expressions
                stats = _create_pg_statistics(conn)
                for table in sorted({PG_STATISTICS[n].rsplit(" ", 1)[1] for n in stats}):
                    conn.execute(sa.text(f"ANALYZE {table}"))
                created += stats
        except sa.exc.ProgrammingError as e:
            code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
            if code != "42501":  # insufficient_privilege
                raise
            _logger.warning(
                "cannot index MLflow's spans table (%s); SQL analyses over llmops_spans "
                "will read every span. Ask its owner to run:\n%s",
                str(e.orig).splitlines()[0],
                "\n".join(pg_index_ddl()),
            )
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), lock)
    return created


def _create_pg_indexes(conn: sa.Connection) -> list[str]:
    created = []
    for name, definition in PG_INDEXES.items():
        valid = conn.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
            {"n": name},
        ).scalar()
        if valid:
            continue
        if valid is False:  # left by an interrupted CREATE INDEX CONCURRENTLY
            conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}"))
        created.append(name)
    return created


def _create_pg_statistics(conn: sa.Connection) -> list[str]:
    created = []
    for name, definition in PG_STATISTICS.items():
        exists = conn.execute(
            sa.text(
                "SELECT 1 FROM pg_statistic_ext "
                "WHERE stxname = :n AND pg_statistics_obj_is_visible(oid)"
            ),
            {"n": name},
        ).scalar()
        if not exists:
            conn.execute(sa.text(f"CREATE STATISTICS IF NOT EXISTS {name} {definition}"))
            created.append(name)
    return created


def _ensure_cost_table(engine: Engine) -> None:
    from mlflow_llmops.pricing.tables import ANALYTICS_MIGRATIONS
    from mlflow_llmops.statestore.state import StateStore

    StateStore(engine.url.render_as_string(hide_password=False), engine=engine).ensure_schema(
        ANALYTICS_MIGRATIONS
    )


def create_views(target: Any, *, parquet_dir: str | Path | None = None) -> list[str]:
    """Create (or replace) the four views; return their names.

    ``target`` is a SQLAlchemy engine on the MLflow tracking database (its schema is
    checked first, the cost table is created if pricing never ran, and on PostgreSQL the
    missing indexes of :func:`ensure_pg_indexes` are built), or a DuckDB connection with
    ``parquet_dir`` pointing at an export.
    """
    if parquet_dir is not None:
        return _create_duckdb_views(target, Path(parquet_dir))
    if not isinstance(target, Engine):
        raise TypeError(
            "create_views needs a SQLAlchemy Engine, or a DuckDB connection and parquet_dir="
        )
    check_mlflow_schema(target)
    _ensure_cost_table(target)
    ddl = view_ddl(target.dialect.name)
    with target.begin() as conn:
        for name in VIEW_NAMES:
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {name}"))
        for name in VIEW_NAMES:
            conn.execute(sa.text(ddl[name]))
    if target.dialect.name == "postgresql":
        ensure_pg_indexes(target)
    return list(VIEW_NAMES)


def _create_duckdb_views(con: Any, root: Path) -> list[str]:
    from mlflow_llmops.analytics.export import EXPORT_TABLES, empty_table

    if not root.is_dir():
        raise StoreError(f"{root}: no Parquet export here; run `mlflow-llmops export parquet`")
    for view, folder in EXPORT_TABLES.items():
        files = sorted((root / folder).glob("**/*.parquet"))
        if files:
            import pyarrow.parquet as pq

            listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            have = set().union(*(pq.read_schema(f).names for f in files))
            # An export written before a column existed: its default (weight 1, else NULL).
            cols = [
                c if c in have else f"{'1.0' if c == 'sample_weight' else 'NULL'} AS {c}"
                for c in VIEW_COLUMNS[view]
            ]
            con.execute(
                f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(cols)} "
                f"FROM read_parquet([{listing}], union_by_name = true)"
            )
        else:
            con.register(f"_{view}_empty", empty_table(view))
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM _{view}_empty")
    return list(VIEW_NAMES)
