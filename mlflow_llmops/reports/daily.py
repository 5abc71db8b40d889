"""The daily cost report: Markdown (and a PNG chart) from the queries in ``sql/``.

Every number comes from a query in ``sql/`` run on the given target (the tracking
database or a Parquet export), so the report and ``mlflow-llmops sql run`` never
disagree, and the same data gives the same Markdown on SQLite, PostgreSQL and DuckDB.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlflow_llmops.analytics.queries import run_query

DAY_MS = 86_400_000
CHART_DAYS = 14


@dataclass
class DailyReport:
    """What :func:`daily_report` wrote, and the figures behind it."""

    day: date
    markdown: str
    markdown_path: Path
    chart_path: Path | None
    totals: dict[str, Any]
    by_model: list[dict[str, Any]] = field(default_factory=list)
    by_task_type: list[dict[str, Any]] = field(default_factory=list)
    top_traces: list[dict[str, Any]] = field(default_factory=list)
    unpriced: list[dict[str, Any]] = field(default_factory=list)
    month: dict[str, Any] = field(default_factory=dict)
    by_user: list[dict[str, Any]] = field(default_factory=list)
    by_tenant: list[dict[str, Any]] = field(default_factory=list)
    cache: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    scorers: list[dict[str, Any]] = field(default_factory=list)
    #: some figure is extrapolated from sampled traces (a weight other than 1)
    estimated: bool = False


def previous_day(now: datetime) -> date:
    """The UTC day before ``now``: what a report run from cron in the morning covers."""
    return (now.astimezone(UTC) - timedelta(days=1)).date()


def _day_ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def _money(v: float | None) -> str:
    return "unpriced" if v is None else f"${v:,.4f}"


def _change(cur: float | None, prev: float | None) -> str:
    if cur is None or prev is None:
        return "n/a"
    if prev == 0:
        return "new" if cur else "0%"
    return f"{(cur - prev) / prev:+.1%}"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["_none_"]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return out


#: A day without traffic cost $0 (not "unpriced": nothing went unpriced).
_EMPTY_DAY: dict[str, Any] = {
    "requests": 0,
    "kept_traces": 0,
    "errors": 0,
    "total_tokens": 0,
    "cost_usd": 0.0,
    "unpriced_traces": 0,
    "estimated": 0,
}


@dataclass(frozen=True)
class ReportParams:
    """The inputs of one daily report: what to query, for which UTC day, where to write."""

    target: Any
    day: date
    out_dir: Path
    now: datetime
    experiment_id: str | int | None = None
    top_n: int = 10
    chart: bool = True
    sql_dir: str | Path | None = None
    ui_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))

    @property
    def start_ms(self) -> int:
        """Start of the report's day, in epoch milliseconds."""
        return _day_ms(self.day)

    @property
    def common(self) -> dict[str, Any]:
        """Parameters every query takes."""
        return {"experiment_id": self.experiment_id}

    @property
    def window(self) -> dict[str, Any]:
        """Query parameters for the report's day."""
        return {**self.common, "since_ms": self.start_ms, "until_ms": self.start_ms + DAY_MS}

    @property
    def name(self) -> str:
        """File name of the report, without suffix."""
        return f"cost-report-{self.day.isoformat()}"

    @property
    def chart_path(self) -> Path | None:
        """Where the chart goes, or None without one."""
        return self.out_dir / f"{self.name}.png" if self.chart else None

    def query(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of ``sql/<name>.sql`` on the report's target."""
        return run_query(name, self.target, params, now=self.now, sql_dir=self.sql_dir).records()


@dataclass(frozen=True)
class ReportSections:
    """The query results a report is rendered from, one field per section."""

    current: dict[str, Any]
    previous: dict[str, Any]
    last_week: dict[str, Any]
    by_model: list[dict[str, Any]]
    by_task_type: list[dict[str, Any]]
    top_traces: list[dict[str, Any]]
    unpriced: list[dict[str, Any]]
    by_user: list[dict[str, Any]]
    by_tenant: list[dict[str, Any]]
    cache: list[dict[str, Any]]
    latency: list[dict[str, Any]]
    scorers: list[dict[str, Any]]
    month: dict[str, Any]

    @property
    def estimated(self) -> bool:
        """Some figure is extrapolated from sampled traces (a weight other than 1)."""
        groups = (
            [self.current, self.previous, self.last_week, self.month],
            self.by_model,
            self.by_task_type,
            self.top_traces,
            self.unpriced,
            self.by_user,
            self.by_tenant,
            self.cache,
            self.latency,
            self.scorers,
        )
        return any(
            r.get("estimated") or (r.get("sample_weight") or 1) != 1
            for rows in groups
            for r in rows
        )

    def totals(self) -> dict[str, Any]:
        """The day's totals beside the previous day's and the same day last week's."""
        cur, prev, week = self.current, self.previous, self.last_week
        return {
            "requests": cur["requests"],
            "kept_traces": cur["kept_traces"],
            "errors": cur["errors"],
            "total_tokens": cur["total_tokens"] or 0,
            "cost_usd": cur["cost_usd"],
            "unpriced_traces": cur["unpriced_traces"],
            "previous_day_requests": prev["requests"],
            "previous_day_cost_usd": prev["cost_usd"],
            "last_week_requests": week["requests"],
            "last_week_cost_usd": week["cost_usd"],
            "estimated": self.estimated,
        }


# --------------------------------------------------------------------------- gather
def _daily_totals(p: ReportParams) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Totals of the day, the previous day and the same day a week earlier."""
    start = p.start_ms
    rows = p.query(
        "daily_totals", {**p.common, "since_ms": start - 7 * DAY_MS, "until_ms": start + DAY_MS}
    )
    by_day = {r["day_ms"]: r for r in rows}
    cur, prev, week = (
        by_day.get(ms, dict(_EMPTY_DAY)) for ms in (start, start - DAY_MS, start - 7 * DAY_MS)
    )
    return cur, prev, week


def _by_model(p: ReportParams) -> list[dict[str, Any]]:
    """Model rows for the day with the previous day's cost beside them."""
    start = p.start_ms
    rows = p.query(
        "cost_by_model_day", {**p.common, "since_ms": start - DAY_MS, "until_ms": start + DAY_MS}
    )
    prev = {(r["model"], r["provider"]): r["cost_usd"] for r in rows if r["day_ms"] < start}
    out = []
    for r in rows:
        if r["day_ms"] == start:
            out.append({**r, "previous_day_cost_usd": prev.get((r["model"], r["provider"]))})
    out.sort(key=lambda r: (-(r["cost_usd"] or 0.0), r["model"] or "", r["provider"] or ""))
    return out


def _month_to_date(p: ReportParams) -> dict[str, Any]:
    """Month to date and forecast, as of the end of the day (or ``now`` if earlier)."""
    month_start, month_end = _month_bounds(p.day)
    as_of = min(p.start_ms + DAY_MS, int(p.now.timestamp() * 1000))
    params = {
        **p.common,
        "month_start_ms": month_start,
        "month_end_ms": month_end,
        "now_ms": as_of,
    }
    return p.query("month_forecast", params)[0]


def gather_sections(p: ReportParams) -> ReportSections:
    """Run every query of the report (nothing is rendered or written here)."""
    cur, prev, week = _daily_totals(p)
    window = p.window
    return ReportSections(
        current=cur,
        previous=prev,
        last_week=week,
        by_model=_by_model(p),
        by_task_type=p.query("cost_by_task_type", window),
        top_traces=p.query("top_traces", {**window, "limit": p.top_n}),
        unpriced=p.query("unpriced_usage", window),
        by_user=p.query("cost_by_user", {**window, "limit": p.top_n}),
        by_tenant=p.query("cost_by_tenant", {**window, "limit": p.top_n}),
        cache=p.query("cache_savings", window),
        latency=p.query("latency_errors_by_model", window),
        scorers=p.query("scorer_quality", window),
        month=_month_to_date(p),
    )


# --------------------------------------------------------------------------- chart
def chart_series(rows: list[dict[str, Any]], days: list[int]) -> tuple[dict, dict]:
    """(model -> day -> priced spend, unpriced model -> calls) from ``cost_by_model_day``
    rows: a model without any price is left out of the bars (a zero bar would read as
    free) and named apart; a partly priced model shows its priced spend."""
    per_model: dict[str, dict[int, float]] = defaultdict(dict)
    unpriced: dict[str, int] = defaultdict(int)
    for r in rows:
        key = r["model"] or "?"
        if r["unpriced_spans"]:
            unpriced[key] += r["unpriced_spans"]
        if r["cost_usd"] is not None:
            per_model[key][r["day_ms"]] = per_model[key].get(r["day_ms"], 0.0) + r["cost_usd"]
    return dict(per_model), {m: n for m, n in unpriced.items() if m not in per_model}


def _chart(p: ReportParams, path: Path) -> None:
    """Stacked daily spend by model over the last two weeks, the report's day last."""
    start = p.start_ms
    rows = p.query(
        "cost_by_model_day",
        {**p.common, "since_ms": start - (CHART_DAYS - 1) * DAY_MS, "until_ms": start + DAY_MS},
    )
    days = [start - i * DAY_MS for i in range(CHART_DAYS - 1, -1, -1)]
    per_model, unpriced = chart_series(rows, days)
    estimated = any(r["estimated"] for r in rows)
    _draw_chart(p.day, days, per_model, unpriced, estimated, path)


def _draw_chart(
    day: date,
    days: list[int],
    per_model: dict[str, dict[int, float]],
    unpriced: dict[str, int],
    estimated: bool,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [datetime.fromtimestamp(d / 1000, UTC).strftime("%m-%d") for d in days]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    ranked = sorted(per_model, key=lambda m: -sum(per_model[m].values()))
    for model in ranked:
        vals = [per_model[model].get(d, 0.0) for d in days]
        ax.bar(labels, vals, bottom=bottom, label=model)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    title = f"LLM spend by model, {CHART_DAYS} days to {day.isoformat()} (USD"
    ax.set_title(title + (", estimated from sampled traces)" if estimated else ")"))
    ax.set_ylabel("USD")
    ax.tick_params(axis="x", labelrotation=45)
    if ranked:
        ax.legend(fontsize="small", loc="upper left")
    if unpriced:
        names = ", ".join(f"{m} ({n:,} calls)" for m, n in sorted(unpriced.items()))
        fig.text(0.01, 0.01, f"unpriced (cost unknown, not shown): {names}", fontsize="small")
    fig.tight_layout(rect=(0, 0.04 if unpriced else 0, 1, 1))
    fig.savefig(path, format="png")
    plt.close(fig)


def trace_url(ui_url: str, experiment_id: Any, trace_id: str) -> str:
    """The MLflow UI page of one trace (the experiment's Traces tab with it open)."""
    base = ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/traces?selectedEvaluationId={trace_id}"


def _month_bounds(day: date) -> tuple[int, int]:
    first = date(day.year, day.month, 1)
    nxt = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return _day_ms(first), _day_ms(nxt)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.1%}"


def _num(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _as_is(v: Any) -> Any:
    return v


def _error_rate(r: dict[str, Any]) -> str:
    return _pct(r["errors"] / r["requests"]) if r["requests"] else ""


# --------------------------------------------------------------------------- render
def _md_header(p: ReportParams, s: ReportSections) -> list[str]:
    scope = f"experiment {p.experiment_id}" if p.experiment_id is not None else "all experiments"
    md = [
        f"# LLM cost report for {p.day.isoformat()}",
        "",
        f"UTC day, {scope}. Costs are ours where re-priced, else MLflow's; unpriced "
        "usage is listed, never counted as $0.",
    ]
    if s.estimated:
        md += [
            "",
            f"**Estimates.** Traces are sampled: counts, tokens and spend are extrapolated "
            f"from the {s.current['kept_traces']:,} traces stored that day, each counted "
            "`llmops.sample_weight` times (1/ratio if kept by the head ratio, 1 if kept by a "
            "tail rule). `stored` columns give the raw counts.",
        ]
    return md


def _md_totals(p: ReportParams, s: ReportSections) -> list[str]:
    days = (s.current, s.previous, s.last_week)

    def compared(label: str, vals: list[Any], fmt: Callable[[Any], Any] = _as_is) -> list[Any]:
        cur, prev, week = vals
        return [label, fmt(cur), fmt(prev), _change(cur, prev), fmt(week), _change(cur, week)]

    def plain(label: str, vals: list[Any]) -> list[Any]:
        return [label, vals[0], vals[1], "", vals[2], ""]

    def col(key: str) -> list[Any]:
        return [d[key] for d in days]

    rows = [
        compared("spend", col("cost_usd"), _money),
        compared("requests", col("requests")),
        plain("traces stored", col("kept_traces")),
        plain("errors", col("errors")),
        plain("error rate", [_error_rate(d) for d in days]),
        compared("tokens", [d["total_tokens"] or 0 for d in days]),
        plain("traces with unpriced calls", col("unpriced_traces")),
    ]
    headers = ["", "this day", "previous day", "change", "same day last week", "change"]
    return ["", "## Totals", "", *_table(headers, rows)]


def _md_month(p: ReportParams, s: ReportSections) -> list[str]:
    month_start, _ = _month_bounds(p.day)
    month_name = datetime.fromtimestamp(month_start / 1000, UTC).strftime("%B %Y")
    m = s.month
    headers = [
        "spend to date",
        "last 7 days",
        "days elapsed",
        "forecast (month average)",
        "forecast (last 7 days' rate)",
    ]
    row = [
        _money(m["spend_mtd_usd"]),
        _money(m["spend_last_7d_usd"]),
        f"{m['elapsed_days']:.1f}",
        _money(m["forecast_linear_usd"]),
        _money(m["forecast_recent_usd"]),
    ]
    md = ["", f"## Month to date ({month_name})", "", *_table(headers, [row])]
    if p.chart_path is not None:
        md += ["", f"![spend by model, last {CHART_DAYS} days]({p.chart_path.name})"]
    return md


def _md_by_model(p: ReportParams, s: ReportSections) -> list[str]:
    headers = [
        "model",
        "provider",
        "calls",
        "stored",
        "spend",
        "previous day",
        "change",
        "unpriced calls",
    ]
    rows = [
        [
            r["model"],
            r["provider"] or "",
            r["llm_calls"],
            r["kept_spans"],
            _money(r["cost_usd"]),
            _money(r["previous_day_cost_usd"]),
            _change(r["cost_usd"], r["previous_day_cost_usd"]),
            r["unpriced_spans"],
        ]
        for r in s.by_model
    ]
    return ["", "## By model", "", *_table(headers, rows)]


def _md_latency(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["model", "calls", "errors", "error rate", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    rows = [
        [
            r["model"],
            r["calls"],
            r["errors"],
            _pct(r["error_rate"]),
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["max_ms"],
        ]
        for r in s.latency
    ]
    return ["", "## Errors and latency by model", "", *_table(headers, rows)]


def _md_by_task_type(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["task type", "requests", "stored", "users", "spend", "per request", "share"]
    rows = [
        [
            r["task_type"] or "(not set)",
            r["requests"],
            r["kept_traces"],
            r["users"],
            _money(r["cost_usd"]),
            _money(r["cost_per_request_usd"]),
            _pct(r["share_of_cost"]),
        ]
        for r in s.by_task_type
    ]
    return ["", "## By task type", "", *_table(headers, rows)]


def _md_by_user(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["user", "requests", "stored", "sessions", "tokens", "spend", "per request"]
    rows = [
        [
            r["user_id"] or "(anonymous)",
            r["requests"],
            r["kept_traces"],
            r["sessions"],
            r["total_tokens"],
            _money(r["cost_usd"]),
            _money(r["cost_per_request_usd"]),
        ]
        for r in s.by_user
    ]
    return ["", f"## Spend by user (top {p.top_n})", "", *_table(headers, rows)]


def _md_by_tenant(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["tenant", "requests", "stored", "users", "tokens", "spend", "per request", "share"]
    rows = [
        [
            r["tenant"] or "(not set)",
            r["requests"],
            r["kept_traces"],
            r["users"],
            r["total_tokens"],
            _money(r["cost_usd"]),
            _money(r["cost_per_request_usd"]),
            _pct(r["share_of_cost"]),
        ]
        for r in s.by_tenant
    ]
    return ["", f"## Spend by tenant (top {p.top_n})", "", *_table(headers, rows)]


def _md_cache(p: ReportParams, s: ReportSections) -> list[str]:
    headers = [
        "model",
        "provider",
        "cached input tokens",
        "cache hit ratio",
        "cached tokens cost",
        "cache writes cost",
        "saved",
    ]
    rows = [
        [
            r["model"],
            r["provider"] or "",
            r["cache_read_tokens"],
            _pct(r["cache_hit_ratio"]),
            _money(r["cache_read_cost_usd"]),
            _money(r["cache_write_cost_usd"]),
            _money(r["saved_usd"]),
        ]
        for r in s.cache
    ]
    md = ["", "## Cache savings", "", *_table(headers, rows)]
    if not s.cache and s.by_model:
        md += ["", "No re-priced spans that day: run `mlflow-llmops costs reprice`."]
    return md


def _md_scorers(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["scorer", "source", "evaluations", "scored", "failed", "mean score", "min", "max"]
    rows = [
        [
            r["scorer"],
            r["source_type"] or "",
            r["evaluations"],
            r["scored"],
            r["failed"],
            _num(r["mean_score"]),
            _num(r["min_score"]),
            _num(r["max_score"]),
        ]
        for r in s.scorers
    ]
    return ["", "## Scorer quality", "", *_table(headers, rows)]


def _trace_cell(p: ReportParams, r: dict[str, Any]) -> str:
    if not p.ui_url:
        return f"`{r['trace_id']}`"
    return f"[`{r['trace_id']}`]({trace_url(p.ui_url, r['experiment_id'], r['trace_id'])})"


def _md_top_traces(p: ReportParams, s: ReportSections) -> list[str]:
    headers = [
        "trace",
        "time (UTC)",
        "user",
        "task type",
        "model",
        "status",
        "latency ms",
        "tokens",
        "spend",
        "weight",
    ]
    rows = [
        [
            _trace_cell(p, r),
            datetime.fromtimestamp(r["timestamp_ms"] / 1000, UTC).strftime("%H:%M:%S"),
            r["user_id"] or "",
            r["task_type"] or "",
            r["model"] or "",
            r["status"],
            r["latency_ms"],
            r["total_tokens"],
            _money(r["cost_usd"]),
            _num(r["sample_weight"]),
        ]
        for r in s.top_traces
    ]
    return ["", f"## Top {p.top_n} traces", "", *_table(headers, rows)]


def _md_unpriced(p: ReportParams, s: ReportSections) -> list[str]:
    headers = ["model", "provider", "calls", "traces", "input tokens", "output tokens"]
    rows = [
        [
            r["model"],
            r["provider"] or "",
            r["spans"],
            r["traces"],
            r["input_tokens"],
            r["output_tokens"],
        ]
        for r in s.unpriced
    ]
    md = ["", "## Unpriced usage", "", *_table(headers, rows)]
    if s.unpriced:
        md += [
            "",
            "Add these models to a price override file, then run `mlflow-llmops costs reprice`.",
        ]
    return md


#: The report's sections after its header, in order.
_SECTIONS = (
    _md_totals,
    _md_month,
    _md_by_model,
    _md_latency,
    _md_by_task_type,
    _md_by_user,
    _md_by_tenant,
    _md_cache,
    _md_scorers,
    _md_top_traces,
    _md_unpriced,
)


def render_markdown(p: ReportParams, s: ReportSections) -> str:
    """The report's Markdown (pure: no query, no file)."""
    md = _md_header(p, s)
    for section in _SECTIONS:
        md += section(p, s)
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------- run
def run_report(p: ReportParams) -> DailyReport:
    """Gather, render, then write the chart and the Markdown file."""
    p.out_dir.mkdir(parents=True, exist_ok=True)
    s = gather_sections(p)
    text = render_markdown(p, s)
    md_path = p.out_dir / f"{p.name}.md"
    if p.chart_path is not None:
        _chart(p, p.chart_path)
    md_path.write_text(text, encoding="utf-8")
    return DailyReport(
        day=p.day,
        markdown=text,
        markdown_path=md_path,
        chart_path=p.chart_path,
        totals=s.totals(),
        by_model=s.by_model,
        by_task_type=s.by_task_type,
        top_traces=s.top_traces,
        unpriced=s.unpriced,
        month=s.month,
        by_user=s.by_user,
        by_tenant=s.by_tenant,
        cache=s.cache,
        latency=s.latency,
        scorers=s.scorers,
        estimated=s.estimated,
    )


def daily_report(
    target: Any,
    day: date,
    out_dir: str | Path,
    *,
    now: datetime,
    experiment_id: str | int | None = None,
    top_n: int = 10,
    chart: bool = True,
    sql_dir: str | Path | None = None,
    ui_url: str | None = None,
) -> DailyReport:
    """Write ``cost-report-DAY.md`` (and ``.png`` when ``chart``) into ``out_dir``.

    ``target`` is what :func:`~mlflow_llmops.analytics.queries.run_query` takes: an
    engine on the tracking database with the views, or a DuckDB connection over
    a Parquet export. Totals are compared with the previous day and the same
    day a week earlier; the month to date and its forecast are as of the end of
    ``day`` (or ``now`` if earlier). ``ui_url`` (the MLflow server's address) turns
    the top traces into links to the MLflow UI. Under sampling the figures are
    weighted estimates and the report says so. The stages are
    :func:`gather_sections`, :func:`render_markdown` and :func:`run_report`.
    """
    params = ReportParams(
        target,
        day,
        Path(out_dir),
        now,
        experiment_id=experiment_id,
        top_n=top_n,
        chart=chart,
        sql_dir=sql_dir,
        ui_url=ui_url,
    )
    return run_report(params)
