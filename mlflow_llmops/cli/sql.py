"""``mlflow-llmops sql list|show|run|views``: the SQL cost analyses from the shell."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import click

from mlflow_llmops.cli import AppContext, pass_app

_NOT_TIMES = {"latency_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}


def _now(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    from mlflow_llmops.analytics.queries import parse_time_ms

    return datetime.fromtimestamp(parse_time_ms(value, "--now") / 1000, UTC)


def _display(col: str, v: Any) -> str:
    if v is None:
        return ""
    if col.endswith("_ms") and col not in _NOT_TIMES and isinstance(v, int | float) and v > 1e11:
        when = datetime.fromtimestamp(v / 1000, UTC)
        return when.strftime("%Y-%m-%d") if col == "day_ms" else when.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def render(result: Any, fmt: str) -> str:
    """A query result as an aligned table, CSV or JSON (raw values in CSV and JSON)."""
    cols = result.columns
    if fmt == "json":
        return json.dumps(result.records(), indent=1, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(cols)
        w.writerows(result.rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_display(c, v) for c, v in zip(cols, r, strict=True)] for r in result.rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    if "estimated" in cols and any(r[cols.index("estimated")] for r in result.rows):
        lines.append(
            "(estimated = 1: sampled traffic; counts, tokens and cost are extrapolated by "
            "llmops.sample_weight, kept_* columns are the traces or spans stored)"
        )
    return "\n".join(lines)


@click.group("sql")
def sql_group() -> None:
    """SQL cost analyses over the tracking database (or a Parquet export)."""


@sql_group.command("list")
@pass_app
def list_cmd(app: AppContext) -> None:
    """List the analyses and the question each one answers."""
    from mlflow_llmops.analytics.queries import load_queries

    queries = load_queries(app.config.analytics.sql_dir)
    width = max(len(n) for n in queries) if queries else 0
    for name, q in queries.items():
        params = ", ".join(p.name for p in q.params)
        click.echo(f"{name.ljust(width)}  {q.question}  [{params}]")


@sql_group.command("show")
@click.argument("name")
@click.option(
    "--dialect",
    type=click.Choice(["postgres", "sqlite", "duckdb", "spark"]),
    default="postgres",
    help="Print the SQL transpiled for this dialect.",
)
@pass_app
def show_cmd(app: AppContext, name: str, dialect: str) -> None:
    """Print an analysis: its parameters, output columns and SQL."""
    from mlflow_llmops.analytics.queries import get_query

    q = get_query(name, app.config.analytics.sql_dir)
    click.echo(f"-- {q.question}")
    if q.notes:
        click.echo(f"-- {q.notes}")
    for p in q.params:
        click.echo(f"-- param {p.name} ({p.type}, default {p.default}): {p.description}")
    for c, d in q.columns:
        click.echo(f"-- column {c}: {d}")
    click.echo(q.sql if dialect == "postgres" else q.render(dialect))


@sql_group.command("run")
@click.argument("name")
@click.option("--param", "-p", "params", multiple=True, help="NAME=VALUE, repeatable.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--parquet",
    type=click.Path(file_okay=False),
    help="Query a Parquet export (mlflow-llmops export parquet) with DuckDB instead.",
)
@click.option("--now", help="Pretend it is this time (ISO or epoch ms) for relative defaults.")
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    help="Engine for --parquet: duckdb (default) or spark (Spark SQL; also s3a:// paths).",
)
@click.option(
    "--master",
    default="local[2]",
    show_default=True,
    help="Spark master for --engine spark: local[N], spark://HOST:7077, yarn, k8s://...",
)
@pass_app
def run_cmd(
    app: AppContext,
    name: str,
    params: tuple[str, ...],
    fmt: str,
    parquet: str | None,
    now: str | None,
    engine: str | None = None,
    master: str = "local[2]",
) -> None:
    """Run analysis NAME, e.g. `sql run top_traces -p since_ms=2026-03-01 -p limit=5`."""
    from mlflow_llmops.analytics.queries import get_query, open_target, parse_param_args, run_query

    q = get_query(name, app.config.analytics.sql_dir)
    values = parse_param_args(params)
    exp_ids = app.config.analytics.experiment_ids
    if len(exp_ids) == 1 and "experiment_id" in {p.name for p in q.params}:
        values.setdefault("experiment_id", exp_ids[0])
    if engine == "spark":
        result = _run_spark(q, parquet, values, _now(now), master)
    else:
        target = open_target(app.config, parquet)
        result = run_query(q, target, values, now=_now(now))
    click.echo(render(result, fmt))


def _run_spark(q: Any, parquet: str | None, values: dict, now: datetime, master: str) -> Any:
    """The query on Spark SQL over a Parquet export (local folder or s3a://... URL)."""
    if not parquet:
        raise click.UsageError(
            "--engine spark reads a Parquet export: add --parquet DIR (or s3a://bucket/path); "
            "write one with `mlflow-llmops export parquet`"
        )
    from mlflow_llmops.analytics.spark import run_query_spark

    return run_query_spark(q, parquet, values, now=now, master=master)


@sql_group.command("views")
@pass_app
def views_cmd(app: AppContext) -> None:
    """(Re)create the llmops_* views on the tracking database."""
    from mlflow_llmops.analytics.queries import analytics_url
    from mlflow_llmops.analytics.views import check_mlflow_schema, create_views, schema_release
    from mlflow_llmops.statestore.state import make_engine

    engine = make_engine(analytics_url(app.config))
    revision = check_mlflow_schema(engine)
    names = create_views(engine)
    safe = engine.url.render_as_string(hide_password=True)
    release = schema_release(revision) or "untested release"
    click.echo(f"created {', '.join(names)} on {safe} (MLflow schema {revision}: {release})")


COMMANDS = [sql_group]
