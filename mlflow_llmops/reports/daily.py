"""The daily cost report: Markdown (and a PNG chart) from the queries in ``sql/``.

Every number comes from a query in ``sql/`` run on the given target (the tracking
database or a Parquet export), so the report and ``mlflow-llmops sql run`` never
disagree, and the same data gives the same Markdown on SQLite, PostgreSQL and DuckDB.
"""

from __future__ import annotations

from collections import defaultdict
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


def _daily_totals(target: Any, day: date, common: dict[str, Any], now: datetime, sql_dir: Any):
    start = _day_ms(day)
    rows = run_query(
        "daily_totals",
        target,
        {**common, "since_ms": start - 7 * DAY_MS, "until_ms": start + DAY_MS},
        now=now,
        sql_dir=sql_dir,
    ).records()
    by_day = {r["day_ms"]: r for r in rows}
    # A day without traffic cost $0 (not "unpriced": nothing went unpriced).
    empty = {
        "requests": 0,
        "kept_traces": 0,
        "errors": 0,
        "total_tokens": 0,
        "cost_usd": 0.0,
        "unpriced_traces": 0,
        "estimated": 0,
    }
    return (
        by_day.get(start, empty),
        by_day.get(start - DAY_MS, empty),
        by_day.get(start - 7 * DAY_MS, empty),
    )


def _by_model(target: Any, day: date, common: dict[str, Any], now: datetime, sql_dir: Any):
    """Model rows for ``day`` with the previous day's cost beside them."""
    start = _day_ms(day)
    rows = run_query(
        "cost_by_model_day",
        target,
        {**common, "since_ms": start - DAY_MS, "until_ms": start + DAY_MS},
        now=now,
        sql_dir=sql_dir,
    ).records()
    prev = {(r["model"], r["provider"]): r["cost_usd"] for r in rows if r["day_ms"] < start}
    out = []
    for r in rows:
        if r["day_ms"] == start:
            out.append({**r, "previous_day_cost_usd": prev.get((r["model"], r["provider"]))})
    out.sort(key=lambda r: (-(r["cost_usd"] or 0.0), r["model"] or "", r["provider"] or ""))
    return out


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


def _chart(target: Any, day: date, common: dict[str, Any], now: datetime, sql_dir: Any, path):
    """Stacked daily spend by model over the last two weeks, the report's day last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = _day_ms(day)
    rows = run_query(
        "cost_by_model_day",
        target,
        {**common, "since_ms": start - (CHART_DAYS - 1) * DAY_MS, "until_ms": start + DAY_MS},
        now=now,
        sql_dir=sql_dir,
    ).records()
    days = [start - i * DAY_MS for i in range(CHART_DAYS - 1, -1, -1)]
    per_model, unpriced = chart_series(rows, days)
    labels = [datetime.fromtimestamp(d / 1000, UTC).strftime("%m-%d") for d in days]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    ranked = sorted(per_model, key=lambda m: -sum(per_model[m].values()))
    for model in ranked:
        vals = [per_model[model].get(d, 0.0) for d in days]
        ax.bar(labels, vals, bottom=bottom, label=model)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    estimated = any(r["estimated"] for r in rows)
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
    weighted estimates and the report says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"experiment_id": experiment_id}
    start = _day_ms(day)
    window = {**common, "since_ms": start, "until_ms": start + DAY_MS}

    def q(name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return run_query(name, target, params, now=now, sql_dir=sql_dir).records()

    cur, prev, week = _daily_totals(target, day, common, now, sql_dir)
    by_model = _by_model(target, day, common, now, sql_dir)
    by_task = q("cost_by_task_type", window)
    top = q("top_traces", {**window, "limit": top_n})
    unpriced = q("unpriced_usage", window)
    by_user = q("cost_by_user", {**window, "limit": top_n})
    by_tenant = q("cost_by_tenant", {**window, "limit": top_n})
    cache = q("cache_savings", window)
    latency = q("latency_errors_by_model", window)
    scorers = q("scorer_quality", window)
    month_start, month_end = _month_bounds(day)
    as_of = min(start + DAY_MS, int(now.timestamp() * 1000))
    month = q(
        "month_forecast",
        {**common, "month_start_ms": month_start, "month_end_ms": month_end, "now_ms": as_of},
    )[0]
    estimated = any(
        r.get("estimated") or (r.get("sample_weight") or 1) != 1
        for rows in (
            [cur, prev, week, month],
            by_model,
            by_task,
            top,
            unpriced,
            by_user,
            by_tenant,
            cache,
            latency,
            scorers,
        )
        for r in rows
    )
    totals = {
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
        "estimated": estimated,
    }

    name = f"cost-report-{day.isoformat()}"
    chart_path = out / f"{name}.png" if chart else None
    scope = f"experiment {experiment_id}" if experiment_id is not None else "all experiments"
    md = [
        f"# LLM cost report for {day.isoformat()}",
        "",
        f"UTC day, {scope}. Costs are ours where re-priced, else MLflow's; unpriced "
        "usage is listed, never counted as $0.",
    ]
    if estimated:
        md += [
            "",
            f"**Estimates.** Traces are sampled: counts, tokens and spend are extrapolated "
            f"from the {cur['kept_traces']:,} traces stored that day, each counted "
            "`llmops.sample_weight` times (1/ratio if kept by the head ratio, 1 if kept by a "
            "tail rule). `stored` columns give the raw counts.",
        ]

    def err_rate(r: dict[str, Any]) -> str:
        return _pct(r["errors"] / r["requests"]) if r["requests"] else ""

    md += ["", "## Totals", ""]
    md += _table(
        ["", "this day", "previous day", "change", "same day last week", "change"],
        [
            [
                "spend",
                _money(cur["cost_usd"]),
                _money(prev["cost_usd"]),
                _change(cur["cost_usd"], prev["cost_usd"]),
                _money(week["cost_usd"]),
                _change(cur["cost_usd"], week["cost_usd"]),
            ],
            [
                "requests",
                cur["requests"],
                prev["requests"],
                _change(cur["requests"], prev["requests"]),
                week["requests"],
                _change(cur["requests"], week["requests"]),
            ],
            ["traces stored", cur["kept_traces"], prev["kept_traces"], "", week["kept_traces"], ""],
            ["errors", cur["errors"], prev["errors"], "", week["errors"], ""],
            ["error rate", err_rate(cur), err_rate(prev), "", err_rate(week), ""],
            [
                "tokens",
                cur["total_tokens"] or 0,
                prev["total_tokens"] or 0,
                _change(cur["total_tokens"] or 0, prev["total_tokens"] or 0),
                week["total_tokens"] or 0,
                _change(cur["total_tokens"] or 0, week["total_tokens"] or 0),
            ],
            [
                "traces with unpriced calls",
                cur["unpriced_traces"],
                prev["unpriced_traces"],
                "",
                week["unpriced_traces"],
                "",
            ],
        ],
    )
    month_name = datetime.fromtimestamp(month_start / 1000, UTC).strftime("%B %Y")
    md += ["", f"## Month to date ({month_name})", ""]
    md += _table(
        [
            "spend to date",
            "last 7 days",
            "days elapsed",
            "forecast (month average)",
            "forecast (last 7 days' rate)",
        ],
        [
            [
                _money(month["spend_mtd_usd"]),
                _money(month["spend_last_7d_usd"]),
                f"{month['elapsed_days']:.1f}",
                _money(month["forecast_linear_usd"]),
                _money(month["forecast_recent_usd"]),
            ]
        ],
    )
    if chart_path is not None:
        md += ["", f"![spend by model, last {CHART_DAYS} days]({chart_path.name})"]
    md += ["", "## By model", ""]
    md += _table(
        [
            "model",
            "provider",
            "calls",
            "stored",
            "spend",
            "previous day",
            "change",
            "unpriced calls",
        ],
        [
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
            for r in by_model
        ],
    )
    md += ["", "## Errors and latency by model", ""]
    md += _table(
        ["model", "calls", "errors", "error rate", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
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
            for r in latency
        ],
    )
    md += ["", "## By task type", ""]
    md += _table(
        ["task type", "requests", "stored", "users", "spend", "per request", "share"],
        [
            [
                r["task_type"] or "(not set)",
                r["requests"],
                r["kept_traces"],
                r["users"],
                _money(r["cost_usd"]),
                _money(r["cost_per_request_usd"]),
                _pct(r["share_of_cost"]),
            ]
            for r in by_task
        ],
    )
    md += ["", f"## Spend by user (top {top_n})", ""]
    md += _table(
        ["user", "requests", "stored", "sessions", "tokens", "spend", "per request"],
        [
            [
                r["user_id"] or "(anonymous)",
                r["requests"],
                r["kept_traces"],
                r["sessions"],
                r["total_tokens"],
                _money(r["cost_usd"]),
                _money(r["cost_per_request_usd"]),
            ]
            for r in by_user
        ],
    )
    md += ["", f"## Spend by tenant (top {top_n})", ""]
    md += _table(
        ["tenant", "requests", "stored", "users", "tokens", "spend", "per request", "share"],
        [
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
            for r in by_tenant
        ],
    )
    md += ["", "## Cache savings", ""]
    md += _table(
        [
            "model",
            "provider",
            "cached input tokens",
            "cache hit ratio",
            "cached tokens cost",
            "cache writes cost",
            "saved",
        ],
        [
            [
                r["model"],
                r["provider"] or "",
                r["cache_read_tokens"],
                _pct(r["cache_hit_ratio"]),
                _money(r["cache_read_cost_usd"]),
                _money(r["cache_write_cost_usd"]),
                _money(r["saved_usd"]),
            ]
            for r in cache
        ],
    )
    if not cache and by_model:
        md += ["", "No re-priced spans that day: run `mlflow-llmops costs reprice`."]
    md += ["", "## Scorer quality", ""]
    md += _table(
        ["scorer", "source", "evaluations", "scored", "failed", "mean score", "min", "max"],
        [
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
            for r in scorers
        ],
    )
    md += ["", f"## Top {top_n} traces", ""]

    def trace_cell(r: dict[str, Any]) -> str:
        if not ui_url:
            return f"`{r['trace_id']}`"
        return f"[`{r['trace_id']}`]({trace_url(ui_url, r['experiment_id'], r['trace_id'])})"

    md += _table(
        [
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
        ],
        [
            [
                trace_cell(r),
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
            for r in top
        ],
    )
    md += ["", "## Unpriced usage", ""]
    md += _table(
        ["model", "provider", "calls", "traces", "input tokens", "output tokens"],
        [
            [
                r["model"],
                r["provider"] or "",
                r["spans"],
                r["traces"],
                r["input_tokens"],
                r["output_tokens"],
            ]
            for r in unpriced
        ],
    )
    if unpriced:
        md += [
            "",
            "Add these models to a price override file, then run `mlflow-llmops costs reprice`.",
        ]
    text = "\n".join(md) + "\n"

    md_path = out / f"{name}.md"
    if chart_path is not None:
        _chart(target, day, common, now, sql_dir, chart_path)
    md_path.write_text(text, encoding="utf-8")
    return DailyReport(
        day,
        text,
        md_path,
        chart_path,
        totals,
        by_model,
        by_task,
        top,
        unpriced,
        month,
        by_user,
        by_tenant,
        cache,
        latency,
        scorers,
        estimated,
    )
