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

from mlflow_llmops.store.queries import run_query

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
    empty = {"requests": 0, "errors": 0, "total_tokens": 0, "cost_usd": None, "unpriced_traces": 0}
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
    per_model: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        key = r["model"] or "?"
        per_model[key][r["day_ms"]] = per_model[key].get(r["day_ms"], 0.0) + (r["cost_usd"] or 0.0)
    labels = [datetime.fromtimestamp(d / 1000, UTC).strftime("%m-%d") for d in days]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    ranked = sorted(per_model, key=lambda m: -sum(per_model[m].values()))
    for model in ranked:
        vals = [per_model[model].get(d, 0.0) for d in days]
        ax.bar(labels, vals, bottom=bottom, label=model)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_title(f"LLM spend by model, {CHART_DAYS} days to {day.isoformat()} (USD)")
    ax.set_ylabel("USD")
    ax.tick_params(axis="x", labelrotation=45)
    if ranked:
        ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


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
) -> DailyReport:
    """Write ``cost-report-DAY.md`` (and ``.png`` when ``chart``) into ``out_dir``.

    ``target`` is what :func:`~mlflow_llmops.store.queries.run_query` takes: an
    engine on the tracking database with the views, or a DuckDB connection over
    a Parquet export. Totals are compared with the previous day and the same
    day a week earlier.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"experiment_id": experiment_id}
    window = {**common, "since_ms": _day_ms(day), "until_ms": _day_ms(day) + DAY_MS}
    cur, prev, week = _daily_totals(target, day, common, now, sql_dir)
    by_model = _by_model(target, day, common, now, sql_dir)
    by_task = run_query("cost_by_task_type", target, window, now=now, sql_dir=sql_dir).records()
    top = run_query(
        "top_traces", target, {**window, "limit": top_n}, now=now, sql_dir=sql_dir
    ).records()
    unpriced = run_query("unpriced_usage", target, window, now=now, sql_dir=sql_dir).records()
    totals = {
        "requests": cur["requests"],
        "errors": cur["errors"],
        "total_tokens": cur["total_tokens"] or 0,
        "cost_usd": cur["cost_usd"],
        "unpriced_traces": cur["unpriced_traces"],
        "previous_day_requests": prev["requests"],
        "previous_day_cost_usd": prev["cost_usd"],
        "last_week_requests": week["requests"],
        "last_week_cost_usd": week["cost_usd"],
    }

    name = f"cost-report-{day.isoformat()}"
    chart_path = out / f"{name}.png" if chart else None
    scope = f"experiment {experiment_id}" if experiment_id is not None else "all experiments"
    md = [
        f"# LLM cost report for {day.isoformat()}",
        "",
        f"UTC day, {scope}. Costs are ours where re-priced, else MLflow's; unpriced "
        "usage is listed, never counted as $0.",
        "",
        "## Totals",
        "",
        *_table(
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
                ["errors", cur["errors"], prev["errors"], "", week["errors"], ""],
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
                ],  # fmt: skip
            ],
        ),
    ]
    if chart_path is not None:
        md += ["", f"![spend by model, last {CHART_DAYS} days]({chart_path.name})"]
    md += ["", "## By model", ""]
    md += _table(
        ["model", "provider", "calls", "spend", "previous day", "change", "unpriced calls"],
        [
            [
                r["model"],
                r["provider"] or "",
                r["llm_calls"],
                _money(r["cost_usd"]),
                _money(r["previous_day_cost_usd"]),
                _change(r["cost_usd"], r["previous_day_cost_usd"]),
                r["unpriced_spans"],
            ]  # fmt: skip
            for r in by_model
        ],
    )
    md += ["", "## By task type", ""]
    md += _table(
        ["task type", "requests", "users", "spend", "per request", "share"],
        [
            [
                r["task_type"] or "(not set)",
                r["requests"],
                r["users"],
                _money(r["cost_usd"]),
                _money(r["cost_per_request_usd"]),
                "" if r["share_of_cost"] is None else f"{r['share_of_cost']:.1%}",
            ]  # fmt: skip
            for r in by_task
        ],
    )
    md += ["", f"## Top {top_n} traces", ""]
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
        ],  # fmt: skip
        [
            [
                f"`{r['trace_id']}`",
                datetime.fromtimestamp(r["timestamp_ms"] / 1000, UTC).strftime("%H:%M:%S"),
                r["user_id"] or "",
                r["task_type"] or "",
                r["model"] or "",
                r["status"],
                r["latency_ms"],
                r["total_tokens"],
                _money(r["cost_usd"]),
            ]  # fmt: skip
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
            ]  # fmt: skip
            for r in unpriced
        ],
    )
    if unpriced:
        md += ["", "Add these models to a price override file, then run "
               "`mlflow-llmops costs reprice`."]  # fmt: skip
    text = "\n".join(md) + "\n"

    md_path = out / f"{name}.md"
    if chart_path is not None:
        _chart(target, day, common, now, sql_dir, chart_path)
    md_path.write_text(text, encoding="utf-8")
    return DailyReport(day, text, md_path, chart_path, totals, by_model, by_task, top, unpriced)
