"""Bulk writes of finished traces into MLflow's SQL tracking store, one transaction per batch.

MLflow's ``start_trace`` opens one transaction per trace and ``log_spans`` another per
batch: a kill between them leaves ``trace_info`` rows without spans (``get_trace`` then
raises "missing span data"), and one commit per trace caps SQLite at a few dozen traces
per second. Here a batch becomes four multi-row INSERTs (``trace_info``,
``trace_tags``, ``trace_request_metadata``, ``spans``) in one transaction: all of a
batch's traces land with all their spans, or none does.

The rows are exactly those ``SqlAlchemyStore.start_trace`` followed by ``log_spans``
would leave (MLflow 3.17: analytics token/cost columns, the finalized marker, the
artifact-location and spans-location tags, ``db_payload_generation`` 1), built with
MLflow's own helpers; ``tests/tracing/test_export_atomic.py`` compares both paths row by
row and reads ours back through ``MlflowClient.get_trace`` and ``search_traces``.
Stores this cannot mirror (SQL trace rollups on, MSSQL/MySQL) use MLflow's API instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_logger = logging.getLogger("mlflow_llmops.tracing")
#: trace ids the artifact-location template may hold (``tr-<hex>``, OTel hex ids)
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
_ID_TOKEN = "tr-llmopsidtoken0123456789"


@dataclass
class _Rows:
    trace_info: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: _Rows) -> None:
        self.trace_info.extend(other.trace_info)
        self.tags.extend(other.tags)
        self.metadata.extend(other.metadata)
        self.spans.extend(other.spans)


def skip_missing_litellm() -> None:
    """MLflow prices each LLM span when storing it and tries ``import litellm`` first, for
    every span: when litellm is not installed each failed import searches ``sys.path``
    again (2-6 ms a span, most of a batch's time). Recording the absence in ``sys.modules``
    makes the import fail at once; MLflow then uses its bundled catalog, as it would."""
    import importlib.util
    import sys

    if "litellm" not in sys.modules and importlib.util.find_spec("litellm") is None:
        sys.modules["litellm"] = None  # type: ignore[assignment]


def bulk_supported(store: Any) -> bool:
    """Whether ``store`` is a SQL store whose trace rows we mirror exactly."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore, rollups_enabled
    except ImportError:  # mlflow-tracing only: no SQL store
        return False
    if not isinstance(store, SqlAlchemyStore) or rollups_enabled():
        return False
    if getattr(store, "db_type", None) not in ("sqlite", "postgresql"):
        return False
    try:  # workspaces scope trace queries: leave those deployments to MLflow's own path
        from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

        ws = store._get_active_workspace()
        return ws in (None, DEFAULT_WORKSPACE_NAME)
    except Exception:  # noqa: BLE001 - no workspace support in this MLflow
        return True


class SqlBulkWriter:
    """Writes batches of MLflow ``Trace`` objects with SQLAlchemy Core, one transaction each.

    Idempotent by trace id: traces already in ``trace_info`` are skipped (a replayed spool,
    a batch retried after a lost commit acknowledgement), never written twice.
    """

    def __init__(self, store: Any) -> None:
        from mlflow.store.tracking.dbmodels.models import (
            SqlSpan,
            SqlTraceInfo,
            SqlTraceMetadata,
            SqlTraceTag,
        )

        skip_missing_litellm()
        self.store = store
        self.engine = store.engine
        self.t_info = SqlTraceInfo.__table__
        self.t_tags = SqlTraceTag.__table__
        self.t_meta = SqlTraceMetadata.__table__
        self.t_spans = SqlSpan.__table__
        self._experiments: dict[str, Any] = {}
        self._raw_sql: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._artifact_templates: dict[str, str | None] = {}

    def _experiment(self, experiment_id: str) -> Any:
        exp = self._experiments.get(experiment_id)
        if exp is None:
            exp = self.store.get_experiment(experiment_id)
            self.store._check_experiment_is_active(exp)
            self._experiments[experiment_id] = exp
        return exp

    def existing(self, conn: Any, trace_ids: Sequence[str]) -> set[str]:
        import sqlalchemy as sa

        found: set[str] = set()
        ids = list(trace_ids)
        for i in range(0, len(ids), 500):
            q = sa.select(self.t_info.c.request_id).where(
                self.t_info.c.request_id.in_(ids[i : i + 500])
            )
            found.update(r[0] for r in conn.execute(q))
        return found

    def write(
        self,
        traces: Sequence[Any],
        on_permanent: Callable[[Any, Exception], None],
        on_existing: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Write ``traces`` (MLflow ``Trace``) in one transaction; return those written.

        A trace MLflow would refuse (deleted experiment, invalid tag) goes to
        ``on_permanent`` and is left out; a trace already stored goes to ``on_existing``.
        Any other error propagates with nothing written (the transaction rolls back).
        """
        prepared = [(t, r) for t in traces if (r := self._prepare(t, on_permanent)) is not None]
        rows = _Rows()
        built: list[Any] = []
        # CPU work first, outside the transaction: SQLite's write lock is held only to insert
        with self.engine.begin() as conn:
            present = self.existing(conn, [t.info.trace_id for t, _ in prepared])
            for trace, one in prepared:
                if trace.info.trace_id in present:
                    if on_existing is not None:
                        on_existing(trace)
                    continue
                rows.add(one)
                built.append(trace)
            self._insert_rows(conn, rows)
        return built

    def _prepare(self, trace: Any, on_permanent: Callable[[Any, Exception], None]) -> _Rows | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._rows(trace, self._experiment(trace.info.experiment_id))
        except MlflowException as e:
            if e.get_http_status_code() >= 500:
                raise
            on_permanent(trace, e)
            return None

    def _insert_rows(self, conn: Any, rows: _Rows) -> None:
        for table, data in (
            (self.t_info, rows.trace_info),
            (self.t_tags, rows.tags),
            (self.t_meta, rows.metadata),
            (self.t_spans, rows.spans),
        ):
            if data:
                self._insert(conn, table, data)

    def _insert(self, conn: Any, table: Any, data: list[dict[str, Any]]) -> None:
        """One bulk INSERT of ``data`` in the open transaction: COPY on PostgreSQL
        (psycopg 3; its ``executemany`` spends tens of µs of Python per row), the driver's
        ``executemany`` on SQLite (SQLAlchemy's per-row parameter handling costs about as
        much as SQLite's own insert); values go through the columns' bind processors as
        SQLAlchemy would send them. SQLAlchemy's insert for other drivers, or when rows
        differ in keys."""
        cols = tuple(data[0])
        keys = data[0].keys()
        plan = self._bulk_plan(conn.dialect, table, cols)
        if plan is None or not all(r.keys() == keys for r in data):
            conn.execute(table.insert(), data)
            return
        sql, procs = plan
        if any(procs):
            pairs = tuple(zip(cols, procs, strict=True))
            rows = [tuple(p(r[c]) if p else r[c] for c, p in pairs) for r in data]
        else:
            rows = [tuple(r[c] for c in cols) for r in data]
        if sql.startswith("COPY"):
            with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as cp:
                for row in rows:
                    cp.write_row(row)
        else:
            conn.exec_driver_sql(sql, rows)

    def _bulk_plan(
        self, dialect: Any, table: Any, cols: tuple[str, ...]
    ) -> tuple[str, tuple[Callable[[Any], Any] | None, ...]] | None:
        """The COPY (psycopg 3) or plain INSERT (SQLite) statement for these columns and
        each column's bind processor, or None for SQLAlchemy's own insert."""
        key = (dialect.name, table.name, cols)
        if key not in self._raw_sql:
            q = dialect.identifier_preparer.quote
            names = ", ".join(q(c) for c in cols)
            procs = tuple(table.c[c].type.bind_processor(dialect) for c in cols)
            plan = None
            if dialect.name == "postgresql" and dialect.driver == "psycopg":
                plan = (f"COPY {q(table.name)} ({names}) FROM STDIN", procs)
            elif dialect.name == "sqlite":
                marks = ", ".join("?" * len(cols))
                plan = (f"INSERT INTO {q(table.name)} ({names}) VALUES ({marks})", procs)
            self._raw_sql[key] = plan
        return self._raw_sql[key]

    def _artifact_location(self, experiment: Any, trace_id: str) -> str:
        """``append_to_uri_path(artifact_location, "traces", trace_id, "artifacts")`` as
        ``start_trace`` computes it, from a per-experiment template (URI parsing is a tenth
        of a batch's CPU otherwise); unusual ids or locations take MLflow's path."""
        import mlflow.store.tracking.sqlalchemy_store as S

        loc = experiment.artifact_location

        def exact(tid: str) -> str:
            return S.append_to_uri_path(
                loc,
                S.SqlAlchemyStore.TRACE_FOLDER_NAME,
                tid,
                S.SqlAlchemyStore.ARTIFACTS_FOLDER_NAME,
            )

        if not _PLAIN_ID.fullmatch(trace_id) or _ID_TOKEN in loc:
            return exact(trace_id)
        if loc not in self._artifact_templates:
            t = exact(_ID_TOKEN)
            self._artifact_templates[loc] = t if t.count(_ID_TOKEN) == 1 else None
        template = self._artifact_templates[loc]
        return template.replace(_ID_TOKEN, trace_id) if template else exact(trace_id)

    def _rows(self, trace: Any, experiment: Any) -> _Rows:
        """The rows ``start_trace(trace.info)`` then ``log_spans(spans)`` leave for a new trace."""
        import mlflow.store.tracking.sqlalchemy_store as S
        from mlflow.tracing.constant import (
            SpanAttributeKey,
            SpansLocation,
            TraceMetadataKey,
            TraceTagKey,
        )
        from mlflow.utils.mlflow_tags import MLFLOW_ARTIFACT_LOCATION

        info = trace.info
        tid = info.trace_id
        exp_id = int(info.experiment_id)
        trace_tags = dict(info.tags)
        if info.assessments:
            raise S.MlflowException.invalid_parameter_value(
                "traces with assessments at export time are not supported by the bulk path"
            )
        # -- start_trace ------------------------------------------------------
        trace_name = S.validate_trace_name(trace_tags.get(TraceTagKey.TRACE_NAME))
        metadata = dict(info.trace_metadata.items())
        columns: dict[str, Any] = {
            "request_id": tid,
            "experiment_id": exp_id,
            "timestamp_ms": info.request_time,
            "execution_time_ms": info.execution_duration,
            "status": info.state.value,
            "client_request_id": info.client_request_id,
            "request_preview": info.request_preview,
            "response_preview": info.response_preview,
            "trace_name": trace_name,
            "session_id": None,
            # log_spans bumps it once after start_trace's insert with the default 0
            "db_payload_generation": 1,
            **{c: None for c in S.TOKEN_COLUMN_BY_KEY.values()},
            **{c: None for c in S.COST_COLUMN_BY_KEY.values()},
        }
        columns.update(S.analytics_columns_from_metadata(metadata))
        tags = {k: v for k, v in trace_tags.items() if k != TraceTagKey.TRACE_NAME}
        tags[MLFLOW_ARTIFACT_LOCATION] = self._artifact_location(experiment, tid)
        for key in S.PROMOTED_TRACE_METADATA_KEYS:
            metadata.pop(key, None)
        metadata[TraceMetadataKey.TRACE_INFO_FINALIZED] = "true"
        token_authoritative = any(columns[c] is not None for c in S.TOKEN_COLUMN_BY_KEY.values())
        cost_authoritative = any(columns[c] is not None for c in S.COST_COLUMN_BY_KEY.values())

        # -- log_spans (the trace exists and is finalized) --------------------
        out = _Rows()
        usage_nodes, cost_nodes = [], []
        session_id = user_id = root_dict = None
        root_status: str | None = None
        root_tags: dict[str, str] = {}
        resource = None
        for span in trace.data.spans:
            span_dict = S.translate_span_when_storing(span)
            attrs = span_dict.get("attributes", {})
            # each of these properties re-encodes or re-wraps the OTel value: read once
            span_id, parent_id, status_code = span.span_id, span.parent_id, span.status.status_code
            usage_nodes.append(
                S._span_aggregation_node(span_id, parent_id, attrs, SpanAttributeKey.CHAT_USAGE)
            )
            cost_nodes.append(
                S._span_aggregation_node(span_id, parent_id, attrs, SpanAttributeKey.LLM_COST)
            )
            span_cost = None
            if attrs:
                if session_id is None and (
                    sid := (
                        attrs.get(SpanAttributeKey.SESSION_ID)
                        or attrs.get(S.GenAiSemconvKey.CONVERSATION_ID)
                    )
                ):
                    session_id = S.validate_session_id(S._try_parse_json_string(sid))
                if user_id is None and (uid := attrs.get("user.id")):
                    user_id = S._try_parse_json_string(uid)
                span_cost = attrs.get(SpanAttributeKey.LLM_COST)
            cost_values: dict[str, Any] = {}
            if span_cost:
                try:
                    cost_values = json.loads(span_cost)
                except (TypeError, ValueError):
                    cost_values = {}
            out.spans.append(
                {
                    "trace_id": span.trace_id,
                    "experiment_id": exp_id,
                    "span_id": span_id,
                    "parent_span_id": parent_id,
                    "name": span.name,
                    "type": span.span_type,
                    "status": status_code,
                    "start_time_unix_nano": span.start_time_ns,
                    "end_time_unix_nano": span.end_time_ns,
                    "content": json.dumps(span_dict, cls=S.TraceJSONEncoder, ensure_ascii=False),
                    "input_cost": S.finite_float_or_none(cost_values.get("input_cost")),
                    "output_cost": S.finite_float_or_none(cost_values.get("output_cost")),
                    "total_cost": S.finite_float_or_none(cost_values.get("total_cost")),
                    "model_name": S.bounded_model_dimension(
                        S._try_parse_json_string(attrs.get(SpanAttributeKey.MODEL))
                    ),
                    "model_provider": S.bounded_model_dimension(
                        S._try_parse_json_string(attrs.get(SpanAttributeKey.MODEL_PROVIDER))
                    ),
                }
            )
            if resource is None:
                r = getattr(span._span, "resource", None)
                if r is not None and r.attributes:
                    resource = r
            if parent_id is None:
                root_dict = span_dict
                root_status = "ERROR" if status_code == S.SpanStatusCode.ERROR else "OK"
                prefix = SpanAttributeKey.TRACE_TAG_PREFIX
                for k, v in attrs.items():
                    if k.startswith(prefix):
                        try:
                            tk, tv = S._validate_trace_tag(
                                k[len(prefix) :], str(S._try_parse_json_string(v))
                            )
                        except Exception:  # noqa: BLE001 - MLflow skips invalid ones too
                            continue
                        if tk == TraceTagKey.TRACE_NAME:
                            tv = S.validate_trace_name(tv)
                        root_tags[tk] = tv

        if columns["status"] in ("IN_PROGRESS", "STATE_UNSPECIFIED") and root_status:
            columns["status"] = root_status
        if root_dict is not None:
            root_attrs = root_dict.get("attributes", {})
            try:
                if columns["request_preview"] is None and (
                    v := root_attrs.get(SpanAttributeKey.INPUTS)
                ):
                    columns["request_preview"] = S._get_truncated_preview(v, role="user")
                if columns["response_preview"] is None and (
                    v := root_attrs.get(SpanAttributeKey.OUTPUTS)
                ):
                    columns["response_preview"] = S._get_truncated_preview(v, role="assistant")
            except Exception:  # noqa: BLE001 - MLflow ignores preview failures too
                _logger.debug("preview failed for trace %s", tid, exc_info=True)
        if TraceTagKey.TRACE_NAME in root_tags:
            columns["trace_name"] = root_tags[TraceTagKey.TRACE_NAME]
        usage = S.aggregate_usage_from_span_nodes(usage_nodes) or {}
        if usage and not token_authoritative:
            for key, column in S.TOKEN_COLUMN_BY_KEY.items():
                v = S.token_count_or_none(usage.get(key))
                if v is not None:
                    columns[column] = v
        cost = S.aggregate_cost_from_span_nodes(cost_nodes) or {}
        if cost and not cost_authoritative:
            for key, column in S.COST_COLUMN_BY_KEY.items():
                v = S.finite_float_or_none(cost.get(key))
                if v is not None:
                    columns[column] = v
        if session_id and columns["session_id"] is None:
            columns["session_id"] = session_id
        if user_id and TraceMetadataKey.TRACE_USER not in metadata:
            metadata[TraceMetadataKey.TRACE_USER] = user_id
        tags[TraceTagKey.SPANS_LOCATION] = SpansLocation.TRACKING_STORE.value
        if resource is not None:
            for key, value in resource.attributes.items():
                if key.startswith(("telemetry.sdk.", "mlflow.")):
                    continue
                sv = value if isinstance(value, str) else json.dumps(value)
                try:
                    key, sv = S._validate_trace_tag(key, sv)
                except Exception:  # noqa: BLE001
                    continue
                tags[key] = sv
        for k, v in root_tags.items():
            if k != TraceTagKey.TRACE_NAME:
                tags[k] = v

        out.trace_info.append(columns)
        out.tags.extend({"request_id": tid, "key": k, "value": v} for k, v in tags.items())
        out.metadata.extend(
            {"request_id": tid, "key": k, "value": v} for k, v in sorted(metadata.items())
        )
        return out
