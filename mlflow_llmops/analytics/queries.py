"""The SQL cost analyses in ``sql/``: load, validate, transpile and run them.

Each file holds one query with a documented header::

    -- @question What did each model cost per day?
    -- @notes  (optional, may continue on following comment lines)
    -- @param since_ms timestamp now-30d  Start of the time range (inclusive)
    -- @param experiment_id string null  Only this experiment (default: all)
    -- @column day_ms  Start of the UTC day (epoch ms)

Queries are written once, in PostgreSQL syntax over the ``llmops_*`` views, with
``:name`` bind parameters (never string formatting), and transpiled by sqlglot to
SQLite, DuckDB or Spark SQL. Parameter values are checked against their declared
type before they are bound, so a value is data, never SQL.
"""

from __future__ import annotations

import calendar
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlglot
from sqlalchemy.engine import Engine
from sqlglot import exp

from mlflow_llmops.core.clock import utc
from mlflow_llmops.errors import ConfigError, LlmopsError

SOURCE_DIALECT = "postgres"
PARAM_TYPES = ("timestamp", "int", "float", "string")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RELATIVE = re.compile(r"^now(?:-(\d+)([dhm]))?$")


class QueryError(LlmopsError, ValueError):
    """A query file is malformed, or a parameter value is invalid; says which and why."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str  # "required", "null", a literal, or a relative time (now-7d, month_start)
    description: str

    @property
    def required(self) -> bool:
        return self.default == "required"


@dataclass(frozen=True)
class Query:
    """One analysis: its SQL (PostgreSQL syntax) and its documented interface."""

    name: str
    path: Path
    question: str
    notes: str
    params: tuple[Param, ...]
    columns: tuple[tuple[str, str], ...]
    sql: str

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    def render(self, dialect: str) -> str:
        """The SQL for ``dialect`` (sqlite, postgresql, duckdb, spark)."""
        return _render(self.sql, dialect)


@dataclass
class QueryResult:
    """Rows of one query run, with the columns its header documents."""

    query: Query
    columns: list[str]
    rows: list[tuple[Any, ...]]
    params: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


# --------------------------------------------------------------------------- loading
def default_sql_dir() -> Path:
    """``$LLMOPS_SQL_DIR``, else the queries shipped inside the package (``mlflow_llmops/sql``,
    linked as ``sql/`` at the top of the repository), so a wheel install has them too."""
    env = os.environ.get("LLMOPS_SQL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "sql"


def parse_query_file(path: Path) -> Query:
    """Parse and validate one ``.sql`` file; :class:`QueryError` names the file and the fix."""
    text = path.read_text(encoding="utf-8")
    name = path.stem
    where = f"{path}"
    if not _NAME.match(name):
        raise QueryError(f"{where}: file name must be lower_snake_case.sql")
    question, notes, params, columns = "", [], [], []
    body: list[str] = []
    last = None
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("--") and not body:
            content = stripped[2:].strip()
            if content.startswith("@question "):
                question, last = content[len("@question ") :].strip(), "question"
            elif content.startswith("@notes"):
                notes.append(content[len("@notes") :].strip())
                last = "notes"
            elif content.startswith("@param "):
                parts = content[len("@param ") :].split(None, 3)
                if len(parts) < 3:
                    raise QueryError(
                        f"{where}:{i}: write '-- @param NAME TYPE DEFAULT  description'"
                    )
                pname, ptype, pdefault = parts[:3]
                if ptype not in PARAM_TYPES:
                    raise QueryError(
                        f"{where}:{i}: parameter {pname!r} has unknown type {ptype!r}; "
                        f"use one of {', '.join(PARAM_TYPES)}"
                    )
                params.append(Param(pname, ptype, pdefault, parts[3] if len(parts) > 3 else ""))
                last = "param"
            elif content.startswith("@column "):
                parts = content[len("@column ") :].split(None, 1)
                columns.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
                last = "column"
            elif content.startswith("@"):
                raise QueryError(f"{where}:{i}: unknown header tag {content.split()[0]!r}")
            elif last == "notes" and content:
                notes.append(content)
            continue
        if stripped or body:
            body.append(line)
    sql = "\n".join(body).strip().rstrip(";").strip()
    if not question:
        raise QueryError(f"{where}: missing '-- @question ...' header line")
    if not columns:
        raise QueryError(f"{where}: missing '-- @column NAME  description' header lines")
    try:
        statements = sqlglot.parse(sql, read=SOURCE_DIALECT)
    except sqlglot.errors.ParseError as e:
        raise QueryError(f"{where}: SQL does not parse: {e}") from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise QueryError(f"{where}: must hold exactly one SELECT (or WITH ... SELECT) query")
    tree = statements[0]
    used = {p.name for p in tree.find_all(exp.Placeholder)}
    declared = {p.name for p in params}
    if used - declared:
        raise QueryError(f"{where}: parameters used but not declared: {sorted(used - declared)}")
    if declared - used:
        raise QueryError(f"{where}: parameters declared but not used: {sorted(declared - used)}")
    selects = tree.named_selects
    if selects != [c for c, _ in columns]:
        raise QueryError(
            f"{where}: the @column lines {[c for c, _ in columns]} do not match the query's "
            f"output columns {selects}"
        )
    bad_tables = {
        t.name
        for t in tree.find_all(exp.Table)
        if not t.name.startswith("llmops_") and t.name not in _cte_names(tree)
    }
    if bad_tables:
        raise QueryError(
            f"{where}: reads {sorted(bad_tables)}; queries may only read the llmops_* views"
        )
    return Query(name, path, question, " ".join(notes), tuple(params), tuple(columns), sql)


def _cte_names(tree: exp.Expression) -> set[str]:
    return {c.alias for c in tree.find_all(exp.CTE)}


def load_queries(sql_dir: str | Path | None = None) -> dict[str, Query]:
    """Every query in ``sql_dir`` (default :func:`default_sql_dir`), by name."""
    d = Path(sql_dir) if sql_dir else default_sql_dir()
    if not d.is_dir():
        raise QueryError(f"{d}: SQL folder not found; set LLMOPS_SQL_DIR or analytics.sql_dir")
    return {q.name: q for q in (parse_query_file(p) for p in sorted(d.glob("*.sql")))}


def get_query(name: str, sql_dir: str | Path | None = None) -> Query:
    queries = load_queries(sql_dir)
    if name not in queries:
        raise QueryError(
            f"no query named {name!r}; available: {', '.join(sorted(queries))} "
            "(mlflow-llmops sql list)"
        )
    return queries[name]


# --------------------------------------------------------------------------- rendering
@lru_cache(maxsize=256)
def _render(sql: str, dialect: str) -> str:
    tree = sqlglot.parse_one(sql, read=SOURCE_DIALECT)
    if dialect in ("sqlite", "postgresql", "postgres"):
        # SQLAlchemy ``text()`` placeholders; SQLAlchemy adapts them to the driver.
        tree = tree.transform(
            lambda n: exp.var(f":{n.name}") if isinstance(n, exp.Placeholder) else n
        )
        return tree.sql(dialect="postgres" if dialect.startswith("postgres") else "sqlite")
    if dialect in ("duckdb", "spark", "databricks"):
        return tree.sql(dialect=dialect)
    raise QueryError(f"unknown SQL dialect {dialect!r}; use sqlite, postgresql, duckdb or spark")


# --------------------------------------------------------------------------- params
def _to_ms(value: Any, pname: str) -> int:
    if isinstance(value, bool):
        raise QueryError(f"parameter {pname}: expected a time, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        v = utc(value)
        return int(v.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    s = str(value).strip()
    if re.fullmatch(r"-?\d+", s):
        return int(s)
    try:
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"parameter {pname}: {value!r} is not a time; use epoch milliseconds or an ISO "
            "date/time such as 2026-03-01 or 2026-03-01T14:00:00Z"
        ) from None
    return _to_ms(parsed, pname)


def _relative(default: str, now: datetime) -> int | None:
    now_ms = int(now.timestamp() * 1000)
    m = _RELATIVE.match(default)
    if m:
        if not m.group(1):
            return now_ms
        unit = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}[m.group(2)]
        return now_ms - int(m.group(1)) * unit
    if default == "last_hour":
        return now_ms - now_ms % 3_600_000 - 3_600_000
    if default in ("month_start", "month_end"):
        first = datetime(now.year, now.month, 1, tzinfo=UTC)
        if default == "month_end":
            days = calendar.monthrange(now.year, now.month)[1]
            first += timedelta(days=days)
        return int(first.timestamp() * 1000)
    if default == "today":
        return now_ms - now_ms % 86_400_000
    return None


def bind_params(query: Query, values: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Validated, typed values for every parameter of ``query`` (defaults filled in).

    Unknown names, values of the wrong type and missing required values raise
    :class:`QueryError`; strings are bound as data, so SQL in them is inert.
    """
    known = {p.name: p for p in query.params}
    unknown = set(values) - set(known)
    if unknown:
        raise QueryError(
            f"query {query.name}: unknown parameter(s) {sorted(unknown)}; it takes "
            f"{', '.join(known) or 'none'}"
        )
    out: dict[str, Any] = {}
    for p in query.params:
        raw = values.get(p.name)
        if raw is None:
            if p.required:
                raise QueryError(f"query {query.name}: parameter {p.name} is required")
            if p.default == "null":
                out[p.name] = None
                continue
            rel = _relative(p.default, now) if p.type == "timestamp" else None
            raw = rel if rel is not None else p.default
        out[p.name] = _coerce(p, raw, query.name)
    return out


def _coerce(p: Param, raw: Any, qname: str) -> Any:
    where = f"query {qname}: parameter {p.name}"
    if p.type == "timestamp":
        return _to_ms(raw, p.name)
    if p.type == "int":
        if isinstance(raw, bool) or not re.fullmatch(r"-?\d+", str(raw).strip()):
            raise QueryError(f"{where}: expected an integer, got {raw!r}")
        v = int(str(raw).strip())
        if p.name == "limit" and not 0 < v <= 100_000:
            raise QueryError(f"{where}: must be between 1 and 100000, got {v}")
        return v
    if p.type == "float":
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise QueryError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(v):
            raise QueryError(f"{where}: expected a finite number, got {raw!r}")
        return v
    s = str(raw)
    if len(s) > 1000:
        raise QueryError(f"{where}: value longer than 1000 characters")
    return s


def parse_time_ms(value: Any, what: str = "time") -> int:
    """Epoch milliseconds from epoch ms, a date/datetime, or an ISO string (UTC if naive)."""
    return _to_ms(value, what)


# --------------------------------------------------------------------------- running
def _normalise(v: Any) -> Any:
    """PostgreSQL's ``SUM(bigint)`` is a ``numeric`` (a Decimal with no fraction digits):
    an int, like SQLite's and DuckDB's sum; other Decimals (divisions) become floats."""
    if isinstance(v, Decimal):
        if v.is_finite() and v.as_tuple().exponent >= 0:
            return int(v)
        return float(v)
    return v


#: PostgreSQL ``work_mem`` for the transaction of one analysis (``SET LOCAL``).
PG_WORK_MEM = "256MB"


def run_query(
    query: Query | str,
    target: Any,
    params: Mapping[str, Any] | None = None,
    *,
    now: datetime,
    sql_dir: str | Path | None = None,
) -> QueryResult:
    """Run ``query`` on ``target``: a SQLAlchemy engine on the tracking database (views
    created with :func:`mlflow_llmops.analytics.views.create_views`) or a DuckDB connection
    over a Parquet export. ``now`` resolves relative defaults such as ``now-7d``.
    On PostgreSQL the query runs with JIT compilation off and ``work_mem`` at
    :data:`PG_WORK_MEM` (``SET LOCAL``)."""
    q = get_query(query, sql_dir) if isinstance(query, str) else query
    bound = bind_params(q, params or {}, now)
    if isinstance(target, Engine):
        sql = q.render(target.dialect.name)
        try:
            with target.connect() as conn:
                if target.dialect.name == "postgresql":
                    # For this transaction only: compiling a query of a few seconds with
                    # LLVM (inlining, optimisation) costs more than it saves, up to seconds.
                    conn.execute(sa.text("SET LOCAL jit = off"))
                    # Analyses hash a million traces' costs, weights and groups: in memory
                    # (the 4 MB default spills them to disk in batches).
                    conn.execute(sa.text(f"SET LOCAL work_mem = '{PG_WORK_MEM}'"))
                res = conn.execute(sa.text(sql), bound)
                rows = [tuple(_normalise(v) for v in r) for r in res.all()]
        except sa.exc.ProgrammingError as e:
            raise _missing_views(e, q) from e
        except sa.exc.OperationalError as e:
            raise _missing_views(e, q) from e
    else:
        import duckdb

        sql = q.render("duckdb")
        try:
            cur = target.execute(sql, bound)
        except duckdb.CatalogException as e:
            raise _missing_views(e, q) from e
        rows = [tuple(_normalise(v) for v in r) for r in cur.fetchall()]
    return QueryResult(q, q.column_names, rows, bound)


def _missing_views(e: Exception, q: Query) -> LlmopsError:
    msg = str(e)
    if "llmops_" in msg and ("no such table" in msg or "does not exist" in msg):
        return LlmopsError(
            f"query {q.name}: the llmops_* views are missing; create them with "
            "`mlflow-llmops sql views` (or views.create_views(engine))"
        )
    return LlmopsError(f"query {q.name} failed: {msg.splitlines()[0]}")


def parse_param_args(items: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict; clear error on bad items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r}: write NAME=VALUE, e.g. --param limit=10")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def analytics_url(config: Any) -> str:
    """The SQLAlchemy URL SQL analyses run on, from an ``LlmopsConfig``; a clear error
    when the tracking store is an HTTP server without a database URL."""
    url = config.analytics.database_url or config.tracking.sql_url()
    if not url:
        raise ConfigError(
            f"tracking.uri is {config.tracking.uri!r} (a server, not a database): set "
            "tracking.database_url (or analytics.database_url) to its database URL, or export "
            "to Parquet with `mlflow-llmops export parquet` and pass --parquet DIR"
        )
    return url


def open_target(config: Any, parquet_dir: str | Path | None = None) -> Any:
    """Where to run queries: a DuckDB connection over ``parquet_dir``, else an engine on
    the analytics database with the views created if they are missing."""
    if parquet_dir is not None:
        from mlflow_llmops.analytics.export import read_export

        return read_export(parquet_dir)
    from mlflow_llmops.analytics.views import VIEW_NAMES, create_views
    from mlflow_llmops.statestore.state import make_engine

    engine = make_engine(analytics_url(config))
    try:
        present = set(sa.inspect(engine).get_view_names())
    except sa.exc.OperationalError as e:
        raise LlmopsError(
            f"cannot open {engine.url.render_as_string(hide_password=True)}: {e.orig}"
        ) from e
    if not set(VIEW_NAMES) <= present:
        create_views(engine)
    return engine
