"""Signals: windowed aggregates over traces, spans and assessments, per label group.

Each signal is declared once, in ``catalog.SIGNALS``; this module renders a
declaration as SQL and evaluates it in memory.

``SqlSignalSource`` computes them in SQL over the ``llmops_*`` views (one query
per signal and window, written once for SQLite and PostgreSQL). Sampled
traffic is extrapolated with ``sample_weight``: counts, rates, tokens and cost
are weighted sums, and percentiles are *weighted* nearest-rank percentiles
computed with window functions (``SUM(weight) OVER (ORDER BY value)``), so a
tail-kept slow trace (weight 1) does not outweigh head-sampled fast ones
(weight 1/r). PostgreSQL's ``percentile_cont`` cannot take weights, which is
why both dialects share the window-function query.

``MemorySignalSource`` computes the same signals from in-memory events: for
engine tests and to cross-check the SQL.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mlflow_llmops.alerting.catalog import PERCENTILES, SIGNALS, Signal, Test, percentile_of
from mlflow_llmops.alerting.catalog import signal as signal_def
from mlflow_llmops.alerting.rules import LABEL_COLUMNS, SCORER_LABEL, SignalSpec
from mlflow_llmops.errors import StoreError

VIEWS = ("llmops_traces", "llmops_spans", "llmops_assessments")


@dataclass(frozen=True)
class SignalValue:
    """One group's value of a signal over a window; ``samples`` = rows behind it."""

    labels: Mapping[str, str]
    value: float | None
    samples: int

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))


class SignalSource(Protocol):
    """Anything that computes a signal for ``[start_ms, end_ms)``."""

    def query(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]: ...


# --------------------------------------------------------------------------- declarations as SQL

BUCKET_MS = 3_600_000
ROW_BUCKET_MS = 60_000


def _weight(alias: str = "t") -> str:
    return f"COALESCE({alias}.sample_weight, 1.0)"


def _sql_test(x: Test, alias: str) -> str:
    col = f"{alias}.{x.column}"
    if x.op == "is not null":
        return f"{col} IS NOT NULL"
    if x.param is not None:
        return f"{col} {x.op} :{x.param}"
    if isinstance(x.operand, str):
        return f"{col} {x.op} '{x.operand}'"
    return f"{col} {x.op} {x.operand}"


def _bind_tests(d: Signal, spec: SignalSpec, params: dict[str, object]) -> None:
    """The values of the ``SignalSpec`` fields the signal's tests compare with."""
    for name in d.params:
        params[name] = float(getattr(spec, name) or 0)


def _trace_parts_sql(d: Signal) -> tuple[str, str | None]:
    """A trace signal's numerator and denominator (None: the value is the numerator),
    both sums, so long windows (burn rates over 6h and 3d) are summed from cached
    hourly buckets."""
    w = _weight()
    if d.column is None:
        value = w
    elif d.nulls_as_zero:
        value = f"{w} * COALESCE(t.{d.column}, 0)"
    else:
        value = f"{w} * t.{d.column}"
    if d.counts is not None:
        value = f"CASE WHEN {_sql_test(d.counts, 't')} THEN {value} ELSE 0 END"
    return f"SUM({value})", f"SUM({w})" if d.aggregate == "share" else None


def _trace_filters(d: Signal) -> list[str]:
    """Finished traces, and those the signal considers at all."""
    return ["t.status <> 'IN_PROGRESS'"] + ([_sql_test(d.where, "t")] if d.where else [])


def _assessment_value_sql(d: Signal) -> str:
    if d.aggregate == "share" and d.counts is not None:
        return f"AVG(CASE WHEN {_sql_test(d.counts, 'a')} THEN 1.0 ELSE 0.0 END)"
    return f"AVG(a.{d.column})"


def _row_signal(spec: SignalSpec) -> bool:
    """Whether the signal is computed from trace (or, for TTFT, span) rows, so the
    in-memory definition over those rows gives the SQL's answer: not assessments."""
    return signal_def(spec.signal).kind != "assessment"


def _label_expr(label: str) -> str:
    if label == SCORER_LABEL:
        return "a.name"
    if label == "experiment_id":
        return "CAST(t.experiment_id AS VARCHAR(64))"
    return f"t.{label}"


def _row_labels(d: Signal, spec: SignalSpec) -> tuple[str, ...]:
    """The labels the rows of ``spec`` must carry: its groups, filters and tested labels."""
    tested = {x.column for x in d.tests if x.column in LABEL_COLUMNS}
    return tuple(sorted({*spec.group_by, *spec.where} | tested))


@dataclass
class _Query:
    """One signal query being built: its declaration, bind parameters and groups."""

    spec: SignalSpec
    signal: Signal
    params: dict[str, object]
    groups: list[str]
    binds: list[sa.BindParameter] = field(default_factory=list)

    @property
    def select(self) -> str:
        return "".join(f"{g} AS g{i}, " for i, g in enumerate(self.groups))

    @property
    def group_by(self) -> str:
        return f" GROUP BY {', '.join(self.groups)}" if self.groups else ""


class SqlSignalSource:
    """Signals in SQL over the ``llmops_*`` views of the tracking database."""

    def __init__(
        self,
        engine: Engine,
        *,
        experiment_ids: Sequence[str] = (),
        ensure_views: bool = True,
        bucket_cache: bool = True,
        settle_ms: int = 2 * BUCKET_MS,
        cache_ttl_s: float = 600.0,
        row_settle_ms: int = 5 * ROW_BUCKET_MS,
    ) -> None:
        """``bucket_cache``: windows of two hours or more of additive trace signals are
        summed from hourly buckets; a bucket that ended ``settle_ms`` before the window's
        end is cached for ``cache_ttl_s`` (then read again, so late traces count), so a
        tick reads the recent hours only instead of three days of traces per rule.
        Shorter windows of trace signals (and latency percentiles) are computed from the
        traces' rows, kept per minute once ``row_settle_ms`` old: a tick reads the last
        minutes once per label set, shared by every rule, instead of a window per rule."""
        self.engine = engine
        self.experiment_ids = tuple(str(e) for e in experiment_ids)
        self.bucket_cache = bucket_cache
        self.settle_ms = settle_ms
        self.cache_ttl_s = cache_ttl_s
        self.row_settle_ms = row_settle_ms
        self._buckets: dict[tuple, dict[int, tuple[float, list[tuple]]]] = {}
        self._rows: dict[tuple, dict[int, tuple[float, list[TraceEvent]]]] = {}
        self._live: dict[tuple, list[TraceEvent]] = {}
        self._grouped: dict[tuple, dict[tuple, list]] = {}
        self._latest_ms = 0
        self._tick: dict[tuple[str, int, int], list[SignalValue]] | None = None
        if ensure_views:
            self._ensure_views()

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> SqlSignalSource:
        from mlflow_llmops.statestore.state import make_engine

        return cls(make_engine(url), **kwargs)  # type: ignore[arg-type]

    def _ensure_views(self) -> None:
        have = set(sa.inspect(self.engine).get_view_names())
        if all(v in have for v in VIEWS):
            return
        try:
            from mlflow_llmops.analytics.views import create_views
        except ImportError as e:  # pragma: no cover - views ship with the package
            raise StoreError(
                "mlflow_llmops.analytics.views is missing; reinstall mlflow-llmops"
            ) from e
        try:
            create_views(self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(
                f"cannot create the llmops_* views on {self.engine.url!r}: {e}. Is it an MLflow "
                "tracking database (run `mlflow server` or log a trace once to create it)?"
            ) from e

    def _where(
        self, where: Mapping[str, str], params: dict[str, object], *, time_col: str
    ) -> tuple[list[str], list[sa.BindParameter]]:
        clauses = [f"{time_col} >= :start_ms", f"{time_col} < :end_ms"]
        binds: list[sa.BindParameter] = []
        if self.experiment_ids:
            clauses.append("CAST(t.experiment_id AS VARCHAR(64)) IN :exp_ids")
            params["exp_ids"] = list(self.experiment_ids)
            binds.append(sa.bindparam("exp_ids", expanding=True))
        for i, (label, value) in enumerate(sorted(where.items())):
            clauses.append(f"{_label_expr(label)} = :where_{i}")
            params[f"where_{i}"] = value
        return clauses, binds

    def build(self, spec: SignalSpec, start_ms: int, end_ms: int) -> tuple[sa.TextClause, dict]:
        """The SQL text and bind parameters of one signal query (public for EXPLAIN)."""
        d = signal_def(spec.signal)
        q = _Query(
            spec,
            d,
            {"start_ms": start_ms, "end_ms": end_ms},
            [_label_expr(g) for g in spec.group_by],
        )
        render = {
            "trace": self._trace_sql,
            "assessment": self._assessment_sql,
            "percentile": self._percentile_sql,
        }[d.kind]
        stmt = sa.text(render(q))
        if q.binds:
            stmt = stmt.bindparams(*q.binds)
        return stmt, q.params

    def _trace_sql(self, q: _Query) -> str:
        clauses, q.binds = self._where(q.spec.where, q.params, time_col="t.timestamp_ms")
        clauses += _trace_filters(q.signal)
        _bind_tests(q.signal, q.spec, q.params)
        num, den = _trace_parts_sql(q.signal)
        value = num if den is None else f"{num} * 1.0 / {den}"
        return (
            f"SELECT {q.select}{value} AS value, COUNT(*) AS n FROM llmops_traces t "
            f"WHERE {' AND '.join(clauses)}{q.group_by}"
        )

    def _assessment_sql(self, q: _Query) -> str:
        spec = q.spec
        needs_trace = bool(self.experiment_ids) or any(
            lbl != SCORER_LABEL for lbl in (*spec.group_by, *spec.where)
        )
        time_col = "t.timestamp_ms" if needs_trace else "a.trace_timestamp_ms"
        clauses, q.binds = self._where(spec.where, q.params, time_col=time_col)
        clauses += [
            "a.assessment_type = 'feedback'",
            "a.value_num IS NOT NULL",
            "a.error IS NULL",
            "(a.valid IS NULL OR a.valid = :valid)",
        ]
        q.params["valid"] = True
        if q.signal.human:
            clauses.append("a.source_type = 'HUMAN'")
        else:
            clauses.append("(a.source_type IS NULL OR a.source_type <> 'HUMAN')")
        if spec.scorer:
            clauses.append("a.name = :scorer")
            q.params["scorer"] = spec.scorer
        _bind_tests(q.signal, spec, q.params)
        src = "llmops_assessments a"
        if needs_trace:
            src += " JOIN llmops_traces t ON t.trace_id = a.trace_id"
        return (
            f"SELECT {q.select}{_assessment_value_sql(q.signal)} AS value, COUNT(*) AS n "
            f"FROM {src} WHERE {' AND '.join(clauses)}{q.group_by}"
        )

    def _percentile_sql(self, q: _Query) -> str:
        q.params["q"] = percentile_of(q.spec.signal)[1]
        clauses, q.binds = self._where(q.spec.where, q.params, time_col="t.timestamp_ms")
        clauses.append("t.status <> 'IN_PROGRESS'")
        if q.signal.per_span:
            src = "llmops_spans s JOIN llmops_traces t ON t.trace_id = s.trace_id"
            v = f"s.{q.signal.column}"
        else:
            src, v = "llmops_traces t", f"t.{q.signal.column}"
        clauses.append(f"{v} IS NOT NULL")
        gcols = [f"g{i}" for i in range(len(q.groups))]
        part = f"PARTITION BY {', '.join(gcols)} " if gcols else ""
        outer_sel = "".join(f"{g}, " for g in gcols)
        outer_group = f" GROUP BY {', '.join(gcols)}" if gcols else ""
        return (
            f"WITH base AS (SELECT {q.select}{v} AS v, {_weight()} AS wt FROM {src} "
            f"WHERE {' AND '.join(clauses)}), "
            f"ranked AS (SELECT {outer_sel}v, "
            f"SUM(wt) OVER ({part}ORDER BY v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
            f" AS cum, SUM(wt) OVER ({part.strip()}) AS tot, "
            f"COUNT(*) OVER ({part.strip()}) AS n FROM base) "
            f"SELECT {outer_sel}MIN(v) AS value, MAX(n) AS n FROM ranked "
            f"WHERE cum >= :q * tot - 1e-9{outer_group}"
        )

    def new_tick(self) -> None:
        """Called by the engine before each evaluation: within it, the same query asked
        twice (the 6 h window of two burn-rate pairs, two rules on one signal) runs once."""
        self._tick = {}
        self._live = {}
        self._grouped = {}

    def query(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        self._latest_ms = max(self._latest_ms, end_ms)
        if self._tick is None:
            return self._query(spec, start_ms, end_ms)
        key = (spec.model_dump_json(), start_ms, end_ms)
        if key not in self._tick:
            self._tick[key] = self._query(spec, start_ms, end_ms)
        return list(self._tick[key])

    def _query(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        long = end_ms - start_ms >= 2 * BUCKET_MS
        if self.bucket_cache and long and signal_def(spec.signal).kind == "trace":
            return self._bucketed(spec, start_ms, end_ms)
        if self.bucket_cache and not long and _row_signal(spec):
            return self._from_rows(spec, start_ms, end_ms)
        stmt, params = self.build(spec, start_ms, end_ms)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        out = []
        for row in rows:
            n = int(row[-1] or 0)
            if n == 0:
                continue
            labels = {g: "" if row[i] is None else str(row[i]) for i, g in enumerate(spec.group_by)}
            value = row[len(spec.group_by)]
            out.append(SignalValue(labels, None if value is None else float(value), n))
        return out

    # -- short windows from the traces' rows, cached per minute -----------------------
    def _rows_sql(
        self, per_span: bool, labels: Sequence[str], lo: int, hi: int
    ) -> tuple[sa.TextClause, dict]:
        """The rows the in-memory evaluation reads: per trace, or per span with a value."""
        params: dict[str, object] = {"start_ms": lo, "end_ms": hi}
        clauses, binds = self._where({}, params, time_col="t.timestamp_ms")
        clauses.append("t.status <> 'IN_PROGRESS'")
        if per_span:
            src = "llmops_spans s JOIN llmops_traces t ON t.trace_id = s.trace_id"
            cols = [f"s.{c}" for c in _SPAN_COLUMNS]
            clauses += [f"{c} IS NOT NULL" for c in cols]
        else:
            src, cols = "llmops_traces t", [f"t.{c}" for c in _TRACE_COLUMNS]
        sel = "".join(f", {c}" for c in cols)
        sel += "".join(f", {_label_expr(lbl)} AS l{i}" for i, lbl in enumerate(labels))
        sql = f"SELECT t.timestamp_ms, {_weight()}{sel} FROM {src} WHERE {' AND '.join(clauses)}"
        stmt = sa.text(sql)
        if binds:
            stmt = stmt.bindparams(*binds)
        return stmt, params

    def _read_rows(
        self, per_span: bool, labels: Sequence[str], lo: int, hi: int
    ) -> list[TraceEvent]:
        stmt, params = self._rows_sql(per_span, labels, lo, hi)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        cols = _SPAN_COLUMNS if per_span else _TRACE_COLUMNS
        # a span's row has no trace latency
        extra: dict[str, Any] = {"latency_ms": None} if per_span else {}
        out = []
        for r in rows:
            values = r[2 : 2 + len(cols)]
            out.append(
                TraceEvent(
                    timestamp_ms=int(r[0]),
                    sample_weight=float(r[1]),
                    labels={
                        lbl: str(v)
                        for lbl, v in zip(labels, r[2 + len(cols) :], strict=True)
                        if v is not None
                    },
                    **extra,
                    **{c: _CELL[c](v) for c, v in zip(cols, values, strict=True)},
                )
            )
        return out

    def _events(self, spec: SignalSpec, lo_ms: int, hi_ms: int) -> list[TraceEvent]:
        """The rows ``spec`` needs between ``lo_ms`` and ``hi_ms`` (and perhaps a few
        around them): minutes settled ``row_settle_ms`` before ``hi_ms`` come from the
        cache (read again after ``cache_ttl_s``), later ones are read once per tick."""
        d = signal_def(spec.signal)
        labels = _row_labels(d, spec)
        key = (d.per_span, labels, self.experiment_ids)
        cache = self._rows.setdefault(key, {})
        now = time.monotonic()
        for m in [m for m, (at, _) in cache.items() if now - at > self.cache_ttl_s]:
            del cache[m]
        # settled: minutes that ended row_settle_ms before the latest time asked (the
        # tick's now), so a baseline window of last week is read once, not every tick
        settle_at = (max(hi_ms, self._latest_ms) - self.row_settle_ms) // ROW_BUCKET_MS
        live_from = settle_at * ROW_BUCKET_MS
        if hi_ms <= live_from:
            settled = range(lo_ms // ROW_BUCKET_MS, -(-hi_ms // ROW_BUCKET_MS))
        else:
            settled = range(lo_ms // ROW_BUCKET_MS, settle_at)
        missing = [m for m in settled if m not in cache]
        if missing:
            lo, hi = missing[0], missing[-1] + 1
            fresh: dict[int, list[TraceEvent]] = {m: [] for m in range(lo, hi)}
            for e in self._read_rows(d.per_span, labels, lo * ROW_BUCKET_MS, hi * ROW_BUCKET_MS):
                fresh[e.timestamp_ms // ROW_BUCKET_MS].append(e)
            for m, events in fresh.items():
                cache[m] = (now, events)
        if hi_ms <= live_from:
            return [e for m in settled for e in cache[m][1]]
        live_key = (key, live_from, hi_ms)
        live = self._live.get(live_key) if self._tick is not None else None
        if live is None:
            live = self._read_rows(d.per_span, labels, live_from, hi_ms)
            if self._tick is not None:
                self._live[live_key] = live
        return [e for m in settled for e in cache[m][1]] + live

    def _from_rows(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        # rules on other signals over the same window and row labels share the grouping
        d = signal_def(spec.signal)
        key = (
            d.per_span,
            _row_labels(d, spec),
            tuple(spec.group_by),
            tuple(sorted(spec.where.items())),
            start_ms,
            end_ms,
        )
        groups = self._grouped.get(key) if self._tick is not None else None
        if groups is None:
            events = [
                e
                for e in self._events(spec, start_ms, end_ms)
                if start_ms <= e.timestamp_ms < end_ms
            ]
            groups = MemorySignalSource.group(spec, events)
            if self._tick is not None:
                self._grouped[key] = groups
        return MemorySignalSource.values(spec, groups)

    def _parts_from_rows(self, spec: SignalSpec, ranges: Sequence[tuple[int, int]]) -> list[tuple]:
        """The rows of ``_parts_sql`` (labels, numerator, denominator, count) computed
        from cached trace rows, for the recent edges of a long window."""
        d = signal_def(spec.signal)
        acc: dict[tuple, list] = {}
        for lo, hi in ranges:
            events = [e for e in self._events(spec, lo, hi) if lo <= e.timestamp_ms < hi]
            for labels, rows in MemorySignalSource.group(spec, events).items():
                parts = trace_parts(d, spec, rows)
                if parts is None:
                    continue
                num, den, n = parts
                a = acc.setdefault(labels, [None, None, 0])
                if num is not None:
                    a[0] = (a[0] or 0.0) + num
                if den is not None:
                    a[1] = (a[1] or 0.0) + den
                a[2] += n
        return [(*(v or None for v in k), num, den, n) for k, (num, den, n) in acc.items()]

    # -- long windows from cached hourly buckets ------------------------------------
    def _parts_sql(
        self, spec: SignalSpec, ranges: Sequence[tuple[int, int]], by_bucket: bool
    ) -> tuple[sa.TextClause, dict]:
        """Numerator, denominator and count per group (and per hour with ``by_bucket``)
        over the union of ``ranges``."""
        d = signal_def(spec.signal)
        params: dict[str, object] = {}
        clauses, binds = self._where(spec.where, params, time_col="t.timestamp_ms")
        clauses = clauses[2:]  # the time range is the union below
        spans = []
        for i, (lo, hi) in enumerate(ranges):
            spans.append(f"(t.timestamp_ms >= :lo{i} AND t.timestamp_ms < :hi{i})")
            params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        clauses.insert(0, "(" + " OR ".join(spans) + ")")
        clauses += _trace_filters(d)
        _bind_tests(d, spec, params)
        num, den = _trace_parts_sql(d)
        keys = [_label_expr(g) for g in spec.group_by]
        if by_bucket:
            keys.append(f"t.timestamp_ms / {BUCKET_MS}")
        sel = "".join(f"{k} AS k{i}, " for i, k in enumerate(keys))
        sql = (
            f"SELECT {sel}{num} AS num, {den or 'NULL'} AS den, COUNT(*) AS n "
            f"FROM llmops_traces t WHERE {' AND '.join(clauses)}"
            + (f" GROUP BY {', '.join(keys)}" if keys else "")
        )
        stmt = sa.text(sql)
        if binds:
            stmt = stmt.bindparams(*binds)
        return stmt, params

    def _bucketed(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        """A long window of an additive trace signal: its settled hours from the cache,
        its edges (before the first whole hour, after the last settled one) from rows."""
        first = -(-start_ms // BUCKET_MS)  # first whole hour inside the window
        last = min(end_ms, end_ms - self.settle_ms) // BUCKET_MS  # hours settled before it
        cache = self._hours(spec, range(first, last))
        if first >= last:  # no settled hour: read the whole window
            ranges = [(start_ms, end_ms)]
        else:
            ranges = [(start_ms, first * BUCKET_MS), (last * BUCKET_MS, end_ms)]
        edges = [r for r in ranges if r[0] < r[1]]
        live = self._parts_from_rows(spec, edges) if edges else []
        cached = [row for b in range(first, last) for row in cache[b][1]]
        return _values_from_parts(spec, [*cached, *live])

    def _hours(self, spec: SignalSpec, hours: range) -> dict[int, tuple[float, list[tuple]]]:
        """The hourly parts cache of ``spec``, with ``hours`` in it: expired hours are
        dropped, missing ones read in one query."""
        key = (
            spec.signal,
            tuple(spec.group_by),
            tuple(sorted(spec.where.items())),
            tuple(getattr(spec, p) for p in signal_def(spec.signal).params),
            self.experiment_ids,
        )
        cache = self._buckets.setdefault(key, {})
        now = time.monotonic()
        for b in [b for b, (at, _) in cache.items() if now - at > self.cache_ttl_s]:
            del cache[b]
        missing = [b for b in hours if b not in cache]
        if not missing:
            return cache
        lo, hi = missing[0], missing[-1] + 1
        stmt, params = self._parts_sql(spec, [(lo * BUCKET_MS, hi * BUCKET_MS)], True)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        ng = len(spec.group_by)
        fresh: dict[int, list[tuple]] = {b: [] for b in range(lo, hi)}
        for r in rows:
            fresh[int(r[ng])].append((*r[:ng], *r[ng + 1 :]))
        for b, bucket_rows in fresh.items():
            cache[b] = (now, bucket_rows)
        return cache


def _values_from_parts(spec: SignalSpec, rows: Iterable[tuple]) -> list[SignalValue]:
    """Sum parts rows (labels, numerator, denominator, count) per group into values."""
    ng = len(spec.group_by)
    totals: dict[tuple, list] = {}
    for row in rows:
        labels, (num, den, n) = row[:ng], row[ng:]
        acc = totals.setdefault(tuple(labels), [None, None, 0])
        if num is not None:
            acc[0] = (acc[0] or 0.0) + float(num)
        if den is not None:
            acc[1] = (acc[1] or 0.0) + float(den)
        acc[2] += int(n or 0)
    d = signal_def(spec.signal)
    out = []
    for labels, (num, den, n) in totals.items():
        if n == 0:
            continue
        named = {g: "" if v is None else str(v) for g, v in zip(spec.group_by, labels, strict=True)}
        out.append(SignalValue(named, trace_value(d, num, den), n))
    return out


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class TraceEvent:
    """One trace as the in-memory source sees it (the columns of ``llmops_traces``)."""

    timestamp_ms: int
    status: str = "OK"
    latency_ms: float | None = 100.0
    labels: Mapping[str, str] = field(default_factory=dict)
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    unpriced_spans: int = 0
    sample_weight: float = 1.0
    ttft_ms: float | None = None
    #: scorer name -> score (``value_num``); HUMAN feedback under ``feedback:<name>``
    scores: Mapping[str, float] = field(default_factory=dict)


def weighted_percentile(values: Iterable[tuple[float, float]], q: float) -> float | None:
    """Nearest-rank percentile of (value, weight) pairs: the SQL query's definition."""
    pairs = sorted(values)
    total = sum(w for _, w in pairs)
    if not pairs:
        return None
    cum = 0.0
    for v, w in pairs:
        cum += w
        if cum >= q * total - 1e-9:
            return v
    return pairs[-1][0]


# --------------------------------------------------------------------------- declarations in memory


def _getter(column: str) -> Callable[[TraceEvent], Any]:
    """A trace row's column; an empty label counts as missing (labels are strings, a
    missing one groups as "")."""
    if column in LABEL_COLUMNS:
        return lambda e: e.labels.get(column) or None
    return operator.attrgetter(column)


def _select(x: Test, spec: SignalSpec, rows: Sequence[Any], get: Callable[[Any], Any]) -> list:
    """The rows passing ``x`` (``get`` reads a row's column), as SQL evaluates it: a NULL
    passes no comparison. One comprehension per operator: this runs per row per rule."""
    if x.op == "is not null":
        return [r for r in rows if get(r) is not None]
    k = float(getattr(spec, x.param) or 0) if x.param is not None else x.operand
    if x.op == "=":
        return [r for r in rows if (v := get(r)) is not None and v == k]
    if x.op == "<>":
        return [r for r in rows if (v := get(r)) is not None and v != k]
    if x.op == ">":
        return [r for r in rows if (v := get(r)) is not None and v > k]
    if x.op == ">=":
        return [r for r in rows if (v := get(r)) is not None and v >= k]
    if x.op == "<":
        return [r for r in rows if (v := get(r)) is not None and v < k]
    return [r for r in rows if (v := get(r)) is not None and v <= k]


def trace_parts(
    d: Signal, spec: SignalSpec, rows: Sequence[TraceEvent]
) -> tuple[float | None, float | None, int] | None:
    """A trace signal over one group's rows: numerator, denominator (shares only) and
    count of the rows it considers (``_trace_parts_sql`` in memory); None when it
    considers none."""
    if d.where is not None:
        rows = _select(d.where, spec, rows, _getter(d.where.column))
    if not rows:
        return None
    counted = rows if d.counts is None else _select(d.counts, spec, rows, _getter(d.counts.column))
    num: float | None
    if d.column is None:
        num = sum([e.sample_weight for e in counted])
    else:
        get = _getter(d.column)
        if d.nulls_as_zero:
            num = sum([e.sample_weight * (get(e) or 0) for e in counted])
        else:
            present = [e.sample_weight * v for e in counted if (v := get(e)) is not None]
            num = sum(present) if present else None
    den = sum([e.sample_weight for e in rows]) if d.aggregate == "share" else None
    return num, den, len(rows)


def trace_value(d: Signal, num: float | None, den: float | None) -> float | None:
    """A trace signal's value from its summed parts."""
    if d.aggregate == "share":
        return None if num is None or not den else num / den
    return None if num is None else float(num)


def score_value(d: Signal, spec: SignalSpec, scores: Sequence[float]) -> float:
    """An assessment signal over one group's scores (unweighted, as in SQL)."""
    if d.aggregate == "share" and d.counts is not None:
        # a score is its own ``value_num``
        return len(_select(d.counts, spec, scores, lambda s: s)) / len(scores)
    return sum(scores) / len(scores)


def _convert(annotation: str) -> Callable[[Any], Any]:
    """How a database value becomes a ``TraceEvent`` field of this annotation."""
    if annotation == "int":
        return lambda v: int(v or 0)
    if annotation == "float | None":
        return lambda v: None if v is None else float(v)
    return lambda v: v


def _columns(per_span: bool) -> tuple[str, ...]:
    """The columns the trace (or span) signals read from their rows, declaration order."""
    out: dict[str, None] = {}
    for d in (*SIGNALS, *PERCENTILES):
        if d.kind == "assessment" or d.per_span != per_span:
            continue
        for c in (d.column, *(x.column for x in d.tests)):
            if c is not None and c not in LABEL_COLUMNS:
                out[c] = None
    return tuple(out)


#: what the short windows read per trace and per span, and how each becomes a field
_TRACE_COLUMNS = _columns(per_span=False)
_SPAN_COLUMNS = _columns(per_span=True)
_CELL = {f.name: _convert(str(f.type)) for f in dataclasses.fields(TraceEvent)}


class MemorySignalSource:
    """The same signals over in-memory ``TraceEvent``s."""

    def __init__(self, events: Iterable[TraceEvent] = ()) -> None:
        self.events: list[TraceEvent] = list(events)
        self.fail: Exception | None = None
        self._sorted = False
        self._keys: list[int] = []

    def add(self, *events: TraceEvent) -> None:
        self.events.extend(events)
        self._sorted = False

    def _window(self, start_ms: int, end_ms: int) -> list[TraceEvent]:
        if not self._sorted:
            self.events.sort(key=lambda e: e.timestamp_ms)
            self._keys = [e.timestamp_ms for e in self.events]
            self._sorted = True
        lo, hi = bisect_left(self._keys, start_ms), bisect_left(self._keys, end_ms)
        return self.events[lo:hi]

    def query(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        if self.fail is not None:
            raise self.fail
        if signal_def(spec.signal).kind == "assessment":
            return self.values(spec, self._scores(spec, self._window(start_ms, end_ms)))
        return self.values(spec, self.group(spec, self._window(start_ms, end_ms)))

    @staticmethod
    def group(spec: SignalSpec, events: Iterable[TraceEvent]) -> dict[tuple, list]:
        """Finished events matching ``spec.where``, by ``spec.group_by`` labels."""
        where = [(k, v) for k, v in spec.where.items() if k != SCORER_LABEL]
        by = [g for g in spec.group_by if g != SCORER_LABEL]
        groups: dict[tuple, list] = defaultdict(list)
        for e in events:
            if e.status == "IN_PROGRESS":
                continue
            labels = e.labels
            if where and any(labels.get(k) != v for k, v in where):
                continue
            groups[tuple([labels.get(g, "") for g in by]) if by else ()].append(e)
        return groups

    @staticmethod
    def _scores(spec: SignalSpec, events: Iterable[TraceEvent]) -> dict[tuple, list]:
        groups: dict[tuple, list] = defaultdict(list)
        human = signal_def(spec.signal).human
        for e in events:
            if e.status == "IN_PROGRESS":
                continue
            if any(e.labels.get(k) != v for k, v in spec.where.items() if k != SCORER_LABEL):
                continue
            for name, score in e.scores.items():
                is_human = name.startswith("feedback:")
                name = name.removeprefix("feedback:")
                if is_human != human or (spec.scorer and name != spec.scorer):
                    continue
                if spec.where.get(SCORER_LABEL, name) != name:
                    continue
                full = tuple(
                    name if g == SCORER_LABEL else e.labels.get(g, "") for g in spec.group_by
                )
                groups[full].append(score)
        return groups

    @classmethod
    def values(cls, spec: SignalSpec, groups: Mapping[tuple, list]) -> list[SignalValue]:
        """One value per group (the rows of ``group`` or ``_scores``)."""
        d = signal_def(spec.signal)
        out = []
        for key, rows in groups.items():
            labels = dict(zip(spec.group_by, key, strict=True))
            value, considered = cls._value(d, spec, rows)
            n = len(rows) if d.kind != "percentile" else considered
            if n:
                out.append(SignalValue(labels, value, n))
        return out

    @staticmethod
    def _value(d: Signal, spec: SignalSpec, rows: list) -> tuple[float | None, int]:
        """The value over one group's rows, and how many rows it considered."""
        if d.kind == "assessment":
            return score_value(d, spec, rows), len(rows)
        if d.kind == "percentile":
            pairs = [(getattr(e, d.column), e.sample_weight) for e in rows]
            pairs = [(v, w) for v, w in pairs if v is not None]
            return weighted_percentile(pairs, percentile_of(spec.signal)[1]), len(pairs)
        parts = trace_parts(d, spec, rows)
        if parts is None:
            return None, 0
        return trace_value(d, parts[0], parts[1]), parts[2]
