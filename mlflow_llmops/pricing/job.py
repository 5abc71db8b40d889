"""The re-pricing job: price every LLM span with one catalog version, keep history.

Reads spans with SQL on MLflow's ``spans`` table when the tracking store is a
database (``content`` holds the span JSON), or with ``search_traces`` when it
is an HTTP server without database access. Writes one row per LLM span to
``llmops_span_costs`` (the latest pricing) and records each run, its catalog
version and the per-model difference to the previous pricing in the state
store. Idempotent: a span already priced with the current catalog version is
skipped. Incremental: a watermark on trace time (minus a look-back for late
traces) limits the scan; when the catalog version changes, the whole history
is re-priced and the difference is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mlflow_llmops.errors import StoreError
from mlflow_llmops.pricing.calculator import (
    BUCKETS,
    FRAME_TOKEN_COLUMNS,
    CostCalculator,
    CostResult,
)
from mlflow_llmops.pricing.config import PricingConfig
from mlflow_llmops.pricing.spans import (
    PRICING_ATTRIBUTES,
    LlmSpan,
    decode_attr,
    span_from_attributes,
)
from mlflow_llmops.pricing.tables import (
    ANALYTICS_MIGRATIONS,
    refresh_trace_costs,
    span_costs,
    trace_costs,
)
from mlflow_llmops.pricing.usage import TokenUsage
from mlflow_llmops.statestore.state import Migration, StateStore, create_tables, make_engine

_logger = logging.getLogger(__name__)

pricing_metadata = sa.MetaData()

#: Every catalog version the job has priced with (what it was built from).
price_versions = sa.Table(
    "llmops_price_versions",
    pricing_metadata,
    sa.Column("catalog_version", sa.String(64), primary_key=True),
    sa.Column("sources", sa.Text, nullable=False),  # JSON [[name, sha256], ...]
    sa.Column("entries", sa.Integer, nullable=False),
    sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=False),
)

#: One row per run of the job: what changed, per model, against the previous pricing.
reprice_runs = sa.Table(
    "llmops_reprice_runs",
    pricing_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("catalog_version", sa.String(64), nullable=False),
    sa.Column("previous_version", sa.String(64), nullable=True),
    sa.Column("full_history", sa.Boolean, nullable=False),
    sa.Column("spans_seen", sa.Integer, nullable=False),
    sa.Column("spans_written", sa.Integer, nullable=False),
    sa.Column("spans_changed", sa.Integer, nullable=False),
    sa.Column("spans_unpriced", sa.Integer, nullable=False),
    sa.Column("cost_before_usd", sa.Text, nullable=True),  # exact decimal text
    sa.Column("cost_after_usd", sa.Text, nullable=True),
    sa.Column("diff", sa.Text, nullable=False),  # JSON list of ModelDiff
    sa.Index("ix_llmops_reprice_runs_scope", "scope", "id"),
)

PRICING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "pricing",
        1,
        "price versions and re-pricing runs",
        create_tables(price_versions, reprice_runs),
    ),
)

_Q12 = Decimal("0.000000000001")


@dataclass
class ModelDiff:
    """How the cost of one model's spans moved between the stored and the new pricing."""

    model: str | None
    provider: str | None
    spans: int = 0
    new_spans: int = 0
    changed_spans: int = 0
    before_usd: Decimal = Decimal(0)  # stored total of the re-priced spans that had a row
    after_usd: Decimal = Decimal(0)  # new total of those same spans
    new_usd: Decimal = Decimal(0)  # total of spans priced for the first time

    @property
    def delta_usd(self) -> Decimal:
        return self.after_usd - self.before_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "spans": self.spans,
            "new_spans": self.new_spans,
            "changed_spans": self.changed_spans,
            "before_usd": str(self.before_usd),
            "after_usd": str(self.after_usd),
            "delta_usd": str(self.delta_usd),
            "new_usd": str(self.new_usd),
        }


@dataclass
class RepriceResult:
    """What one run of the re-pricing job did."""

    catalog_version: str
    previous_version: str | None
    full_history: bool
    source: str  # "sql" | "rest"
    spans_seen: int = 0
    spans_written: int = 0
    spans_skipped: int = 0  # already priced with this catalog version
    spans_changed: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    cost_by_model: dict[str, Decimal] = field(default_factory=dict)  # spans written this run
    unpriced: dict[tuple[str | None, str | None], int] = field(default_factory=dict)
    diffs: list[ModelDiff] = field(default_factory=list)
    watermark_ms: int | None = None
    run_id: int | None = None

    @property
    def total_usd(self) -> Decimal:
        return sum(self.cost_by_model.values(), Decimal(0))

    def summary(self) -> str:
        s = self.status_counts
        return (
            f"catalog {self.catalog_version} (previous {self.previous_version or '-'}): "
            f"{self.spans_seen} LLM spans seen, {self.spans_written} written, "
            f"{self.spans_skipped} already up to date, {self.spans_changed} changed cost; "
            f"priced {s.get('priced', 0)}, partial {s.get('partial', 0)}, "
            f"unpriced {s.get('unpriced', 0)}; total ${self.total_usd:.6f}"
        )


#: A span's stored pricing: (catalog version, status, total cost), by (trace id, span id).
Stored = dict[tuple[str, str], tuple[str, str, Decimal | None]]


def _iter_sql_spans(
    engine: Engine,
    experiment_ids: Sequence[str] | None,
    lo_ms: int | None,
    hi_ms: int | None,
    batch_size: int,
    pick_in_db: bool = True,
    join_stored: bool = False,
) -> Iterator[tuple[list[LlmSpan], Stored | None]]:
    """Batches of LLM spans in scope, each with its spans' stored pricing when
    ``join_stored`` (PostgreSQL, ``llmops_span_costs`` in the tracking database: read in
    the same pass), else None (the caller looks it up)."""
    md = sa.MetaData()
    try:
        spans = sa.Table("spans", md, autoload_with=engine)
        traces = sa.Table("trace_info", md, autoload_with=engine)
    except sa.exc.NoSuchTableError as e:
        raise StoreError(
            f"{engine.url.render_as_string(hide_password=True)} has no MLflow table {e}; "
            "is this the MLflow tracking database (run mlflow once against it)?"
        ) from None
    ts = traces.c.timestamp_ms
    rid = traces.c.request_id
    in_scope = []
    if experiment_ids:
        in_scope.append(traces.c.experiment_id.in_([int(e) for e in experiment_ids]))
    if lo_ms is not None:
        in_scope.append(ts >= lo_ms)
    if hi_ms is not None:
        in_scope.append(ts < hi_ms)
    has_usage = sa.or_(
        spans.c.content.like("%mlflow.chat.tokenUsage%"),
        spans.c.content.like("%gen_ai.usage.%"),
    )
    dialect = engine.dialect.name if pick_in_db else "python"
    picked = _pricing_attributes(dialect, spans.c.content)
    cols = (
        spans.c.trace_id,
        spans.c.span_id,
        spans.c.experiment_id,
        ts,
        spans.c.model_name,
        spans.c.model_provider,
    )
    if dialect in ("postgresql", "python") and engine.dialect.name == "postgresql":
        # One join over the whole scope through a server-side cursor: paging made the
        # planner scan ``spans`` once per page on all but the largest stores. The read
        # has its own snapshot, so the job's writes meanwhile do not disturb it; each
        # span comes once, so the stored pricing joined in is the one before this run.
        joined = spans.join(traces, rid == spans.c.trace_id)
        extra: tuple[sa.ColumnElement, ...] = ()
        if join_stored:
            sc = span_costs.c
            joined = joined.outerjoin(
                span_costs, sa.and_(sc.trace_id == spans.c.trace_id, sc.span_id == spans.c.span_id)
            )
            extra = (sc.catalog_version, sc.status, sc.total_cost_usd)
        q = sa.select(*cols, *extra, picked).select_from(joined).where(has_usage, *in_scope)
        done: set[int] = set()
        if dialect == "postgresql":
            try:
                with engine.connect() as conn:
                    res = conn.execution_options(stream_results=True, max_row_buffer=batch_size)
                    for rows in res.execute(q).partitions(batch_size):
                        done.update(hash((r[0], r[1])) for r in rows)
                        yield _stored_split(rows, dialect, join_stored)
                return
            except sa.exc.DataError as e:  # a span whose JSON the database cannot read
                _logger.warning(
                    "span JSON the database cannot read (%s); parsing in Python", e.orig
                )
        raw = q.with_only_columns(*cols, *extra, spans.c.content)
        with engine.connect() as conn:
            res = conn.execution_options(stream_results=True, max_row_buffer=batch_size)
            for rows in res.execute(raw).partitions(batch_size):
                rows = [r for r in rows if hash((r[0], r[1])) not in done]
                yield _stored_split(rows, "python", join_stored)
        return
    # Elsewhere (SQLite: a long read would block the job's own writes to the same file):
    # page over traces by (timestamp_ms, request_id), an index of MLflow's, then read the
    # LLM spans of each page by trace id, so a page costs its own size, not the history's.
    tq = sa.select(rid, ts).where(*in_scope).order_by(ts, rid).limit(batch_size)
    sq = sa.select(*cols[:3], *cols[4:], picked).where(
        spans.c.trace_id.in_(sa.bindparam("ids", expanding=True)), has_usage
    )
    last: tuple[int, str] | None = None
    while True:
        page = (
            tq
            if last is None
            else tq.where(sa.or_(ts > last[0], sa.and_(ts == last[0], rid > last[1])))
        )
        with engine.connect() as conn:
            trace_rows = conn.execute(page).all()
            if not trace_rows:
                return
            when = dict(trace_rows)
            params = {"ids": list(when)}
            try:
                rows = conn.execute(sq, params).all()
                how = dialect
            except sa.exc.DBAPIError as e:  # a span whose JSON the database cannot read
                if dialect == "python" or "json" not in str(e.orig).lower():
                    raise
                _logger.warning(
                    "span JSON the database cannot read (%s); parsing in Python", e.orig
                )
                conn.rollback()
                how = "python"
                raw = sq.with_only_columns(*sq.selected_columns[:-1], spans.c.content)
                rows = conn.execute(raw, params).all()
        yield _llm_spans(((t, s, x, when[t], m, p, c) for t, s, x, m, p, c in rows), how), None
        last = (trace_rows[-1][1], trace_rows[-1][0])
        if len(trace_rows) < batch_size:
            return


def _stored_split(
    rows: Sequence[Sequence[Any]], how: str, joined: bool
) -> tuple[list[LlmSpan], Stored | None]:
    """The spans of ``rows`` and, when the stored pricing was joined in, that pricing."""
    if not joined:
        return _llm_spans(rows, how), None
    stored: Stored = {
        (r[0], r[1]): (r[6], r[7], None if r[8] is None else _q(_dec(r[8])))
        for r in rows
        if r[6] is not None
    }
    return _llm_spans([(*r[:6], r[9]) for r in rows], how), stored


def _dec(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


_T = TypeVar("_T")


class _ReadFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _read_ahead(batches: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``batches``, produced in a thread up to ``depth`` ahead: the database reads and
    the spans are decoded while the previous batch is priced and written (the waits on
    either server release the GIL). Closing this closes ``batches`` in its thread."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not put(b):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_ReadFailed(e))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=produce, name="llmops-reprice-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, _ReadFailed):
                raise item.error
            yield item
    finally:
        stop.set()
        t.join()


def _llm_spans(rows: Iterable[Sequence[Any]], how: str) -> list[LlmSpan]:
    out: list[LlmSpan] = []
    for tid, sid, exp, t_ms, model_name, model_provider, content in rows:
        attrs = _decode_pricing_attributes(how, content)
        s = span_from_attributes(
            tid, sid, str(exp), t_ms, attrs, model_col=model_name, provider_col=model_provider
        )
        if s is not None:
            out.append(s)
    return out


def _pricing_attributes(dialect: str, content: sa.ColumnElement) -> sa.ColumnElement:
    """Only the attributes pricing reads, picked out of the span JSON by the database.

    A span's ``content`` holds its inputs and outputs too; parsing all of it in Python
    was most of the job's time. SQLite and PostgreSQL return a small JSON array instead
    (one value per :data:`PRICING_ATTRIBUTES` key, null where absent).
    """
    if dialect == "sqlite":
        return sa.func.json_extract(content, *(f'$.attributes."{k}"' for k in PRICING_ATTRIBUTES))
    if dialect == "postgresql":
        picks = ", ".join(f"a -> '{k}'" for k in PRICING_ATTRIBUTES)
        # OFFSET 0 keeps the sub-select whole: inlined, it would parse the JSON per key
        col = content.compile(dialect=sa.dialects.postgresql.dialect())
        return sa.literal_column(
            f"(SELECT jsonb_build_array({picks}) FROM (SELECT CAST({col} AS jsonb) -> 'attributes'"
            " AS a OFFSET 0) AS picked)"
        )
    return content


def _decode_pricing_attributes(dialect: str, value: Any) -> dict[str, Any]:
    if dialect in ("sqlite", "postgresql"):
        picked = json.loads(value) if isinstance(value, str) else value
        if not isinstance(picked, list):
            return {}
        return {
            k: decode_attr(v)
            for k, v in zip(PRICING_ATTRIBUTES, picked, strict=True)
            if v is not None
        }
    try:
        raw = json.loads(value).get("attributes") or {}
    except (ValueError, AttributeError, TypeError):
        raw = {}
    return {k: decode_attr(raw[k]) for k in PRICING_ATTRIBUTES if k in raw}


def _iter_rest_spans(
    tracking_uri: str,
    experiment_ids: Sequence[str] | None,
    lo_ms: int | None,
    hi_ms: int | None,
    batch_size: int,
) -> Iterator[tuple[list[LlmSpan], Stored | None]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if not experiment_ids:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    filters = []
    if lo_ms is not None:
        filters.append(f"trace.timestamp_ms >= {int(lo_ms)}")
    if hi_ms is not None:
        filters.append(f"trace.timestamp_ms < {int(hi_ms)}")
    token = None
    while True:
        page = client.search_traces(
            locations=list(experiment_ids),
            filter_string=" AND ".join(filters) or None,
            max_results=min(batch_size, 500),
            order_by=["timestamp_ms ASC"],
            page_token=token,
            include_spans=True,
        )
        out: list[LlmSpan] = []
        for trace in page:
            info = trace.info
            exp = getattr(info, "experiment_id", None) or ""
            for span in trace.data.spans:
                s = span_from_attributes(
                    info.trace_id, span.span_id, str(exp), info.timestamp_ms, span.attributes or {}
                )
                if s is not None:
                    out.append(s)
        yield out, None
        token = page.token
        if not token:
            return


# ----------------------------------------------------------------------------
# Writing costs
# ----------------------------------------------------------------------------
def _q(d: Decimal | None) -> Decimal | None:
    return None if d is None else d.quantize(_Q12, rounding=ROUND_HALF_EVEN)


def _token_columns(u: TokenUsage) -> dict[str, int]:
    """The token columns of a cost row: billing buckets (input here is uncached input)."""
    return {
        "input_tokens": u.input + u.audio_input + u.image_input,
        "cache_read_tokens": u.cache_read,
        "cache_write_5m_tokens": u.cache_write_5m,
        "cache_write_1h_tokens": u.cache_write_1h,
        "output_tokens": u.output + u.audio_output,
        "reasoning_tokens": u.reasoning,
    }


def cost_row(span: LlmSpan, r: CostResult | None, version: str, now: datetime) -> dict[str, Any]:
    """The ``llmops_span_costs`` row of one span (``r`` None: usage unreadable)."""
    u = span.usage or TokenUsage()
    bd = r.breakdown if r is not None else {}
    missing = r.unpriced_tokens if r is not None else {}
    priced = r is not None and r.total is not None

    def part(*buckets: str) -> Decimal | None:
        if not priced:
            return None
        if any(b in missing for b in buckets) and not any(b in bd for b in buckets):
            return None
        return _q(sum((bd.get(b, Decimal(0)) for b in buckets), Decimal(0)))

    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "experiment_id": span.experiment_id,
        "trace_timestamp_ms": span.trace_timestamp_ms,
        "model": span.model,
        "provider": span.provider,
        "matched_entry": r.matched_entry if r is not None else None,
        "service_tier": (r.service_tier if r is not None and r.service_tier else span.service_tier),
        "status": r.status if r is not None else "unpriced",
        "currency": "USD",
        **_token_columns(u),
        "input_cost_usd": part("input"),
        "cache_read_cost_usd": part("cache_read"),
        "cache_write_cost_usd": part("cache_write_5m", "cache_write_1h"),
        "output_cost_usd": part("output", "reasoning"),
        "other_cost_usd": part("audio_input", "audio_output", "image_input"),
        "total_cost_usd": _q(r.total) if priced else None,
        "catalog_version": version,
        "priced_at": now,
    }


_PART_BUCKETS = {
    "input_cost_usd": ("input",),
    "cache_read_cost_usd": ("cache_read",),
    "cache_write_cost_usd": ("cache_write_5m", "cache_write_1h"),
    "output_cost_usd": ("output", "reasoning"),
    "other_cost_usd": ("audio_input", "audio_output", "image_input"),
}
_PART_PUSD = {
    "input_cost_usd": "input_cost_pusd",
    "cache_read_cost_usd": "cache_read_cost_pusd",
    "cache_write_cost_usd": "cache_write_cost_pusd",
    "output_cost_usd": "output_cost_pusd",
    "other_cost_usd": "other_cost_pusd",
}
_PART_MASK = {
    col: sum(1 << BUCKETS.index(b) for b in buckets) for col, buckets in _PART_BUCKETS.items()
}


def _usd(pusd: int) -> Decimal:
    return Decimal(pusd).scaleb(-12)


def price_spans(
    calc: CostCalculator, spans: Sequence[LlmSpan], version: str, now: datetime
) -> list[dict[str, Any]]:
    """The ``llmops_span_costs`` rows of ``spans``, priced in one vectorised pass.

    Row for row equal to ``cost_row(s, calc.cost(...), ...)`` (a property test holds
    them equal); rates finer than a pico-dollar per token go through the scalar path.
    """
    import numpy as np
    import pandas as pd

    rows: list[dict[str, Any] | None] = [None] * len(spans)
    idx = [i for i, s in enumerate(spans) if s.usage is not None]
    for i, s in enumerate(spans):
        if s.usage is None:
            rows[i] = cost_row(s, None, version, now)
    if not idx:
        return rows  # type: ignore[return-value]
    usages = [spans[i].usage for i in idx]
    frame = pd.DataFrame(
        {
            "model": [spans[i].model for i in idx],
            "provider": [spans[i].provider for i in idx],
            "service_tier": [spans[i].service_tier for i in idx],
            "timestamp_ms": np.fromiter((spans[i].trace_timestamp_ms for i in idx), np.int64),
            **{
                col: np.fromiter((getattr(u, b) for u in usages), np.int64, len(usages))
                for b, col in FRAME_TOKEN_COLUMNS.items()
            },
        }
    )
    priced = calc.cost_frame(frame, detail=True)
    status = priced["status"].astype(object).to_numpy()
    entry = priced["matched_entry"].astype(object).to_numpy()
    match_key = priced["match_key"].astype(object).to_numpy()
    tier = priced["service_tier_applied"].astype(object).to_numpy()
    priced_bits = priced["priced_bits"].to_numpy().tolist()
    missing_bits = priced["missing_bits"].to_numpy().tolist()
    inexact = np.asarray(priced["inexact"], dtype=bool).tolist()
    total = priced["total_cost_pusd"].fillna(0).to_numpy(dtype=np.int64).tolist()
    parts = {col: priced[p].to_numpy().tolist() for col, p in _PART_PUSD.items()}
    for k, i in enumerate(idx):
        s = spans[i]
        u = usages[k]
        if inexact[k]:
            r = calc.cost(
                model=s.model,
                provider=s.provider,
                usage=u,
                service_tier=s.service_tier,
                at=s.trace_timestamp_ms,
            )
            rows[i] = cost_row(s, r, version, now)
            continue
        st = status[k]
        ok = st != "unpriced"
        row = {
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "experiment_id": s.experiment_id,
            "trace_timestamp_ms": s.trace_timestamp_ms,
            "model": s.model,
            "provider": s.provider,
            "matched_entry": entry[k]
            if isinstance(entry[k], str)
            else (match_key[k] if isinstance(match_key[k], str) else None),
            "service_tier": tier[k] if isinstance(tier[k], str) and tier[k] else s.service_tier,
            "status": st,
            "currency": "USD",
            **_token_columns(u),
        }
        pb, mb = priced_bits[k], missing_bits[k]
        for col, mask in _PART_MASK.items():
            if not ok or (mb & mask and not pb & mask):
                row[col] = None
            else:
                row[col] = _usd(parts[col][k])
        row["total_cost_usd"] = _usd(total[k]) if ok else None
        row["catalog_version"] = version
        row["priced_at"] = now
        rows[i] = row
    return rows  # type: ignore[return-value]


def _upsert(
    conn: Connection, rows: list[dict[str, Any]], bulk: bool = True, new: bool = False
) -> None:
    """Write cost rows, replacing stored ones, and their traces' ``llmops_trace_costs``;
    ``new``: none of them is stored (as far as the caller knows: a row written meanwhile
    is still replaced)."""
    if not rows:
        return
    _write_rows(conn, rows, bulk, new)
    refresh_trace_costs(conn, {r["trace_id"] for r in rows})


def _write_rows(conn: Connection, rows: list[dict[str, Any]], bulk: bool, new: bool) -> None:
    dialect = conn.dialect.name if bulk else "generic"
    keys = ("trace_id", "span_id")
    cols = [c.name for c in span_costs.c]
    names = ", ".join(cols)
    update = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
    upsert = f"ON CONFLICT (trace_id, span_id) DO UPDATE SET {update}"
    if dialect == "sqlite":  # one executemany of plain tuples: no per-row statement building
        procs = [
            span_costs.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            for c in cols
        ]
        data = [
            tuple(
                v if p is None or v is None else p(v)
                for p, v in zip(procs, map(r.get, cols), strict=True)
            )
            for r in rows
        ]
        marks = ", ".join("?" * len(cols))
        conn.exec_driver_sql(
            f"INSERT INTO {span_costs.name} ({names}) VALUES ({marks}) {upsert}", data
        )
        return
    if dialect == "postgresql" and conn.dialect.driver == "psycopg":  # COPY, then one upsert
        with conn.connection.driver_connection.cursor() as cur:
            if new:  # none stored (a first pricing): COPY straight in, half the server's work
                import psycopg

                cur.execute("SAVEPOINT llmops_copy")
                try:
                    with cur.copy(f"COPY {span_costs.name} ({names}) FROM STDIN") as copy:
                        for r in rows:
                            copy.write_row(tuple(map(r.get, cols)))
                    cur.execute("RELEASE SAVEPOINT llmops_copy")
                    return
                except psycopg.errors.UniqueViolation:  # written meanwhile: upsert after all
                    cur.execute("ROLLBACK TO SAVEPOINT llmops_copy")
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS _llmops_span_costs_in "
                f"(LIKE {span_costs.name}) ON COMMIT DELETE ROWS"
            )
            with cur.copy(f"COPY _llmops_span_costs_in ({names}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(tuple(map(r.get, cols)))
            cur.execute(
                f"INSERT INTO {span_costs.name} ({names}) "
                f"SELECT {names} FROM _llmops_span_costs_in {upsert}"
            )
        return
    if conn.dialect.name in ("sqlite", "postgresql"):
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(span_costs)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys),
            set_={c.name: stmt.excluded[c.name] for c in span_costs.c if c.name not in keys},
        )
        conn.execute(stmt, rows)
        return
    for r in rows:
        conn.execute(
            span_costs.delete().where(
                span_costs.c.trace_id == r["trace_id"], span_costs.c.span_id == r["span_id"]
            )
        )
    conn.execute(span_costs.insert(), rows)


def _same_db(engine: Engine, analytics: StateStore) -> bool:
    """Whether the costs table lives in the tracking database (``engine``)."""
    a, t = analytics.engine.url, engine.url
    return a.get_backend_name() == t.get_backend_name() and (a.host, a.port, a.database) == (
        t.host,
        t.port,
        t.database,
    )


def _analyze(conn: Connection) -> None:
    conn.exec_driver_sql(f"ANALYZE {span_costs.name}, {trace_costs.name}")


def _existing(conn: Connection, spans: Sequence[LlmSpan]) -> Stored:
    out: Stored = {}
    trace_ids = sorted({s.trace_id for s in spans})
    for i in range(0, len(trace_ids), 500):
        chunk = trace_ids[i : i + 500]
        for tid, sid, ver, status, total in conn.execute(
            sa.select(
                span_costs.c.trace_id,
                span_costs.c.span_id,
                span_costs.c.catalog_version,
                span_costs.c.status,
                span_costs.c.total_cost_usd,
            ).where(span_costs.c.trace_id.in_(chunk))
        ):
            out[(tid, sid)] = (ver, status, None if total is None else _q(_dec(total)))
    return out


# ----------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------
def _is_sql(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "databricks", "file:", "/")) and "://" in uri


@dataclass(frozen=True)
class RepriceParams:
    """What one run of :func:`reprice` prices and where (see its docstring)."""

    tracking_uri: str
    analytics_url: str | None = None
    experiment_ids: tuple[str, ...] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    database_url: str | None = None
    force: bool = False
    lookback_s: float | None = None
    batch_size: int | None = None
    scalar: bool = False


@dataclass
class _Run:
    """One run of the job: its stores, scope, catalog and tallies."""

    p: RepriceParams
    calc: CostCalculator
    now: datetime
    state_store: StateStore
    analytics: StateStore
    sql_url: str | None
    scope: str
    lo: int | None
    batch_size: int
    result: RepriceResult
    max_ts: int | None
    diffs: dict[tuple[str | None, str | None], ModelDiff] = field(default_factory=dict)
    before_total: Decimal = Decimal(0)
    after_total: Decimal = Decimal(0)
    join: bool = False  # the stored pricing comes with the spans (same PostgreSQL database)
    analyzed: int = 5000  # spans written at the last ANALYZE of the cost table

    @property
    def version(self) -> str:
        return self.calc.catalog_version


def reprice(
    tracking_uri: str,
    analytics_url: str | None = None,
    state_store: StateStore | None = None,
    experiment_ids: Sequence[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    now: datetime | None = None,
    *,
    calculator: CostCalculator | None = None,
    database_url: str | None = None,
    force: bool = False,
    lookback_s: float | None = None,
    batch_size: int | None = None,
    config: PricingConfig | None = None,
    scalar: bool = False,
) -> RepriceResult:
    """Price every LLM span in scope; see the module docstring for the rules.

    ``database_url`` is the tracking database when ``tracking_uri`` is an HTTP
    server (SQL is much faster than ``search_traces``). ``since_ms`` bypasses the
    watermark; ``force`` re-writes spans already priced with this catalog.
    ``config`` (the ``pricing:`` section) gives the catalog sources, look-back and
    batch size unless ``calculator`` / the explicit arguments say otherwise.
    ``scalar``: the row-at-a-time reference path (whole span JSON parsed in Python, one
    ``cost()`` per span, per-row statements), kept for the benchmark beside the default
    batch path; both write the same rows.
    """
    params = RepriceParams(
        tracking_uri,
        analytics_url,
        tuple(str(e) for e in experiment_ids) if experiment_ids else None,
        since_ms,
        until_ms,
        database_url,
        force,
        lookback_s,
        batch_size,
        scalar,
    )
    return run_reprice(
        params, calculator=calculator, config=config, state_store=state_store, now=now
    )


def run_reprice(
    params: RepriceParams,
    *,
    calculator: CostCalculator | None = None,
    config: PricingConfig | None = None,
    state_store: StateStore | None = None,
    now: datetime | None = None,
) -> RepriceResult:
    """:func:`reprice` over a :class:`RepriceParams`: open the run, price batch by batch,
    record the run and move the watermark."""
    config = config or PricingConfig()
    run = _open_run(
        params,
        calculator or CostCalculator.from_config(config),
        config,
        state_store or StateStore(),
        now or datetime.now(UTC),
    )
    _record_catalog_version(run)
    batches, engine = _open_batches(run)
    try:
        for batch, stored in batches:
            if batch:
                _price_batch(run, batch, stored)
        if run.analytics.dialect == "postgresql" and run.result.spans_written > run.analyzed:
            with run.analytics.engine.begin() as conn:
                _analyze(conn)  # for the readers of the costs (autovacuum may be late or off)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # the read (and its thread) ends before its engine goes
        if engine is not None:
            engine.dispose()
    _finish_run(run)
    if run.analytics is not run.state_store:
        run.analytics.dispose()
    return run.result


def _open_run(
    p: RepriceParams,
    calc: CostCalculator,
    config: PricingConfig,
    state_store: StateStore,
    now: datetime,
) -> _Run:
    """Resolve the stores, the scope and where the watermark starts this run."""
    lookback_s = config.lookback.total_seconds() if p.lookback_s is None else p.lookback_s
    sql_url = p.database_url or (p.tracking_uri if _is_sql(p.tracking_uri) else None)
    state_store.ensure_schema(PRICING_MIGRATIONS)
    analytics_url = p.analytics_url or sql_url or state_store.url
    analytics = state_store if analytics_url == state_store.url else StateStore(analytics_url)
    analytics.ensure_schema(ANALYTICS_MIGRATIONS)
    exp_key = ",".join(sorted(p.experiment_ids)) if p.experiment_ids else "*"
    scope_text = f"{sql_url or p.tracking_uri}|{exp_key}"
    scope = "pricing.reprice:" + hashlib.sha1(scope_text.encode()).hexdigest()[:16]
    wm_raw = state_store.get_watermark(scope)
    wm = json.loads(wm_raw) if wm_raw else {}
    previous = wm.get("catalog_version")
    full = previous != calc.catalog_version
    lo = p.since_ms
    if lo is None and not full and not p.force and wm.get("ts_ms") is not None:
        lo = int(wm["ts_ms"]) - int(lookback_s * 1000)
    result = RepriceResult(
        calc.catalog_version, previous, full and p.since_ms is None, "sql" if sql_url else "rest"
    )
    batch_size = config.batch_size if p.batch_size is None else p.batch_size
    return _Run(
        p,
        calc,
        now,
        state_store,
        analytics,
        sql_url,
        scope,
        lo,
        batch_size,
        result,
        wm.get("ts_ms"),
    )


def _record_catalog_version(run: _Run) -> None:
    """Keep what the catalog version was built from, the first time it prices."""
    pv = price_versions.c
    with run.state_store.engine.begin() as conn:
        if not conn.execute(
            sa.select(pv.catalog_version).where(pv.catalog_version == run.version)
        ).first():
            conn.execute(
                price_versions.insert().values(
                    catalog_version=run.version,
                    sources=json.dumps(list(run.calc.catalog.sources)),
                    entries=len(run.calc.catalog),
                    first_used_at=run.now,
                )
            )


def _open_batches(run: _Run) -> tuple[Iterator[tuple[list[LlmSpan], Stored | None]], Any]:
    """The batches of spans in scope, and the engine they are read with (None: REST)."""
    p = run.p
    if not run.sql_url:
        rest = _iter_rest_spans(
            p.tracking_uri, p.experiment_ids, run.lo, p.until_ms, run.batch_size
        )
        return rest, None
    engine = make_engine(run.sql_url)
    pg = engine.dialect.name == "postgresql"
    run.join = not p.scalar and pg and _same_db(engine, run.analytics)
    batches = _iter_sql_spans(
        engine, p.experiment_ids, run.lo, p.until_ms, run.batch_size, not p.scalar, run.join
    )
    if not p.scalar and pg:  # SQLite: one writer or reader at a time
        batches = _read_ahead(batches)
    return batches, engine


def _price_batch(run: _Run, batch: list[LlmSpan], stored: Stored | None) -> None:
    """Price the spans of one batch not yet priced with this catalog and write them, with
    their traces' costs, in one transaction."""
    result = run.result
    result.spans_seen += len(batch)
    with run.analytics.engine.begin() as conn:
        existing = stored if stored is not None else _existing(conn, batch)
        batch_max = max(s.trace_timestamp_ms for s in batch)
        run.max_ts = batch_max if run.max_ts is None else max(run.max_ts, batch_max)
        todo = []
        for s in batch:
            old = existing.get((s.trace_id, s.span_id))
            if old is not None and old[0] == run.version and not run.p.force:
                result.spans_skipped += 1
            else:
                todo.append(s)
        rows = (
            _scalar_rows(run, todo)
            if run.p.scalar
            else price_spans(run.calc, todo, run.version, run.now)
        )
        _tally(run, todo, rows, existing)
        new = not any((s.trace_id, s.span_id) in existing for s in todo)
        _upsert(conn, rows, bulk=not run.p.scalar, new=new)
        result.spans_written += len(rows)
        # PostgreSQL plans the stored-pricing look-ups on the table's statistics: a table
        # that grew since its last ANALYZE looks small, and each look-up became a full scan
        # (the job went quadratic). So the job analyzes it as it grows (doubling).
        pg = run.analytics.dialect == "postgresql"
        if pg and not run.join and result.spans_written >= 2 * run.analyzed:
            _analyze(conn)
            run.analyzed = result.spans_written


def _scalar_rows(run: _Run, spans: Sequence[LlmSpan]) -> list[dict[str, Any]]:
    """The reference path: one ``cost()`` per span."""
    return [
        cost_row(
            s,
            None
            if s.usage is None
            else run.calc.cost(
                model=s.model,
                provider=s.provider,
                usage=s.usage,
                service_tier=s.service_tier,
                at=s.trace_timestamp_ms,
            ),
            run.version,
            run.now,
        )
        for s in spans
    ]


def _tally(
    run: _Run, todo: Sequence[LlmSpan], rows: Sequence[dict[str, Any]], existing: Stored
) -> None:
    """Count statuses, cost per model and the per-model difference to the stored pricing."""
    result = run.result
    for s, row in zip(todo, rows, strict=True):
        old = existing.get((s.trace_id, s.span_id))
        status = row["status"]
        result.status_counts[status] = result.status_counts.get(status, 0) + 1
        new_total = row["total_cost_usd"]
        mkey = s.model or "(none)"
        if new_total is not None:
            result.cost_by_model[mkey] = result.cost_by_model.get(mkey, Decimal(0)) + new_total
        if status != "priced":
            k = (s.model, s.provider)
            result.unpriced[k] = result.unpriced.get(k, 0) + 1
        d = run.diffs.setdefault((s.model, s.provider), ModelDiff(s.model, s.provider))
        d.spans += 1
        if old is None:
            d.new_spans += 1
            d.new_usd += new_total or Decimal(0)
            continue
        d.before_usd += old[2] or Decimal(0)
        d.after_usd += new_total or Decimal(0)
        run.before_total += old[2] or Decimal(0)
        run.after_total += new_total or Decimal(0)
        if old[2] != new_total or old[1] != status:
            d.changed_spans += 1
            result.spans_changed += 1


def _finish_run(run: _Run) -> None:
    """Record the run with its per-model diff; move the watermark (a whole-scope run)."""
    result = run.result
    result.diffs = sorted(run.diffs.values(), key=lambda d: (-abs(d.delta_usd), str(d.model)))
    result.watermark_ms = run.max_ts
    with run.state_store.engine.begin() as conn:
        run_id = conn.execute(
            reprice_runs.insert().values(
                scope=run.scope,
                started_at=run.now,
                catalog_version=run.version,
                previous_version=result.previous_version,
                full_history=result.full_history,
                spans_seen=result.spans_seen,
                spans_written=result.spans_written,
                spans_changed=result.spans_changed,
                spans_unpriced=result.status_counts.get("unpriced", 0),
                cost_before_usd=str(run.before_total),
                cost_after_usd=str(run.after_total),
                diff=json.dumps([d.as_dict() for d in result.diffs]),
            )
        ).inserted_primary_key[0]
        result.run_id = int(run_id)
        if run.p.since_ms is None and run.p.until_ms is None:
            value = json.dumps({"ts_ms": run.max_ts, "catalog_version": run.version})
            run.state_store.set_watermark(run.scope, value, conn=conn)


# ----------------------------------------------------------------------------
# Reading results (for the CLI, the demo and the monitor)
# ----------------------------------------------------------------------------
def unpriced_models(
    analytics_url: str, *, since_ms: int | None = None, engine: Engine | None = None
) -> list[dict[str, Any]]:
    """Models seen on LLM spans without a (full) price, with volume, most spans first."""
    eng = engine or make_engine(analytics_url)
    c = span_costs.c
    q = (
        sa.select(
            c.model,
            c.provider,
            c.status,
            sa.func.count().label("spans"),
            sa.func.sum(
                c.input_tokens
                + c.cache_read_tokens
                + c.cache_write_5m_tokens
                + c.cache_write_1h_tokens
            ).label("input_tokens"),
            sa.func.sum(c.output_tokens).label("output_tokens"),
            sa.func.min(c.trace_timestamp_ms).label("first_ms"),
            sa.func.max(c.trace_timestamp_ms).label("last_ms"),
        )
        .where(c.status != "priced")
        .group_by(c.model, c.provider, c.status)
        .order_by(sa.desc("spans"))
    )
    if since_ms is not None:
        q = q.where(c.trace_timestamp_ms >= since_ms)
    try:
        with eng.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]
    except sa.exc.OperationalError as e:
        raise StoreError(f"cannot read llmops_span_costs: {e.orig}; run costs reprice first") from e
    finally:
        if engine is None:
            eng.dispose()


def cost_by_model(
    analytics_url: str,
    *,
    experiment_ids: Sequence[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    engine: Engine | None = None,
) -> list[dict[str, Any]]:
    """Spans and cost per model from ``llmops_span_costs`` (exact decimals), costliest first.

    ``cost_usd`` is None for a model none of whose spans has a price.
    """
    eng = engine or make_engine(analytics_url)
    c = span_costs.c
    q = sa.select(c.model, c.provider, c.total_cost_usd)
    if experiment_ids:
        q = q.where(c.experiment_id.in_([str(e) for e in experiment_ids]))
    if since_ms is not None:
        q = q.where(c.trace_timestamp_ms >= since_ms)
    if until_ms is not None:
        q = q.where(c.trace_timestamp_ms < until_ms)
    agg: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    try:
        with eng.connect() as conn:
            for model, provider, total in conn.execute(q):
                a = agg.setdefault(
                    (model, provider),
                    {
                        "model": model,
                        "provider": provider,
                        "spans": 0,
                        "unpriced_spans": 0,
                        "cost_usd": Decimal(0),
                    },
                )
                a["spans"] += 1
                if total is None:
                    a["unpriced_spans"] += 1
                else:
                    a["cost_usd"] += _q(Decimal(str(total)))
    finally:
        if engine is None:
            eng.dispose()
    for a in agg.values():
        if a["unpriced_spans"] == a["spans"]:
            a["cost_usd"] = None  # unpriced is not $0
    return sorted(agg.values(), key=lambda a: (-(a["cost_usd"] or -1), str(a["model"])))


def reprice_history(state_store: StateStore, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs of the job (newest first), with their per-model diffs."""
    state_store.ensure_schema(PRICING_MIGRATIONS)
    with state_store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(reprice_runs).order_by(reprice_runs.c.id.desc()).limit(limit)
        ).mappings()
        return [{**r, "diff": json.loads(r["diff"])} for r in rows]
