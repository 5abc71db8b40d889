"""Incremental, resumable export of the analytics views to partitioned Parquet.

For MLflow servers without SQL access (REST-only, Databricks-hosted) and for Spark or
DuckDB. The layout is Hive-style, one file per view and day::

    OUT/traces/day=2026-03-02/part.parquet      (llmops_traces rows of that day)
    OUT/spans/day=.../part.parquet              (llmops_spans, by span start)
    OUT/assessments/day=.../part.parquet        (llmops_assessments, by trace time)
    OUT/costs/day=.../part.parquet              (llmops_costs, by trace time)
    OUT/_manifest.json                          (watermark, days written)

Each day is written to a temporary file and renamed into place, then the manifest is
updated, so an interrupted export resumes where it stopped and never leaves a half file.
Each run re-exports the days from the watermark minus ``lookback_days`` up to ``now``,
plus, from a SQL source, every older day whose content changed since it was exported
(a backfill scoring last month's traces, a re-pricing after a price change, late
traces): the manifest keeps a small signature per day (row counts, cost sums, newest
assessment) computed by one GROUP BY per view, so those days are found without
reading their rows.

Sources: a SQLAlchemy engine on the tracking database (reads the SQL views), or a
tracking URI of an MLflow server read through ``MlflowClient.search_traces``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mlflow_llmops.analytics.views import VIEW_COLUMNS, create_views
from mlflow_llmops.core.keys import LLM_SPAN_TYPES
from mlflow_llmops.errors import StoreError

_logger = logging.getLogger(__name__)

#: View name -> folder in the export.
EXPORT_TABLES = {
    "llmops_traces": "traces",
    "llmops_spans": "spans",
    "llmops_assessments": "assessments",
    "llmops_costs": "costs",
}
#: Column used to pick a row's day partition.
_DAY_COLUMN = {
    "llmops_traces": "timestamp_ms",
    "llmops_spans": "start_ms",
    "llmops_assessments": "trace_timestamp_ms",
    "llmops_costs": "timestamp_ms",
}
DAY_MS = 86_400_000
MANIFEST = "_manifest.json"

_INT = {
    "experiment_id",
    "timestamp_ms",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "unpriced_spans",
    "start_ms",
    "end_ms",
    "reasoning_tokens",
    "created_ms",
    "trace_timestamp_ms",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
}
_FLOAT = {
    "sample_weight",
    "cost_usd",
    "ttft_ms",
    "value_num",
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_write_cost_usd",
    "output_cost_usd",
    "total_cost_usd",
}


def arrow_schema(view: str) -> pa.Schema:
    """The Parquet schema of one view: stable types even when a column is all NULL."""

    def typ(col: str) -> pa.DataType:
        if col in _INT:
            return pa.int64()
        if col in _FLOAT:
            return pa.float64()
        if col == "valid":
            return pa.bool_()
        return pa.string()

    return pa.schema([(c, typ(c)) for c in VIEW_COLUMNS[view]])


def empty_table(view: str) -> pa.Table:
    return arrow_schema(view).empty_table()


def to_arrow(view: str, rows: Sequence[Sequence[Any]] | Sequence[dict[str, Any]]) -> pa.Table:
    schema = arrow_schema(view)
    cols = VIEW_COLUMNS[view]
    if rows and isinstance(rows[0], dict):
        data = {c: [r.get(c) for r in rows] for c in cols}  # type: ignore[union-attr]
    else:
        data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}  # type: ignore[index]
    for c in cols:
        if c in _INT:
            data[c] = [None if v is None else int(v) for v in data[c]]
        elif c in _FLOAT:
            data[c] = [None if v is None else float(v) for v in data[c]]
        elif c == "valid":
            data[c] = [None if v is None else bool(v) for v in data[c]]
        else:
            data[c] = [None if v is None else str(v) for v in data[c]]
    return pa.table(data, schema=schema)


@dataclass
class ExportResult:
    """What one export run wrote."""

    out_dir: Path
    days: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXPORT_TABLES, 0))
    watermark_ms: int | None = None

    def summary(self) -> str:
        counts = ", ".join(f"{EXPORT_TABLES[v]}={n}" for v, n in self.rows.items())
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else "nothing new"
        return f"exported {len(self.days)} day(s) ({span}) to {self.out_dir}: {counts}"


def _read_manifest(out: Path) -> dict[str, Any]:
    p = out / MANIFEST
    if not p.exists():
        return {"version": 1, "watermark_ms": None, "days": []}
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise StoreError(f"{p}: not valid JSON ({e}); delete it to re-export everything") from e
    if data.get("version") != 1:
        raise StoreError(f"{p}: unknown manifest version {data.get('version')!r}")
    return data


def _write_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer(tmp)
    os.replace(tmp, path)


#: Per view, the aggregates whose change marks a day as changed since its export.
_SIGNATURE = {
    "llmops_traces": "COUNT(*), SUM(cost_usd), SUM(unpriced_spans), MAX(timestamp_ms)",
    "llmops_spans": "COUNT(*), SUM(cost_usd), SUM(input_tokens + output_tokens)",
    "llmops_assessments": "COUNT(*), MAX(created_ms), SUM(value_num)",
    "llmops_costs": "COUNT(*), SUM(total_cost_usd), MAX(catalog_version), MIN(catalog_version)",
}


def _sig_value(v: Any) -> Any:
    """JSON-stable: numbers to 9 significant digits (sums differ in the last bits by order)."""
    if v is None or isinstance(v, str):
        return v
    f = float(v)
    return int(f) if f.is_integer() else float(f"{f:.9g}")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def _day_start_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


# --------------------------------------------------------------------------- sources
class _SqlSource:
    def __init__(self, engine: Engine, experiment_ids: Sequence[str] | None) -> None:
        self.engine = engine
        self.experiment_ids = [int(e) for e in experiment_ids] if experiment_ids else None
        create_views(engine)

    def _query(self, sql: str, where: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run ``sql`` with ``{where}`` replaced by ``where`` and the experiment filter."""
        params = dict(params or {})
        if self.experiment_ids:
            where += " AND experiment_id IN :exp"
            params["exp"] = self.experiment_ids
        stmt = sa.text(sql.format(where=where))
        if self.experiment_ids:
            stmt = stmt.bindparams(sa.bindparam("exp", expanding=True))
        with self.engine.connect() as conn:
            return list(conn.execute(stmt, params).all())

    def first_ms(self) -> int | None:
        return self._query("SELECT MIN(timestamp_ms) FROM llmops_traces WHERE {where}", "1 = 1")[0][
            0
        ]

    def signatures(self) -> dict[str, list[Any]]:
        """Per day, a cheap fingerprint of every view's rows (see ``_SIGNATURE``)."""
        out: dict[str, list[Any]] = {}
        for view in EXPORT_TABLES:
            col = _day_expr(view)
            day = f"{col} - {col} % {DAY_MS}"
            sql = f"SELECT {day}, {_SIGNATURE[view]} FROM {view} WHERE {{where}} GROUP BY {day}"
            for d, *sig in self._query(sql, "1 = 1"):
                if d is not None:
                    out.setdefault(_day(int(d)), []).extend([view, *(_sig_value(v) for v in sig)])
        return out

    def rows(self, view: str, lo: int, hi: int) -> list[Sequence[Any]]:
        day = _day_expr(view)
        sql = f"SELECT {', '.join(VIEW_COLUMNS[view])} FROM {view} WHERE {{where}} "
        sql += f"ORDER BY {_DAY_COLUMN[view]}"
        return self._query(sql, f"{day} >= :lo AND {day} < :hi", {"lo": lo, "hi": hi})


def _day_expr(view: str) -> str:
    """The column a row's day comes from (assessments of unknown traces: their own time)."""
    col = _DAY_COLUMN[view]
    return f"COALESCE({col}, created_ms)" if view == "llmops_assessments" else col


class _RestSource:
    """Reads through MLflow's public API: one ``search_traces`` per day, spans included."""

    def __init__(
        self, tracking_uri: str, experiment_ids: Sequence[str] | None, calculator: Any | None
    ) -> None:
        from mlflow import MlflowClient

        from mlflow_llmops.pricing import CostCalculator

        self.client = MlflowClient(tracking_uri)
        self.calculator = calculator or CostCalculator.default()
        if experiment_ids:
            self.experiment_ids = [str(e) for e in experiment_ids]
        else:
            self.experiment_ids = [
                e.experiment_id for e in self.client.search_experiments(max_results=1000)
            ]
        self._rows: dict[str, list[dict[str, Any]]] = {v: [] for v in EXPORT_TABLES}

    def first_ms(self) -> int | None:
        found = self.client.search_traces(
            locations=self.experiment_ids,
            max_results=1,
            order_by=["timestamp_ms ASC"],
            include_spans=False,
        )
        return found[0].info.request_time if found else None

    def prefetch(self, lo: int, hi: int) -> None:
        """Read every trace of the export range in one paginated pass (one request per
        500 traces, not per day), priced once."""
        traces: list[Any] = []
        token = None
        while True:
            page = self.client.search_traces(
                locations=self.experiment_ids,
                filter_string=f"timestamp_ms >= {int(lo)} AND timestamp_ms < {int(hi)}",
                max_results=500,
                page_token=token,
            )
            traces.extend(page)
            token = page.token
            if not token:
                break
        self._rows = rows_from_traces(traces, calculator=self.calculator)

    def rows(self, view: str, lo: int, hi: int) -> list[dict[str, Any]]:
        col = _DAY_COLUMN[view]
        return [
            r
            for r in self._rows[view]
            if lo <= (r[col] if r[col] is not None else r.get("created_ms") or 0) < hi
        ]


def _usage_int(usage: Any, key: str) -> int:
    if isinstance(usage, dict):
        v = usage.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return int(v)
    return 0


@dataclass(frozen=True)
class _TraceContext:
    """What every row of one trace carries."""

    info: Any
    metadata: dict[str, Any]
    exp_id: int | None
    ts: int
    weight: float

    @classmethod
    def of(cls, info: Any) -> _TraceContext:
        md = info.trace_metadata or {}
        raw_weight = md.get("llmops.sample_weight")
        return cls(
            info=info,
            metadata=md,
            exp_id=int(info.experiment_id) if info.experiment_id is not None else None,
            ts=int(info.request_time),
            weight=float(raw_weight) if raw_weight else 1.0,
        )


@dataclass
class _TraceTally:
    """What a trace's spans add up to: its first LLM model and its cost by source."""

    model: Any = None
    llmops_rows: int = 0
    llmops_sum: float | None = None
    mlflow_sum: float | None = None
    unpriced: int = 0

    def cost(self) -> tuple[float | None, str | None]:
        """The trace's cost and its source: ours if we priced any span, else MLflow's."""
        if self.llmops_rows:
            return self.llmops_sum, "llmops"
        if self.mlflow_sum is not None:
            return self.mlflow_sum, "mlflow"
        return None, None


def rows_from_traces(
    traces: Iterable[Any], *, calculator: Any | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The four views' rows computed from MLflow ``Trace`` objects (``search_traces`` /
    ``get_trace``), for stores without SQL access. With a ``CostCalculator`` every LLM
    span is priced by it (cost source ``llmops``); otherwise MLflow's own span cost is
    used (``mlflow``)."""
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in EXPORT_TABLES}
    priced_at = datetime.now(UTC)
    for tr in traces:
        _add_trace_rows(tr, calculator, priced_at, out)
    return out


def _add_trace_rows(
    tr: Any, calculator: Any | None, priced_at: datetime, out: dict[str, list[dict[str, Any]]]
) -> None:
    """Append one trace's rows to every view in ``out``."""
    ctx = _TraceContext.of(tr.info)
    tally = _TraceTally()
    for s in sorted(tr.data.spans, key=lambda s: (s.start_time_ns, s.span_id)):
        attrs = s.attributes or {}
        if s.span_type in LLM_SPAN_TYPES and tally.model is None and attrs.get("mlflow.llm.model"):
            tally.model = attrs.get("mlflow.llm.model")
        cost, source, status = _span_cost(
            ctx, s, attrs, calculator, priced_at, tally, out["llmops_costs"]
        )
        out["llmops_spans"].append(_span_row(ctx, s, attrs, cost, source, status))
    out["llmops_traces"].append(_trace_row(ctx, tally))
    for a in getattr(ctx.info, "assessments", None) or []:
        out["llmops_assessments"].append(_assessment_row(a, ctx.exp_id, ctx.ts))


def _span_cost(
    ctx: _TraceContext,
    s: Any,
    attrs: dict[str, Any],
    calculator: Any | None,
    priced_at: datetime,
    tally: _TraceTally,
    costs: list[dict[str, Any]],
) -> tuple[float | None, str | None, str | None]:
    """A span's (cost, cost source, cost status): priced by ``calculator`` when the span
    is an LLM call it can read (its cost row appended to ``costs``), else MLflow's cost."""
    from mlflow_llmops.pricing.spans import span_from_attributes

    ls = None
    if calculator is not None:
        ls = span_from_attributes(ctx.info.trace_id, s.span_id, str(ctx.exp_id), ctx.ts, attrs)
    if ls is not None:
        return _priced_span_cost(ctx, ls, calculator, priced_at, tally, costs)
    mcost = attrs.get("mlflow.llm.cost")
    if isinstance(mcost, dict) and mcost.get("total_cost") is not None:
        cost = float(mcost["total_cost"])
        tally.mlflow_sum = (tally.mlflow_sum or 0.0) + cost
        return cost, "mlflow", None
    return None, None, None


def _priced_span_cost(
    ctx: _TraceContext,
    ls: Any,
    calculator: Any,
    priced_at: datetime,
    tally: _TraceTally,
    costs: list[dict[str, Any]],
) -> tuple[float | None, str, str]:
    """Price one LLM span with ``calculator``, as the re-pricing job's cost row."""
    from mlflow_llmops.pricing.job import cost_row

    r = None
    if ls.usage is not None:
        r = calculator.cost(
            model=ls.model,
            provider=ls.provider,
            usage=ls.usage,
            service_tier=ls.service_tier,
            at=ctx.ts,
        )
    row = cost_row(ls, r, calculator.catalog_version, priced_at)
    costs.append({**row, "timestamp_ms": ctx.ts, "sample_weight": ctx.weight})
    tally.llmops_rows += 1
    tally.unpriced += row["status"] == "unpriced"
    cost: float | None = None
    if row["total_cost_usd"] is not None:
        cost = float(row["total_cost_usd"])
        tally.llmops_sum = (tally.llmops_sum or 0.0) + cost
    return cost, "llmops", row["status"]


def _span_row(
    ctx: _TraceContext,
    s: Any,
    attrs: dict[str, Any],
    cost: float | None,
    source: str | None,
    status: str | None,
) -> dict[str, Any]:
    """One ``llmops_spans`` row."""
    usage = attrs.get("mlflow.chat.tokenUsage")
    end = s.end_time_ns
    ttft = attrs.get("llmops.ttft_ms")
    return {
        "trace_id": ctx.info.trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_id,
        "experiment_id": ctx.exp_id,
        "name": s.name,
        "span_type": s.span_type,
        "status": s.status.status_code.value if s.status else None,
        "start_ms": s.start_time_ns // 1_000_000,
        "end_ms": end // 1_000_000 if end is not None else None,
        "latency_ms": (end - s.start_time_ns) // 1_000_000 if end else None,
        "model": attrs.get("mlflow.llm.model"),
        "provider": attrs.get("mlflow.llm.provider"),
        "input_tokens": _usage_int(usage, "input_tokens"),
        "output_tokens": _usage_int(usage, "output_tokens"),
        "cache_read_tokens": _usage_int(usage, "cache_read_input_tokens"),
        "cache_write_tokens": _usage_int(usage, "cache_creation_input_tokens"),
        "reasoning_tokens": int(attrs.get("gen_ai.usage.reasoning.output_tokens") or 0),
        "ttft_ms": float(ttft) if ttft is not None else None,
        "cost_usd": cost,
        "cost_source": source,
        "cost_status": status,
        "sample_weight": ctx.weight,
    }


def _trace_row(ctx: _TraceContext, tally: _TraceTally) -> dict[str, Any]:
    """One ``llmops_traces`` row, after its spans were tallied."""
    info, md = ctx.info, ctx.metadata
    usage = info.token_usage or {}
    trace_cost, source = tally.cost()
    return {
        "trace_id": info.trace_id,
        "experiment_id": ctx.exp_id,
        "timestamp_ms": ctx.ts,
        "status": info.state.value,
        "latency_ms": info.execution_duration,
        "trace_name": (info.tags or {}).get("mlflow.traceName"),
        "user_id": md.get("mlflow.trace.user"),
        "session_id": md.get("mlflow.trace.session"),
        "task_type": md.get("llmops.task_type"),
        "route": md.get("llmops.route"),
        "tenant": md.get("llmops.tenant"),
        "environment": md.get("llmops.environment"),
        "service": md.get("llmops.service"),
        "service_version": md.get("llmops.service_version"),
        "model": tally.model,
        "input_tokens": _usage_int(usage, "input_tokens"),
        "output_tokens": _usage_int(usage, "output_tokens"),
        "total_tokens": _usage_int(usage, "total_tokens"),
        "cache_read_tokens": _usage_int(usage, "cache_read_input_tokens"),
        "cache_write_tokens": _usage_int(usage, "cache_creation_input_tokens"),
        "sample_weight": ctx.weight,
        "cost_usd": trace_cost,
        "cost_source": source,
        "unpriced_spans": tally.unpriced,
    }


def _assessment_row(a: Any, exp_id: int | None, ts: int) -> dict[str, Any]:
    fb = getattr(a, "feedback", None)
    ex = getattr(a, "expectation", None)
    value = fb.value if fb is not None else (ex.value if ex is not None else None)
    if isinstance(value, bool):
        num: float | None = 1.0 if value else 0.0
    elif isinstance(value, int | float) and math.isfinite(float(value)):
        num = float(value)
    elif isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        num = 1.0 if value.strip().lower() == "yes" else 0.0
    else:
        num = None
    err = getattr(fb, "error", None) if fb is not None else None
    src = a.source
    return {
        "assessment_id": a.assessment_id,
        "trace_id": a.trace_id,
        "experiment_id": exp_id,
        "name": a.name,
        "assessment_type": "feedback" if fb is not None else "expectation",
        "value_num": num,
        "value_json": json.dumps(value),
        "source_type": src.source_type if src else None,
        "source_id": src.source_id if src else None,
        "created_ms": a.create_time_ms,
        "trace_timestamp_ms": ts,
        "rationale": a.rationale,
        "error": json.dumps(err.to_dictionary()) if err is not None else None,
        "valid": a.valid if a.valid is not None else True,
        "scorer_version": (a.metadata or {}).get("llmops.scorer_version"),
    }


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportParams:
    """The inputs of one export run (the arguments of :func:`export_parquet`)."""

    source: Engine | str
    out_dir: Path
    now: datetime
    experiment_ids: Sequence[str] | None = None
    since: datetime | None = None
    lookback_days: int = 2
    full: bool = False
    progress: Callable[[str], None] | None = None
    calculator: Any | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @property
    def now_ms(self) -> int:
        """``now`` in epoch milliseconds: the export's upper bound."""
        return int(self.now.timestamp() * 1000)


@dataclass
class _DayPlan:
    """The days one run exports, and the per-day signatures to record with them."""

    days: list[date]
    signatures: dict[str, list[Any]] = field(default_factory=dict)
    old_signatures: dict[str, list[Any]] = field(default_factory=dict)


def _open_source(p: ExportParams) -> _SqlSource | _RestSource:
    """The SQL source for an engine, the REST source for an MLflow server's URI."""
    source = p.source
    if isinstance(source, Engine):
        return _SqlSource(source, p.experiment_ids)
    if isinstance(source, str) and source.startswith(("http://", "https://", "databricks")):
        return _RestSource(source, p.experiment_ids, p.calculator)
    raise StoreError(
        f"cannot export from {source!r}: give a database URL/engine of the tracking store "
        "or the http(s):// URI of an MLflow server"
    )


def _start_ms(p: ExportParams, manifest: dict[str, Any], src: Any) -> int | None:
    """Where this run starts: ``since``, else the watermark minus the lookback, else the
    first trace (None: the source has no trace)."""
    if p.since is not None:
        return int(p.since.timestamp() * 1000)
    if manifest["watermark_ms"] is not None:
        return int(manifest["watermark_ms"]) - p.lookback_days * DAY_MS
    first = src.first_ms()
    return None if first is None else int(first)


def _plan_days(p: ExportParams, manifest: dict[str, Any], src: Any, start_ms: int) -> _DayPlan:
    """Every day from ``start_ms`` to ``now``, after the older exported days whose
    content changed at a SQL source (or whose rows are gone there)."""
    d = datetime.fromtimestamp(start_ms / 1000, UTC).date()
    if hasattr(src, "prefetch"):
        src.prefetch(_day_start_ms(d), p.now_ms + 1)
    last = datetime.fromtimestamp(p.now_ms / 1000, UTC).date()
    plan = _DayPlan(days=[], old_signatures=manifest.get("signatures") or {})
    if hasattr(src, "signatures"):
        plan.signatures = sigs = src.signatures()
        old, done = plan.old_signatures, set(manifest["days"])
        changed = {
            day for day in set(sigs) | set(old) if day in done and sigs.get(day) != old.get(day)
        }
        plan.days = sorted(date.fromisoformat(x) for x in changed if date.fromisoformat(x) < d)
    while d <= last:
        plan.days.append(d)
        d += timedelta(days=1)
    return plan


def _write_day(src: Any, out: Path, d: date, lo: int, hi: int, result: ExportResult) -> None:
    """Write each view's rows of one day to its partition (removed when now empty)."""
    name = d.isoformat()
    for view, folder in EXPORT_TABLES.items():
        table = to_arrow(view, src.rows(view, lo, hi))
        target = out / folder / f"day={name}" / "part.parquet"
        if table.num_rows == 0:
            if target.exists():
                target.unlink()  # the day's rows are gone at the source
            continue
        _write_atomic(target, lambda p, t=table: pq.write_table(t, p))
        result.rows[view] += table.num_rows


def _record_day(
    out: Path,
    manifest: dict[str, Any],
    done: set[str],
    name: str,
    hi: int,
    now_ms: int,
    plan: _DayPlan,
) -> None:
    """Mark one day exported in the manifest and write it atomically."""
    done.add(name)
    # The watermark only moves over complete days: today is exported again next run.
    manifest["watermark_ms"] = max(manifest["watermark_ms"] or 0, min(hi, now_ms))
    manifest["days"] = sorted(done)
    if plan.signatures or plan.old_signatures:
        manifest.setdefault("signatures", {})
        if name in plan.signatures:
            manifest["signatures"][name] = plan.signatures[name]
        else:
            manifest["signatures"].pop(name, None)
    _write_atomic(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))


def run_export(p: ExportParams) -> ExportResult:
    """Resolve the days, then read, convert and write each one, recording it in the
    manifest as it is done (so an interrupted run resumes after the last day written)."""
    out = p.out_dir
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"version": 1, "watermark_ms": None, "days": []} if p.full else _read_manifest(out)
    src = _open_source(p)
    start_ms = _start_ms(p, manifest, src)
    if start_ms is None:
        return ExportResult(out, watermark_ms=None)
    result = ExportResult(out)
    plan = _plan_days(p, manifest, src, start_ms)
    done = set(manifest["days"])
    for d in plan.days:
        lo = _day_start_ms(d)
        hi = min(lo + DAY_MS, p.now_ms + 1)
        _write_day(src, out, d, lo, hi, result)
        result.days.append(d.isoformat())
        _record_day(out, manifest, done, d.isoformat(), hi, p.now_ms, plan)
        if p.progress:
            p.progress(d.isoformat())
    result.watermark_ms = manifest["watermark_ms"]
    return result


def export_parquet(
    source: Engine | str,
    out_dir: str | Path,
    *,
    now: datetime,
    experiment_ids: Sequence[str] | None = None,
    since: datetime | None = None,
    lookback_days: int = 2,
    full: bool = False,
    progress: Callable[[str], None] | None = None,
    calculator: Any | None = None,
) -> ExportResult:
    """Export days from the manifest's watermark (minus ``lookback_days``), or from
    ``since``, or from the first trace, up to ``now``; return what was written.

    ``source`` is an engine on the tracking database or an MLflow tracking URI
    (``http://...``) read through the public API, whose spans are priced with
    ``calculator`` (default: ``CostCalculator.default()``). ``full=True`` ignores the
    watermark. The stages are in :func:`run_export`.
    """
    params = ExportParams(
        source,
        Path(out_dir),
        now,
        experiment_ids=experiment_ids,
        since=since,
        lookback_days=lookback_days,
        full=full,
        progress=progress,
        calculator=calculator,
    )
    return run_export(params)


def read_export(out_dir: str | Path, con: Any | None = None) -> Any:
    """A DuckDB connection with the four views over the export at ``out_dir``."""
    import duckdb

    con = con or duckdb.connect()
    create_views(con, parquet_dir=out_dir)
    return con
