"""Reading traces from and writing assessments to MLflow, in batches where MLflow allows.

MLflow 3.17 has no batch API for assessments: ``log_assessment`` is one store
transaction per assessment, and on a SQLite store each commit waits on the disk
(tens of milliseconds), which caps any per-trace scorer at a few dozen traces per
second. ``AssessmentWriter`` writes a whole batch in one transaction of MLflow's
own SQL store, building the rows exactly as ``SqlAlchemyStore.create_assessment``
does (``SqlAssessments.from_mlflow_entity`` plus the trace's experiment and
timestamp) and inserting them with one Core statement (column arrays through
``unnest`` on PostgreSQL, one prepared executemany on SQLite). That path reaches into MLflow's store module, so it is used only when
the store is exactly ``SqlAlchemyStore`` with trace rollups off; any other store
(an MLflow server, Databricks) and any surprise (a failed batch, then a per-item
retry that works) falls back to the public ``log_assessment``, one per item.
``tests/scoring/test_scoring_batch.py`` checks that both paths write the same
rows on the pinned MLflow, and that MLflow's readers return them as they return
``mlflow.log_feedback``'s, on SQLite and PostgreSQL.

``load_traces`` reads full traces with one store call per batch:
``TracingClient.batch_get_traces`` first reads the trace infos one lazy query at
a time (about 10 ms a trace on SQLite) and then calls the store's
``batch_get_traces`` anyway, which is what we call directly when the store is
MLflow's SQL store. Faster still, ``_read_sql_traces`` assembles the same traces from
the pieces MLflow's own ``search_traces`` uses (trace info rows read with SQLAlchemy
Core instead of one ORM object per tag and metadata row; span rows as
``batch_get_traces`` reads them): three quarters of a backfill's read time. The test
suite checks it returns what ``batch_get_traces`` returns; MLflow internals that moved
send it back to ``batch_get_traces``.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from mlflow.entities import Assessment, Trace
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

log = logging.getLogger(__name__)

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"
#: Traces per store read (span rows of each trace come in the same query).
LOAD_CHUNK = 400


def _sql_store_parts(store: Any) -> dict[str, Any] | None:
    """MLflow's SQL store classes when ``store`` is that store, unmodified; else None."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlAssessments, SqlTraceInfo
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled
    except ImportError:
        return None
    if type(store) is not SqlAlchemyStore or not callable(
        getattr(store, "ManagedSessionMaker", None)
    ):
        return None
    if not all(
        hasattr(SqlAssessments, a)
        for a in ("from_mlflow_entity", "to_mlflow_entity", "experiment_id", "trace_timestamp_ms")
    ):
        return None
    # (attribute, column name) of every mapped column: the Core values of an ORM row
    columns = [(p.key, p.columns[0].name) for p in sa.inspect(SqlAssessments).column_attrs]
    return {
        "assessments": SqlAssessments,
        "trace_info": SqlTraceInfo,
        "to_row": _plain_row_builder(SqlAssessments),
        "table": SqlAssessments.__table__,
        "columns": columns,
        "insert_pg": _unnest_insert(SqlAssessments.__table__, [c for _, c in columns]),
        "rollups_enabled": rollups_enabled,
        "db_type": getattr(store, "db_type", None),
    }


class _PlainRow:
    """The attributes an ``SqlAssessments(**kwargs)`` would hold before its INSERT, without
    the ORM's instrumentation (unset columns read as None, as on the ORM object)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __getattr__(self, name: str) -> Any:
        return None


def _plain_row_builder(sql_assessment: Any) -> Callable[[Any], Any]:
    """``SqlAssessments.from_mlflow_entity``, MLflow's own code run as is, building a
    ``_PlainRow`` instead of an ORM instance: the same values, without the ORM's
    per-attribute instrumentation (a third of a batch write). Falls back to the ORM
    method when MLflow's method is not a plain classmethod naming that class."""
    method = sql_assessment.__dict__.get("from_mlflow_entity")
    fn = getattr(method, "__func__", None)
    code = getattr(fn, "__code__", None)
    if code is None or "SqlAssessments" not in code.co_names or fn.__closure__:
        return sql_assessment.from_mlflow_entity
    plain = types.FunctionType(
        code, {**fn.__globals__, "SqlAssessments": _PlainRow}, fn.__name__, fn.__defaults__
    )
    return lambda a: plain(sql_assessment, a)


def _unnest_insert(table: sa.Table, columns: Sequence[str]) -> Any:
    """PostgreSQL: ``INSERT INTO table (columns) SELECT * FROM unnest(:c0, :c1, ...)``, one
    array parameter per column: one statement (and one cached text) for any number of rows,
    where a multi-row ``VALUES`` is a new text of thousands of parameters per batch. Strings
    are cast to unbounded arrays so an over-long value fails as a plain INSERT would,
    instead of being cut by the cast."""
    from sqlalchemy.dialects.postgresql import ARRAY

    def array_of(t: Any) -> Any:
        return ARRAY(sa.String() if isinstance(t, sa.String) else t)

    cols = [table.c[c] for c in columns]
    rows = (
        sa.func.unnest(
            *(sa.cast(sa.bindparam(f"c{i}"), array_of(c.type)) for i, c in enumerate(cols))
        )
        .table_valued(*columns)
        .render_derived()
    )
    return sa.insert(table).from_select(list(columns), sa.select(*rows.c))


def is_sql_store(client: Any) -> bool:
    """True when ``client`` talks to MLflow's own SQL store in this process."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return type(client.store) is SqlAlchemyStore


def _read_sql_traces(store: Any, trace_ids: Sequence[str]) -> list[Trace]:
    """``store.batch_get_traces(trace_ids)`` of MLflow's SQL store, through its Core-based
    trace info builder. Raises ``MlflowTracingException`` for spans stored elsewhere,
    ``AttributeError``/``ImportError`` when MLflow's internals changed."""
    from mlflow.entities import TraceData
    from mlflow.store.tracking import sqlalchemy_store as sql_store
    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo

    columns = sql_store._TRACE_INFO_COLUMNS
    build, order = sql_store._build_trace_infos_from_rows, {t: i for i, t in enumerate(trace_ids)}
    with store.ManagedSessionMaker() as session:
        rows = session.execute(
            sa.select(*columns).where(SqlTraceInfo.request_id.in_(list(order)))
        ).all()
        infos = sorted(build(session, rows), key=lambda i: order[i.trace_id])
        spans, _cleared = store._load_tracking_store_span_snapshots(
            session, [i.trace_id for i in infos]
        )
    out = []
    for info in infos:
        data = store._get_spans_with_trace_info(
            info, spans.get(info.trace_id, []), allow_partial=False
        )
        if data is not None:  # None: not fully exported yet, as batch_get_traces skips it
            out.append(Trace(info=info, data=TraceData(spans=data)))
    return out


def search_trace_rows(
    store: Any, experiment_ids: Sequence[str], filter_string: str | None
) -> list[tuple[str, int, str, str]]:
    """``(trace id, timestamp, request preview, response preview)`` of every trace that
    ``search_traces(filter_string, order_by=["timestamp_ms ASC"])`` of MLflow's SQL store
    returns, in that order: the same query (MLflow's own filter and order clauses), in one
    read of four columns. ``search_traces`` pages by OFFSET (each page rescans the ones before)
    and builds a full ``TraceInfo`` (tags, metadata, assessments) per trace: most of a
    backfill's planning. Raises ``AttributeError``/``ImportError``/``TypeError`` when MLflow's
    internals changed."""
    from mlflow.store.tracking import sqlalchemy_store as sql_store
    from mlflow.store.tracking.dbmodels.models import SqlTraceInfo

    t = SqlTraceInfo
    with store.ManagedSessionMaker() as session:
        locations = [int(e) for e in store._filter_experiment_ids(session, list(experiment_ids))]
        in_locations = t.experiment_id.in_(locations)
        cases, order, joins = sql_store._get_orderby_clauses_for_search_traces(
            ["timestamp_ms ASC"], session
        )
        stmt = store._trace_query(session).with_entities(
            t.request_id, t.timestamp_ms, t.request_preview, t.response_preview
        )
        if cases:
            stmt = stmt.add_columns(*cases)
        filters = sql_store._get_filter_clauses_for_search_traces(
            filter_string,
            session,
            store._get_dialect(),
            store._trace_query(session).filter(in_locations),
        )
        stmt = store._apply_trace_filter_clauses(stmt, *filters)
        for j in joins:
            stmt = stmt.outerjoin(j)
        rows = stmt.filter(in_locations).order_by(*order).all()
    return [(r[0], r[1], r[2] or "", r[3] or "") for r in rows]


_FAST_READ = {"ok": True}


def load_traces(client: Any, trace_ids: Sequence[str]) -> list[Trace]:
    """Full traces (spans included) of ``trace_ids``; deleted or incomplete ones are left out.

    On MLflow's SQL store, one ``store.batch_get_traces`` per chunk; traces whose spans
    live elsewhere (artifact repository) make the store raise, and that chunk is read
    through the public ``TracingClient.batch_get_traces``."""
    from mlflow.exceptions import MlflowTracingException

    ids = list(dict.fromkeys(trace_ids))
    if not ids:
        return []
    direct = is_sql_store(client)
    out: list[Trace] = []
    for i in range(0, len(ids), LOAD_CHUNK):
        chunk = ids[i : i + LOAD_CHUNK]
        if direct:
            try:
                if _FAST_READ["ok"]:
                    try:
                        out.extend(_read_sql_traces(client.store, chunk))
                        continue
                    except (AttributeError, ImportError, TypeError):
                        _FAST_READ["ok"] = False  # MLflow moved: its public store call
                        log.debug("fast trace read unavailable", exc_info=True)
                out.extend(client.store.batch_get_traces(chunk))
                continue
            except MlflowTracingException:
                pass
        out.extend(client.batch_get_traces(chunk))
    return out


class AssessmentWriter:
    """Logs many assessments; ``log_many`` answers, per item, the logged ``Assessment`` or
    the ``MlflowException`` saying its trace no longer exists. Other failures raise, and
    then nothing of a SQL batch was written (one transaction)."""

    def __init__(self, client: Any, *, parallel: int = 8) -> None:
        self.client = client
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self._sql = _sql_store_parts(client.store)
        # a server or PostgreSQL takes concurrent writes; a SQLite file would only queue them
        sqlite = isinstance(client.store, SqlAlchemyStore) and client.store.db_type == "sqlite"
        self._parallel = 1 if sqlite else max(1, parallel)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.batches = 0  # transactions written by the batch path
        self.fallbacks = 0  # batches written one item at a time after the batch path failed

    @property
    def batched(self) -> bool:
        """Whether batches go to MLflow's SQL store in one transaction."""
        return self._sql is not None and not self._sql["rollups_enabled"]()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def log_many(
        self, items: Sequence[tuple[str, Assessment]]
    ) -> list[Assessment | MlflowException]:
        if not items:
            return []
        plain = [i for i, (_, a) in enumerate(items) if not a.overrides]
        out: list[Any] = [None] * len(items)
        if self.batched and plain:
            try:
                for i, r in zip(plain, self._log_sql([items[i] for i in plain]), strict=True):
                    out[i] = r
            except Exception as e:  # noqa: BLE001 - MLflow wraps what failed in its session
                if isinstance(e, MlflowException) and e.error_code == _UNAVAILABLE:
                    raise
                # the transaction was rolled back: write the same items the public way
                log.debug("batched assessment write failed (%s); one at a time", e)
                each = self._log_each([items[i] for i in plain])
                for i, r in zip(plain, each, strict=True):
                    out[i] = r
                if not any(isinstance(r, MlflowException) for r in each):
                    self._disable_batches(e)
        else:
            plain = []
        in_batch = set(plain)
        rest = [i for i in range(len(items)) if i not in in_batch]
        for i, r in zip(rest, self._log_each([items[i] for i in rest]), strict=True):
            out[i] = r
        return out

    def _disable_batches(self, error: Exception) -> None:
        """The batch failed but the same items logged one by one did not (no trace had gone
        missing meanwhile): the batch path does not match this MLflow, so stop using it."""
        self.fallbacks += 1
        with self._lock:
            if self._sql is not None:
                log.warning(
                    "writing assessments in batches failed (%s); falling back to one "
                    "log_assessment per trace (slower on SQLite, same results)",
                    error,
                )
                self._sql = None

    def _log_sql(self, items: Sequence[tuple[str, Assessment]]) -> list[Any]:
        parts = self._sql
        assert parts is not None
        sql_trace_info, to_row = parts["trace_info"], parts["to_row"]
        ids = sorted({tid for tid, _ in items})
        store = self.client.store
        with store.ManagedSessionMaker(read_only=False) as session:
            q = (
                session.query(
                    sql_trace_info.request_id,
                    sql_trace_info.experiment_id,
                    sql_trace_info.timestamp_ms,
                )
                .filter(sql_trace_info.request_id.in_(ids))
                .order_by(sql_trace_info.request_id)
            )
            if parts["db_type"] != "sqlite":
                # as create_assessment: hold the trace rows against concurrent span writes
                q = q.with_for_update()
            found = {r[0]: r for r in q}
            rows: list[dict[str, Any]] = []
            result: list[Any] = []
            for tid, a in items:
                if tid not in found:
                    result.append(
                        MlflowException(
                            f"Trace with ID '{tid}' not found. It may have been deleted.",
                            RESOURCE_DOES_NOT_EXIST,
                        )
                    )
                    continue
                a.trace_id = tid
                # MLflow's own mapping of the entity to its row, then Core values of that row
                row = to_row(a)
                row.experiment_id = found[tid][1]
                row.trace_timestamp_ms = found[tid][2]
                rows.append({col: getattr(row, attr) for attr, col in parts["columns"]})
                a.assessment_id = row.assessment_id
                a.create_time_ms, a.last_update_time_ms = (
                    row.created_timestamp,
                    row.last_updated_timestamp,
                )
                a.valid = row.valid
                result.append(a)
            if rows:
                # one statement per batch: rows as column arrays on PostgreSQL, the driver's
                # executemany of one prepared INSERT elsewhere (SQLite: a C loop, no parsing)
                if parts["db_type"] == "postgresql":
                    names = [c for _, c in parts["columns"]]
                    session.execute(
                        parts["insert_pg"],
                        {f"c{i}": [r[c] for r in rows] for i, c in enumerate(names)},
                    )
                else:
                    session.execute(sa.insert(parts["table"]), rows)
        self.batches += 1
        return result

    def _log_one(self, trace_id: str, a: Assessment) -> Assessment | MlflowException:
        try:
            if a.overrides is not None:
                try:
                    return self.client.log_assessment(trace_id, a)
                except MlflowException as e:
                    if e.error_code != _NOT_FOUND:
                        raise
                    a.overrides = None  # someone deleted the old one: log without the link
            return self.client.log_assessment(trace_id, a)
        except MlflowException as e:
            if e.error_code == _NOT_FOUND:
                return e
            raise

    def _log_each(self, items: Sequence[tuple[str, Assessment]]) -> list[Any]:
        if self._parallel <= 1 or len(items) <= 1:
            return [self._log_one(tid, a) for tid, a in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="llmops-log")
        return list(self._pool.map(lambda it: self._log_one(*it), items))
