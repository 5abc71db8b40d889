"""``mlflow-llmops export parquet``: incremental, resumable Parquet export of the views."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from mlflow_llmops.cli import AppContext, pass_app


@click.group("export")
def export_group() -> None:
    """Export traces, spans, assessments and costs for Spark, DuckDB or a data lake."""


@export_group.command("parquet")
@click.option("--out", type=click.Path(file_okay=False), help="Default: analytics.export_dir.")
@click.option("--since", help="Export from this date/time (ISO, UTC) instead of the watermark.")
@click.option("--full", is_flag=True, help="Ignore the watermark and export everything.")
@click.option("--experiment-id", "experiment_ids", multiple=True, help="Repeatable; default: all.")
@click.option(
    "--source",
    type=click.Choice(["auto", "sql", "api"]),
    default="auto",
    show_default=True,
    help="sql: read the tracking database; api: read through the MLflow server's REST API.",
)
@pass_app
def parquet_cmd(
    app: AppContext,
    out: str | None,
    since: str | None,
    full: bool,
    experiment_ids: tuple[str, ...],
    source: str,
) -> None:
    """Write OUT/{traces,spans,assessments,costs}/day=YYYY-MM-DD/part.parquet."""
    from mlflow_llmops.analytics.export import export_parquet
    from mlflow_llmops.analytics.queries import analytics_url, parse_time_ms
    from mlflow_llmops.statestore.state import make_engine

    cfg = app.config
    src: object
    calculator = None
    if source == "api" or (
        source == "auto" and cfg.tracking.sql_url() is None and cfg.analytics.database_url is None
    ):
        from mlflow_llmops.pricing import CostCalculator

        src = cfg.tracking.uri
        calculator = CostCalculator.from_config(cfg.pricing)
    else:
        src = make_engine(analytics_url(cfg))
    since_dt = (
        datetime.fromtimestamp(parse_time_ms(since, "--since") / 1000, UTC) if since else None
    )
    result = export_parquet(
        src,  # type: ignore[arg-type]
        out or cfg.analytics.export_dir,
        now=datetime.now(UTC),
        experiment_ids=list(experiment_ids) or cfg.analytics.experiment_ids or None,
        since=since_dt,
        lookback_days=cfg.analytics.export_lookback_days,
        full=full,
        progress=lambda day: click.echo(f"  {day}", err=True),
        calculator=calculator,
    )
    click.echo(result.summary())


COMMANDS = [export_group]
