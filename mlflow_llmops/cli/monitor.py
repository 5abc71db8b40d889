"""``mlflow-llmops monitor``: re-price, score, evaluate rules and notify, every interval."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from mlflow_llmops.cli import AppContext, pass_app


@click.command("monitor")
@click.option(
    "--once",
    is_flag=True,
    help="Run one cycle, deliver what it found and exit (for "
    "cron / a scheduler). New notifications wait group_wait (default 30s) first, so "
    "--once may keep running that long, never more than one evaluation interval.",
)
@click.option("--interval", help="Override alerting.evaluation_interval (e.g. 30s, 1m).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Evaluate and print; notify nobody, leave the alert state and the evaluator lease alone.",
)
@click.option("--max-cycles", type=int, help="Stop after N cycles.")
@click.option("--no-reprice", is_flag=True, help="Skip the re-pricing step.")
@click.option("--no-score", is_flag=True, help="Skip the scoring step.")
@pass_app
def monitor(
    app: AppContext,
    once: bool,
    interval: str | None,
    dry_run: bool,
    max_cycles: int | None,
    no_reprice: bool,
    no_score: bool,
) -> None:
    """The main job: each cycle re-prices new spans, runs due scorers, evaluates the alert
    rules and hands the alerts to notifications; between cycles a delivery thread sends
    notifications as soon as group_wait, retries and rate limits allow. Several monitors on
    one PostgreSQL state store elect one evaluator; a standby takes over within one
    interval."""
    from mlflow_llmops.core.duration import parse_duration
    from mlflow_llmops.monitor import Monitor
    from mlflow_llmops.secrets import mask_text

    cfg = app.config
    updates: dict = {}
    if interval:
        try:
            updates["evaluation_interval"] = parse_duration(interval)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--interval") from None
        if updates["evaluation_interval"].total_seconds() < 1:
            raise click.BadParameter("must be at least 1s", param_hint="--interval")
    mon = {}
    if no_reprice:
        mon["reprice"] = False
    if no_score:
        mon["score"] = False
    if mon:
        updates["monitor"] = cfg.alerting.monitor.model_copy(update=mon)
    if updates:
        cfg = cfg.model_copy(update={"alerting": cfg.alerting.model_copy(update=updates)})
    base = Path(app.config_path).resolve().parent if app.config_path else Path.cwd()
    m = Monitor(cfg, dry_run=dry_run, base_dir=base)
    click.echo(
        f"monitor {m.holder}: {len(m.rules)} rules, every {cfg.alerting.evaluation_interval}, "
        f"lease {m.lease_name!r} ttl {m.lease_ttl}" + (" [dry run]" if dry_run else ""),
        err=True,
    )
    stop = threading.Event()

    def _stop(signum, frame) -> None:  # noqa: ANN001
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    m.run(
        once=once,
        max_cycles=max_cycles,
        stop=stop,
        on_cycle=lambda r: click.echo(mask_text(r.summary()), err=True),  # errors of steps
    )


COMMANDS = [monitor]
