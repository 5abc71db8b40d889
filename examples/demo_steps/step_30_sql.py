"""Demo step 30: SQL cost analyses. Create the llmops_* views on the demo tracking
database, print a cost summary from the queries in sql/, write the daily report, and
run the same query on a Parquet export with DuckDB."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

ORDER = 30


def _ensure_traces(ctx, now: datetime) -> None:  # noqa: ANN001
    from mlflow import MlflowClient

    from mlflow_llmops.testing.seed import seed_traces, synthetic_traffic

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    exp = client.get_experiment_by_name(ctx.experiment_name)
    if exp and client.search_traces(locations=[exp.experiment_id], max_results=1):
        return
    start = (now - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    seed_traces(ctx.tracking_uri, ctx.experiment_name,
                synthetic_traffic(start, days=2, rate_per_min=0.03, seed=30))  # fmt: skip


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    from mlflow import MlflowClient

    from mlflow_llmops.analytics.export import export_parquet, read_export
    from mlflow_llmops.analytics.queries import run_query
    from mlflow_llmops.analytics.views import create_views
    from mlflow_llmops.cli.sql import render
    from mlflow_llmops.reports import daily_report
    from mlflow_llmops.statestore.state import make_engine

    now = datetime.now(UTC)
    ctx.banner("SQL cost analyses on the tracking database")
    _ensure_traces(ctx, now)
    exp_id = MlflowClient(ctx.tracking_uri).get_experiment_by_name(ctx.experiment_name)
    exp_id = exp_id.experiment_id
    engine = make_engine(ctx.tracking_uri)
    print("views:", ", ".join(create_views(engine)))
    window = {"since_ms": now - timedelta(days=30), "until_ms": now, "experiment_id": exp_id}

    by_model = run_query("cost_by_model_day", engine, window, now=now)
    summary: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0, 0, 0])
    for r in by_model.records():
        s = summary[(r["model"], r["provider"] or "-")]
        s[0] += r["llm_calls"]
        s[1] += r["cost_usd"] or 0.0
        s[2] += r["llmops_priced_spans"]
        s[3] += r["mlflow_priced_spans"]
        s[4] += r["unpriced_spans"]
    print(f"\n{'model':<30} {'provider':<10} {'calls':>6} {'cost USD':>12} {'ours':>5} "
          f"{'mlflow':>6} {'unpriced':>8}")  # fmt: skip
    for (model, provider), (calls, cost, ours, theirs, unpriced) in sorted(
        summary.items(), key=lambda kv: -kv[1][1]
    ):
        shown = f"{cost:>12.6f}" if ours + theirs else "unpriced".rjust(12)
        print(f"{model:<30} {provider:<10} {calls:>6} {shown} {ours:>5} {theirs:>6} {unpriced:>8}")

    print("\nMost expensive requests (sql/top_traces.sql):")
    print(render(run_query("top_traces", engine, {**window, "limit": 5}, now=now), "table"))
    print("\nMonth to date and forecast (sql/month_forecast.sql):")
    f = run_query("month_forecast", engine, {"experiment_id": exp_id}, now=now).records()[0]
    print(f"  spent ${f['spend_mtd_usd']:.4f} so far; month-end forecast "
          f"${f['forecast_linear_usd'] or 0:.4f} (linear), "
          f"${f['forecast_recent_usd'] or 0:.4f} (last-7-day rate)")  # fmt: skip

    report = daily_report(engine, now.date(), ctx.workdir / "reports", now=now,
                          experiment_id=exp_id)  # fmt: skip
    print(f"\ndaily report: {report.markdown_path} (+ {report.chart_path.name})")

    out = ctx.workdir / "export"
    result = export_parquet(engine, out, now=now, experiment_ids=[exp_id])
    print(result.summary())
    duck = read_export(out)
    same = run_query("top_traces", duck, {**window, "limit": 5}, now=now).rows
    print("same top traces from Parquet with DuckDB:",
          same == run_query("top_traces", engine, {**window, "limit": 5}, now=now).rows)  # fmt: skip
    ctx.data["sql_views"] = True
    engine.dispose()
