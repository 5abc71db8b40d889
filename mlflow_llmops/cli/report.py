"""``mlflow-llmops report daily``: the daily cost report (Markdown + PNG), cron-friendly."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click

from mlflow_llmops.cli import AppContext, pass_app


@click.group("report")
def report_group() -> None:
    """Reports built from the SQL analyses."""


@report_group.command("daily")
@click.option("--date", "day", help="UTC day (YYYY-MM-DD); default: yesterday.")
@click.option("--out", type=click.Path(file_okay=False), help="Default: analytics.report_dir.")
@click.option("--parquet", type=click.Path(file_okay=False), help="Read a Parquet export.")
@click.option("--experiment-id", help="Only this experiment.")
@click.option("--no-chart", is_flag=True, help="Skip the PNG chart.")
@pass_app
def daily_cmd(
    app: AppContext,
    day: str | None,
    out: str | None,
    parquet: str | None,
    experiment_id: str | None,
    no_chart: bool,
) -> None:
    """Write cost-report-DAY.md (and .png): totals against the previous day and week,
    month to date and forecast, spend by model, task type, user and tenant, errors and
    latency, cache savings, scorer quality, top traces (linked to the MLflow UI) and
    unpriced usage; estimates under sampling. Example cron line (06:00 UTC daily):
    `0 6 * * * mlflow-llmops report daily --out /srv/reports`."""
    from mlflow_llmops.analytics.queries import open_target
    from mlflow_llmops.errors import ConfigError
    from mlflow_llmops.reports.daily import daily_report, previous_day

    now = datetime.now(UTC)
    try:
        d = date.fromisoformat(day) if day else previous_day(now)
    except ValueError:
        raise ConfigError(f"--date {day!r}: write the day as YYYY-MM-DD") from None
    cfg = app.config.analytics
    exp = experiment_id or (cfg.experiment_ids[0] if len(cfg.experiment_ids) == 1 else None)
    report = daily_report(
        open_target(app.config, parquet),
        d,
        out or cfg.report_dir,
        now=now,
        experiment_id=exp,
        top_n=cfg.report_top_traces,
        chart=not no_chart,
        sql_dir=cfg.sql_dir,
        ui_url=cfg.ui_url or _server_url(app.config.tracking.uri),
    )
    t = report.totals
    spend = "unpriced" if t["cost_usd"] is None else f"${t['cost_usd']:.4f}"
    est = ", estimated from sampled traces" if t["estimated"] else ""
    click.echo(f"wrote {report.markdown_path} ({t['requests']} requests, spend {spend}{est})")
    if report.chart_path:
        click.echo(f"wrote {report.chart_path}")


def _server_url(uri: str | None) -> str | None:
    return uri if uri and uri.startswith(("http://", "https://")) else None


COMMANDS = [report_group]
