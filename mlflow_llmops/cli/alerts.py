"""``mlflow-llmops alerts ...``: rules, evaluation, status, notifications, rollback.

The group is shared: ``alerts_notify.py`` adds the notification and rollback
commands to it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import click

from mlflow_llmops.cli import AppContext, pass_app
from mlflow_llmops.core.clock import utc


@click.group("alerts")
def alerts() -> None:
    """Alert rules, their evaluation and state, notifications and rollbacks."""


def _base_dir(app: AppContext) -> Path:
    return Path(app.config_path).resolve().parent if app.config_path else Path.cwd()


def parse_time(value: str | None, flag: str = "--at") -> datetime:
    """ISO date/time (UTC unless it says otherwise), ``now`` or ``now-2h`` / ``-90m``."""
    now = datetime.now(UTC)
    if value is None or value == "now":
        return now
    m = re.fullmatch(r"(?:now)?-(\S+)", value.strip())
    if m:
        from mlflow_llmops.core.duration import parse_duration

        try:
            return now - parse_duration(m.group(1))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=flag) from None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time; use ISO (2026-06-01T12:00, UTC by default), now or now-2h",
            param_hint=flag,
        ) from None
    return utc(d)


def _fmt(d: datetime | None) -> str:
    return "-" if d is None else d.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _instance_rows(instances) -> list[dict]:  # noqa: ANN001
    return [
        {
            "rule": i.rule,
            "state": str(i.state),
            "severity": str(i.severity),
            "labels": {k: v for k, v in i.labels.items() if k not in ("alertname", "severity")},
            "value": i.value,
            "threshold": i.threshold,
            "baseline": i.baseline,
            "active_at": i.active_at.isoformat() if i.active_at else None,
            "fired_at": i.fired_at.isoformat() if i.fired_at else None,
            "resolved_at": i.resolved_at.isoformat() if i.resolved_at else None,
            "episode": i.episode,
            "summary": i.annotations.get("summary", ""),
        }
        for i in instances
    ]


def _print_instances(instances) -> None:  # noqa: ANN001
    if not instances:
        click.echo("no active alert instances")
        return
    click.echo(f"{'state':<9} {'severity':<9} {'rule':<28} {'value':>10} {'threshold':>10}  since")
    for i in instances:
        since = i.resolved_at if str(i.state) == "resolved" else (i.fired_at or i.active_at)
        labels = ",".join(
            f"{k}={v}" for k, v in sorted(i.labels.items()) if k not in ("alertname", "severity")
        )
        click.echo(
            f"{i.state!s:<9} {i.severity!s:<9} {i.rule:<28} {_num(i.value):>10} "
            f"{_num(i.threshold):>10}  {_fmt(since)}  {labels}"
        )


@alerts.command("evaluate")
@click.option("--at", "at", help="When to evaluate: ISO time (UTC), now, or now-2h.")
@click.option("--interval", help="Replay step (default: alerting.evaluation_interval).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def evaluate_cmd(app: AppContext, at: str | None, interval: str | None, as_json: bool) -> None:
    """Replay the rules up to a (past) time and show what was pending and firing then.

    Never changes the alert state and never notifies.
    """
    from mlflow_llmops.alerting import replay
    from mlflow_llmops.core.duration import parse_duration
    from mlflow_llmops.monitor.cycle import signal_source_from_config

    when = parse_time(at)
    step = app.config.alerting.evaluation_interval
    if interval:
        try:
            step = parse_duration(interval)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--interval") from None
    rules = app.config.alerting.all_rules(_base_dir(app))
    if not rules:
        raise click.ClickException(
            "no alert rules configured; add alerting.rules, alerting.rule_files or alerting.packs"
        )
    ev = replay(rules, signal_source_from_config(app.config), when, step)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "at": when.isoformat(),
                    "instances": _instance_rows(ev.instances),
                    "errors": ev.errors,
                },
                indent=2,
            )
        )
        return
    click.echo(f"rules replayed up to {_fmt(when)} UTC every {step} ({len(rules)} rules)")
    _print_instances(ev.instances)
    for rule, err in sorted(ev.errors.items()):
        click.echo(f"error in rule {rule}: {err}", err=True)


@alerts.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cycles", default=5, show_default=True, help="Show the last N monitor cycles.")
@pass_app
def status_cmd(app: AppContext, as_json: bool, cycles: int) -> None:
    """List the active alert instances (pending, firing, recently resolved) and rule health."""
    from mlflow_llmops.alerting.engine import (
        ALERTING_MIGRATIONS,
        AlertInstance,
        alert_instances,
        monitor_cycle_rows,
        rule_health_rows,
    )
    from mlflow_llmops.statestore.state import StateStore

    store = StateStore(app.config.state_store.url)
    store.ensure_schema(ALERTING_MIGRATIONS)
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(alert_instances)).mappings().all()
    order = {"firing": 0, "pending": 1, "resolved": 2}
    instances = sorted(
        (AlertInstance.from_row(r) for r in rows),
        key=lambda i: (order.get(str(i.state), 3), i.rule),
    )
    health = rule_health_rows(store)
    recent = monitor_cycle_rows(store, cycles)
    holder = store.lease_holder(app.config.alerting.monitor.lease_name, datetime.now(UTC))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "instances": _instance_rows(instances),
                    "rules": health,
                    "cycles": recent,
                    "evaluator": holder,
                },
                indent=2,
                default=str,
            )
        )
        return
    _print_instances(instances)
    broken = [h for h in health if h["last_error"]]
    for h in broken:
        click.echo(f"rule {h['rule']} failed at {_fmt(h['last_eval_at'])}: {h['last_error']}")
    click.echo(f"\nevaluator: {holder or 'none (no monitor holds the lease)'}")
    for c in recent:
        failed = [k for k, s in c["steps"].items() if not s["ok"]]
        click.echo(
            f"  cycle {_fmt(c['started_at'])} by {c['holder']}: {c['duration_ms']:.0f}ms, "
            f"{c['firing']} firing" + (f", failed: {', '.join(failed)}" if failed else "")
        )


@alerts.command("export-prometheus")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Rule file (default stdout).")
@click.option(
    "--dashboard", type=click.Path(dir_okay=False), help="Also write a Grafana dashboard."
)
@click.option("--pack", "packs", multiple=True, help="Export this rule pack instead of the config.")
@pass_app
def export_prometheus_cmd(
    app: AppContext, output: str | None, dashboard: str | None, packs: tuple[str, ...]
) -> None:
    """Write Prometheus alerting rules over the OTel GenAI metrics (check with promtool)."""
    from mlflow_llmops.alerting.prometheus import dashboard_json, export_prometheus_rules
    from mlflow_llmops.alerting.rules import load_pack

    if packs:
        rules = [r for p in packs for r in load_pack(p)]
    else:
        rules = app.config.alerting.all_rules(_base_dir(app))
    export = export_prometheus_rules(rules, interval=app.config.alerting.evaluation_interval)
    text = export.to_yaml()
    if output:
        Path(output).write_text(text, encoding="utf-8")
        n = sum(len(g["rules"]) for g in export.groups["groups"])
        click.echo(f"wrote {n} Prometheus alerting rules to {output}", err=True)
    else:
        click.echo(text, nl=False)
    for name, why in sorted(export.skipped.items()):
        click.echo(f"left out {name}: {why}", err=True)
    for name, notes in sorted(export.changed.items()):
        click.echo(f"approximated {name}: {'; '.join(notes)}", err=True)
    if dashboard:
        Path(dashboard).write_text(dashboard_json(), encoding="utf-8")
        click.echo(f"wrote the Grafana dashboard to {dashboard}", err=True)


@alerts.group("rules")
def rules_group() -> None:
    """List and validate alert rules."""


@rules_group.command("list")
@click.option("--packs", "show_packs", is_flag=True, help="List the ready-made rule packs.")
@pass_app
def rules_list(app: AppContext, show_packs: bool) -> None:
    """The effective rules (packs, rule files, inline), one per line."""
    from mlflow_llmops.alerting.rules import (
        BurnRateRule,
        available_packs,
        load_pack,
    )
    from mlflow_llmops.core.duration import format_duration

    if show_packs:
        for p in available_packs():
            names = ", ".join(r.name for r in load_pack(p))
            click.echo(f"{p}: {names}")
        return
    rules = app.config.alerting.all_rules(_base_dir(app))
    if not rules:
        click.echo("no alert rules configured (try `alerting: {packs: [three-layer]}`)")
        return
    for r in rules:
        if isinstance(r, BurnRateRule):
            what = f"{r.sli} SLO {r.objective:g}"
        else:
            what = f"{r.query.signal} over {format_duration(r.query.window)}"
            if r.query.group_by:
                what += f" by {','.join(r.query.group_by)}"
        cond = f"{r.op} {r.threshold:g}" if r.type == "threshold" else ""
        if r.type == "baseline":
            cond = f"{r.direction} {r.factor:g}x baseline"
        click.echo(
            f"{r.name:<28} {r.type:<10} {r.severity!s:<9} for {format_duration(r.for_):<5} "
            f"{what} {cond}"
        )


@rules_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@pass_app
def rules_check(app: AppContext, files: tuple[str, ...]) -> None:
    """Validate rule files (and the configured rules); report every error of every file,
    naming the file, the rule and the field path; exit 2 if any."""
    from mlflow_llmops.alerting.rules import load_rule_file
    from mlflow_llmops.errors import ConfigError

    errors: list[str] = []
    for f in files:
        try:
            n = len(load_rule_file(f))
        except ConfigError as e:
            errors.extend(str(e).splitlines())
            continue
        click.echo(f"{f}: {n} rules OK")
    if not files or app.config_path:
        try:
            rules = app.config.alerting.all_rules(_base_dir(app))
        except ConfigError as e:
            errors.extend(str(e).splitlines())
        else:
            click.echo(f"configuration: {len(rules)} enabled rules OK")
    if errors:
        raise ConfigError(
            f"{len(errors)} error(s) in the alert rules:\n"
            + "\n".join(f"  - {line}" for line in errors)
        )


COMMANDS = [alerts]
