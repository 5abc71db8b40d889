"""Signals: windowed aggregates over traces, spans and assessments, per label group.

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

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mlflow_llmops.alerting.rules import SCORER_LABEL, SignalSpec, percentile_of, signal_kind
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


# --------------------------------------------------------------------------- SQL


def _weight(alias: str = "t") -> str:
    return f"COALESCE({alias}.sample_weight, 1.0)"


#: Additive trace signals as (numerator, denominator or None): summable per time bucket,
#: so long windows (burn rates over 6h and 3d) are summed from cached hourly buckets.
_TRACE_PARTS = {
    "request_count": ("SUM({w})", None),
    "error_rate": ("SUM(CASE WHEN t.status = 'ERROR' THEN {w} ELSE 0 END)", "SUM({w})"),
    "tokens": ("SUM({w} * COALESCE(t.total_tokens, 0))", None),
    "input_tokens": ("SUM({w} * COALESCE(t.input_tokens, 0))", None),
    "output_tokens": ("SUM({w} * COALESCE(t.output_tokens, 0))", None),
    "cost_usd": ("SUM({w} * t.cost_usd)", None),
    "unpriced_share": (
        "SUM(CASE WHEN COALESCE(t.unpriced_spans, 0) > 0 THEN {w} ELSE 0 END)",
        "SUM({w})",
    ),
    "latency_over": ("SUM(CASE WHEN t.latency_ms > :lat_thr THEN {w} ELSE 0 END)", "SUM({w})"),
}
_TRACE_VALUE = {k: n if d is None else f"{n} * 1.0 / {d}" for k, (n, d) in _TRACE_PARTS.items()}
BUCKET_MS = 3_600_000
ROW_BUCKET_MS = 60_000
_TRACE_FILTER = {
    "unpriced_share": "t.model IS NOT NULL",
    "latency_over": "t.latency_ms IS NOT NULL",
}
_ASSESSMENT_VALUE = {
    "scorer_pass_rate": "AVG(CASE WHEN a.value_num >= :pass_thr THEN 1.0 ELSE 0.0 END)",
    "scorer_fail_rate": "AVG(CASE WHEN a.value_num < :pass_thr THEN 1.0 ELSE 0.0 END)",
    "mean_score": "AVG(a.value_num)",
    "feedback_score": "AVG(a.value_num)",
}


def _from_rows(spec: SignalSpec) -> bool:
    """Whether the signal is computed from trace (or, for TTFT, span) rows, so the
    in-memory definition over those rows gives the SQL's answer: not assessments."""
    return signal_kind(spec.signal) != "assessment"


def _label_expr(label: str) -> str:
    if label == SCORER_LABEL:
        return "a.name"
    if label == "experiment_id":
        return "CAST(t.experiment_id AS VARCHAR(64))"
    return f"t.{label}"


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
        kind = signal_kind(spec.signal)
        params: dict[str, object] = {"start_ms": start_ms, "end_ms": end_ms}
        groups = [_label_expr(g) for g in spec.group_by]
        sel = "".join(f"{g} AS g{i}, " for i, g in enumerate(groups))
        group_clause = f" GROUP BY {', '.join(groups)}" if groups else ""
        w = _weight()
        if kind == "trace":
            clauses, binds = self._where(spec.where, params, time_col="t.timestamp_ms")
            clauses.append("t.status <> 'IN_PROGRESS'")
            if spec.signal in _TRACE_FILTER:
                clauses.append(_TRACE_FILTER[spec.signal])
            if spec.signal == "latency_over":
                params["lat_thr"] = float(spec.latency_threshold_ms or 0)
            value = _TRACE_VALUE[spec.signal].format(w=w)
            sql = (
                f"SELECT {sel}{value} AS value, COUNT(*) AS n FROM llmops_traces t "
                f"WHERE {' AND '.join(clauses)}{group_clause}"
            )
        elif kind == "assessment":
            needs_trace = bool(self.experiment_ids) or any(
                lbl != SCORER_LABEL for lbl in (*spec.group_by, *spec.where)
            )
            time_col = "t.timestamp_ms" if needs_trace else "a.trace_timestamp_ms"
            clauses, binds = self._where(spec.where, params, time_col=time_col)
            clauses += [
                "a.assessment_type = 'feedback'",
                "a.value_num IS NOT NULL",
                "a.error IS NULL",
                "(a.valid IS NULL OR a.valid = :valid)",
            ]
            params["valid"] = True
            if spec.signal == "feedback_score":
                clauses.append("a.source_type = 'HUMAN'")
            else:
                clauses.append("(a.source_type IS NULL OR a.source_type <> 'HUMAN')")
            if spec.scorer:
                clauses.append("a.name = :scorer")
                params["scorer"] = spec.scorer
            params["pass_thr"] = spec.pass_threshold
            src = "llmops_assessments a"
            if needs_trace:
                src += " JOIN llmops_traces t ON t.trace_id = a.trace_id"
            sql = (
                f"SELECT {sel}{_ASSESSMENT_VALUE[spec.signal]} AS value, COUNT(*) AS n "
                f"FROM {src} WHERE {' AND '.join(clauses)}{group_clause}"
            )
        else:
            what, q = percentile_of(spec.signal)
            params["q"] = q
            clauses, binds = self._where(spec.where, params, time_col="t.timestamp_ms")
            clauses.append("t.status <> 'IN_PROGRESS'")
            if what == "latency":
                src, v = "llmops_traces t", "t.latency_ms"
            else:
                src = "llmops_spans s JOIN llmops_traces t ON t.trace_id = s.trace_id"
                v = "s.ttft_ms"
            clauses.append(f"{v} IS NOT NULL")
            gcols = [f"g{i}" for i in range(len(groups))]
            part = f"PARTITION BY {', '.join(gcols)} " if gcols else ""
            outer_sel = "".join(f"{g}, " for g in gcols)
            outer_group = f" GROUP BY {', '.join(gcols)}" if gcols else ""
            sql = (
                f"WITH base AS (SELECT {sel}{v} AS v, {w} AS wt FROM {src} "
                f"WHERE {' AND '.join(clauses)}), "
                f"ranked AS (SELECT {outer_sel}v, "
                f"SUM(wt) OVER ({part}ORDER BY v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
                f" AS cum, SUM(wt) OVER ({part.strip()}) AS tot, "
                f"COUNT(*) OVER ({part.strip()}) AS n FROM base) "
                f"SELECT {outer_sel}MIN(v) AS value, MAX(n) AS n FROM ranked "
                f"WHERE cum >= :q * tot - 1e-9{outer_group}"
            )
        stmt = sa.text(sql)
        if binds:
            stmt = stmt.bindparams(*binds)
        return stmt, params

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
        if self.bucket_cache and spec.signal in _TRACE_PARTS and end_ms - start_ms >= 2 * BUCKET_MS:
            return self._bucketed(spec, start_ms, end_ms)
        if self.bucket_cache and end_ms - start_ms < 2 * BUCKET_MS and _from_rows(spec):
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
        self, kind: str, labels: Sequence[str], lo: int, hi: int
    ) -> tuple[sa.TextClause, dict]:
        params: dict[str, object] = {"start_ms": lo, "end_ms": hi}
        clauses, binds = self._where({}, params, time_col="t.timestamp_ms")
        clauses.append("t.status <> 'IN_PROGRESS'")
        cols = "".join(f", {_label_expr(lbl)} AS l{i}" for i, lbl in enumerate(labels))
        if kind == "ttft":  # one row per span with a time to first token
            clauses.append("s.ttft_ms IS NOT NULL")
            sql = (
                f"SELECT t.timestamp_ms, s.ttft_ms, {_weight()}{cols} FROM llmops_spans s "
                f"JOIN llmops_traces t ON t.trace_id = s.trace_id WHERE {' AND '.join(clauses)}"
            )
        else:
            sql = (
                "SELECT t.timestamp_ms, t.status, t.latency_ms, t.total_tokens, "
                "t.input_tokens, t.output_tokens, t.cost_usd, t.unpriced_spans, "
                f"{_weight()}{cols} FROM llmops_traces t WHERE {' AND '.join(clauses)}"
            )
        stmt = sa.text(sql)
        if binds:
            stmt = stmt.bindparams(*binds)
        return stmt, params

    def _read_rows(self, kind: str, labels: Sequence[str], lo: int, hi: int) -> list[TraceEvent]:
        stmt, params = self._rows_sql(kind, labels, lo, hi)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt, params).all()
        nl = len(labels)
        out = []
        for r in rows:
            named = {
                lbl: str(v)
                for lbl, v in zip(labels, r[len(r) - nl :], strict=True)
                if v is not None
            }
            if kind == "ttft":
                out.append(
                    TraceEvent(
                        timestamp_ms=int(r[0]),
                        latency_ms=None,
                        labels=named,
                        ttft_ms=float(r[1]),
                        sample_weight=float(r[2]),
                    )
                )
                continue
            out.append(
                TraceEvent(
                    timestamp_ms=int(r[0]),
                    status=r[1],
                    latency_ms=None if r[2] is None else float(r[2]),
                    labels=named,
                    total_tokens=int(r[3] or 0),
                    input_tokens=int(r[4] or 0),
                    output_tokens=int(r[5] or 0),
                    cost_usd=None if r[6] is None else float(r[6]),
                    unpriced_spans=int(r[7] or 0),
                    sample_weight=float(r[8]),
                )
            )
        return out

    def _events(self, spec: SignalSpec, lo_ms: int, hi_ms: int) -> list[TraceEvent]:
        """The rows ``spec`` needs between ``lo_ms`` and ``hi_ms`` (and perhaps a few
        around them): minutes settled ``row_settle_ms`` before ``hi_ms`` come from the
        cache (read again after ``cache_ttl_s``), later ones are read once per tick."""
        ttft = signal_kind(spec.signal) == "percentile" and spec.signal.startswith("ttft")
        kind = "ttft" if ttft else "traces"
        extra = {"model"} if spec.signal == "unpriced_share" else set()
        labels = sorted({*spec.group_by, *spec.where} | extra)
        key = (kind, tuple(labels), self.experiment_ids)
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
            for e in self._read_rows(kind, labels, lo * ROW_BUCKET_MS, hi * ROW_BUCKET_MS):
                fresh[e.timestamp_ms // ROW_BUCKET_MS].append(e)
            for m, events in fresh.items():
                cache[m] = (now, events)
        if hi_ms <= live_from:
            return [e for m in settled for e in cache[m][1]]
        live_key = (key, live_from, hi_ms)
        live = self._live.get(live_key) if self._tick is not None else None
        if live is None:
            live = self._read_rows(kind, labels, live_from, hi_ms)
            if self._tick is not None:
                self._live[live_key] = live
        return [e for m in settled for e in cache[m][1]] + live

    def _from_rows(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        # rules on other signals over the same window and labels share the grouping
        key = (
            spec.signal.startswith("ttft"),
            spec.signal == "unpriced_share",
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
        acc: dict[tuple, list] = {}
        s, thr = spec.signal, float(spec.latency_threshold_ms or 0)
        tokens = {"tokens": "total_tokens"}.get(s, s)
        for lo, hi in ranges:
            events = [e for e in self._events(spec, lo, hi) if lo <= e.timestamp_ms < hi]
            for labels, rows in MemorySignalSource.group(spec, events).items():
                if s == "unpriced_share":
                    rows = [e for e in rows if e.labels.get("model")]
                elif s == "latency_over":
                    rows = [e for e in rows if e.latency_ms is not None]
                if not rows:
                    continue
                if s == "request_count":
                    num: float | None = sum(e.sample_weight for e in rows)
                elif s == "error_rate":
                    num = sum(e.sample_weight for e in rows if e.status == "ERROR")
                elif s == "unpriced_share":
                    num = sum(e.sample_weight for e in rows if e.unpriced_spans > 0)
                elif s == "latency_over":
                    num = sum(e.sample_weight for e in rows if e.latency_ms > thr)  # type: ignore[operator]
                elif s == "cost_usd":
                    priced = [e.sample_weight * e.cost_usd for e in rows if e.cost_usd is not None]
                    num = sum(priced) if priced else None
                else:
                    num = sum(e.sample_weight * getattr(e, tokens) for e in rows)
                a = acc.setdefault(labels, [None, 0.0, 0])
                if num is not None:
                    a[0] = (a[0] or 0.0) + num
                a[1] += sum(e.sample_weight for e in rows)
                a[2] += len(rows)
        has_den = _TRACE_PARTS[s][1] is not None
        return [
            (*(v or None for v in k), num, den if has_den else None, n)
            for k, (num, den, n) in acc.items()
        ]

    # -- long windows from cached hourly buckets ------------------------------------
    def _parts_sql(
        self, spec: SignalSpec, ranges: Sequence[tuple[int, int]], by_bucket: bool
    ) -> tuple[sa.TextClause, dict]:
        """Numerator, denominator and count per group (and per hour with ``by_bucket``)
        over the union of ``ranges``."""
        params: dict[str, object] = {}
        clauses, binds = self._where(spec.where, params, time_col="t.timestamp_ms")
        clauses = clauses[2:]  # the time range is the union below
        spans = []
        for i, (lo, hi) in enumerate(ranges):
            spans.append(f"(t.timestamp_ms >= :lo{i} AND t.timestamp_ms < :hi{i})")
            params[f"lo{i}"], params[f"hi{i}"] = lo, hi
        clauses.insert(0, "(" + " OR ".join(spans) + ")")
        clauses.append("t.status <> 'IN_PROGRESS'")
        if spec.signal in _TRACE_FILTER:
            clauses.append(_TRACE_FILTER[spec.signal])
        if spec.signal == "latency_over":
            params["lat_thr"] = float(spec.latency_threshold_ms or 0)
        num, den = _TRACE_PARTS[spec.signal]
        w = _weight()
        keys = [_label_expr(g) for g in spec.group_by]
        if by_bucket:
            keys.append(f"t.timestamp_ms / {BUCKET_MS}")
        sel = "".join(f"{k} AS k{i}, " for i, k in enumerate(keys))
        den_sql = den.format(w=w) if den else "NULL"
        sql = (
            f"SELECT {sel}{num.format(w=w)} AS num, {den_sql} AS den, COUNT(*) AS n "
            f"FROM llmops_traces t WHERE {' AND '.join(clauses)}"
            + (f" GROUP BY {', '.join(keys)}" if keys else "")
        )
        stmt = sa.text(sql)
        if binds:
            stmt = stmt.bindparams(*binds)
        return stmt, params

    def _bucketed(self, spec: SignalSpec, start_ms: int, end_ms: int) -> list[SignalValue]:
        ng = len(spec.group_by)
        first = -(-start_ms // BUCKET_MS)  # first whole hour inside the window
        last = min(end_ms, end_ms - self.settle_ms) // BUCKET_MS  # hours settled before it
        key = (
            spec.signal,
            tuple(spec.group_by),
            tuple(sorted(spec.where.items())),
            spec.latency_threshold_ms,
            self.experiment_ids,
        )
        cache = self._buckets.setdefault(key, {})
        now = time.monotonic()
        for b in [b for b, (at, _) in cache.items() if now - at > self.cache_ttl_s]:
            del cache[b]
        missing = [b for b in range(first, last) if b not in cache]
        if missing:
            lo, hi = missing[0], missing[-1] + 1
            stmt, params = self._parts_sql(spec, [(lo * BUCKET_MS, hi * BUCKET_MS)], True)
            with self.engine.connect() as conn:
                rows = conn.execute(stmt, params).all()
            fresh: dict[int, list[tuple]] = {b: [] for b in range(lo, hi)}
            for r in rows:
                fresh[int(r[ng])].append((*r[:ng], *r[ng + 1 :]))
            for b, bucket_rows in fresh.items():
                cache[b] = (now, bucket_rows)
        ranges = []
        if first >= last:  # no settled hour: read the whole window
            ranges.append((start_ms, end_ms))
        else:
            ranges += [(start_ms, first * BUCKET_MS), (last * BUCKET_MS, end_ms)]
        edges = [r for r in ranges if r[0] < r[1]]
        live = self._parts_from_rows(spec, edges) if edges else []
        totals: dict[tuple, list] = {}
        cached = [row for b in range(first, last) for row in cache[b][1]]
        for row in (*cached, *live):
            labels, (num, den, n) = row[:ng], row[ng:]
            acc = totals.setdefault(tuple(labels), [None, None, 0])
            if num is not None:
                acc[0] = (acc[0] or 0.0) + float(num)
            if den is not None:
                acc[1] = (acc[1] or 0.0) + float(den)
            acc[2] += int(n or 0)
        has_den = _TRACE_PARTS[spec.signal][1] is not None
        out = []
        for labels, (num, den, n) in totals.items():
            if n == 0:
                continue
            if has_den:
                value = None if num is None or not den else num / den
            else:
                value = num
            named = {
                g: "" if v is None else str(v) for g, v in zip(spec.group_by, labels, strict=True)
            }
            out.append(SignalValue(named, value, n))
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
        kind = signal_kind(spec.signal)
        if kind == "assessment":
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
        human = spec.signal == "feedback_score"
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
        kind = signal_kind(spec.signal)
        out = []
        for key, rows in groups.items():
            labels = dict(zip(spec.group_by, key, strict=True))
            value = cls._value(spec, kind, rows)
            n = len(rows) if kind != "percentile" else value[1]
            if n:
                out.append(SignalValue(labels, value[0], n))
        return out

    @staticmethod
    def _value(spec: SignalSpec, kind: str, rows: list) -> tuple[float | None, int]:
        if kind == "assessment":
            if spec.signal == "scorer_pass_rate":
                return sum(s >= spec.pass_threshold for s in rows) / len(rows), len(rows)
            if spec.signal == "scorer_fail_rate":
                return sum(s < spec.pass_threshold for s in rows) / len(rows), len(rows)
            return sum(rows) / len(rows), len(rows)
        if kind == "percentile":
            what, q = percentile_of(spec.signal)
            attr = "latency_ms" if what == "latency" else "ttft_ms"
            pairs = [(getattr(e, attr), e.sample_weight) for e in rows]
            pairs = [(v, w) for v, w in pairs if v is not None]
            return weighted_percentile(pairs, q), len(pairs)
        w = [e.sample_weight for e in rows]
        s = spec.signal
        if s == "unpriced_share":
            rows = [e for e in rows if e.labels.get("model")]
            w = [e.sample_weight for e in rows]
            if not rows:
                return None, 0
            return sum(x for e, x in zip(rows, w, strict=True) if e.unpriced_spans) / sum(w), len(
                rows
            )
        if s == "latency_over":
            rows = [e for e in rows if e.latency_ms is not None]
            w = [e.sample_weight for e in rows]
            if not rows:
                return None, 0
            thr = spec.latency_threshold_ms or 0
            bad = sum(x for e, x in zip(rows, w, strict=True) if e.latency_ms > thr)
            return bad / sum(w), len(rows)
        if s == "request_count":
            return float(sum(w)), len(rows)
        if s == "error_rate":
            bad = sum(x for e, x in zip(rows, w, strict=True) if e.status == "ERROR")
            return bad / sum(w), len(rows)
        if s in ("tokens", "input_tokens", "output_tokens"):
            attr = "total_tokens" if s == "tokens" else s
            return float(sum(getattr(e, attr) * x for e, x in zip(rows, w, strict=True))), len(rows)
        if s == "cost_usd":
            priced = [
                (e.cost_usd, x) for e, x in zip(rows, w, strict=True) if e.cost_usd is not None
            ]
            return (sum(c * x for c, x in priced) if priced else None), len(rows)
        raise ValueError(f"unknown signal {s!r}")  # pragma: no cover - validated by SignalSpec
