"""``mlflow-llmops alerts silence|test-notify|rollback|outbox``: notifications and rollbacks.

Adds commands to the shared ``alerts`` group (registered by ``alerts.py``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import click

from mlflow_llmops.cli import pass_app
from mlflow_llmops.cli.alerts import alerts
from mlflow_llmops.core.clock import utc

COMMANDS: list[click.Command] = []  # the group is registered by alerts.py


def _now() -> datetime:
    return datetime.now(UTC)


def _store(app):  # noqa: ANN001, ANN202
    from mlflow_llmops.statestore.state import StateStore

    return StateStore(app.config.state_store.url)


def _dispatcher(app):  # noqa: ANN001, ANN202
    from mlflow_llmops.notify import Dispatcher

    return Dispatcher(app.config.alerting.notifications, _store(app))


def _rollback(app, with_notifier: bool = True):  # noqa: ANN001, ANN202
    from mlflow_llmops.rollback import RollbackManager

    store = _store(app)
    notifier = None
    if with_notifier and app.config.alerting.notifications.receivers:
        notifier = _dispatcher(app)
    return RollbackManager(
        app.config.alerting.rollback,
        store,
        app.config.tracking.uri,
        notifier=notifier,
        actor=os.environ.get("USER", "cli"),
    ), notifier


def _duration(text: str) -> timedelta:
    from mlflow_llmops.core.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _fmt(d: datetime | None) -> str:
    if d is None:
        return "-"
    return utc(d).strftime("%Y-%m-%d %H:%M:%S")


# -- silences -----------------------------------------------------------------


@alerts.group("silence")
def silence() -> None:
    """Mute notifications for alerts matching labels, for a while."""


@silence.command("add")
@click.argument("matchers", nargs=-1, required=True)
@click.option("--duration", "-d", default="2h", show_default=True, help="How long, e.g. 30m, 4h.")
@click.option("--comment", "-c", required=True, help="Why (shown in `silence list`).")
@click.option("--author", default=lambda: os.environ.get("USER", "unknown"), show_default="$USER")
@pass_app
def silence_add(app, matchers: tuple[str, ...], duration: str, comment: str, author: str) -> None:  # noqa: ANN001
    """Silence alerts matching all MATCHERS (name=value, name!=value, name=~regex, name!~regex)."""
    from mlflow_llmops.notify import Silences

    now = _now()
    try:
        sid = Silences(_store(app)).add(
            matchers,
            starts_at=now,
            ends_at=now + _duration(duration),
            created_by=author,
            comment=comment,
            now=now,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"silence {sid} until {_fmt(now + _duration(duration))} UTC")


@silence.command("list")
@click.option("--all", "include_expired", is_flag=True, help="Include expired silences.")
@pass_app
def silence_list(app, include_expired: bool) -> None:  # noqa: ANN001
    """Active (or all) silences."""
    from mlflow_llmops.notify import Silences

    rows = Silences(_store(app)).list(_now(), include_expired=include_expired)
    if not rows:
        click.echo("no silences")
        return
    for s in rows:
        matchers = " ".join(str(m) for m in s.matchers)
        click.echo(f"{s.id}  until {_fmt(s.ends_at)}  {matchers}  by {s.created_by}: {s.comment}")


@silence.command("expire")
@click.argument("silence_id")
@pass_app
def silence_expire(app, silence_id: str) -> None:  # noqa: ANN001
    """End a silence now."""
    from mlflow_llmops.notify import Silences

    if not Silences(_store(app)).expire(silence_id, _now()):
        raise click.ClickException(f"no active silence {silence_id!r} (see `alerts silence list`)")
    click.echo(f"silence {silence_id} expired")


# -- test-notify ----------------------------------------------------------------


@alerts.command("test-notify")
@click.argument("receiver")
@click.option("--message", "-m", default="Test message from mlflow-llmops: this receiver works.")
@pass_app
def test_notify(app, receiver: str, message: str) -> None:  # noqa: ANN001
    """Send a test message to RECEIVER (a name under alerting.notifications.receivers)."""
    from mlflow_llmops.notify.notifiers import Notification

    cfg = app.config.alerting.notifications
    names = [r.name for r in cfg.receivers]
    if receiver not in names:
        raise click.UsageError(
            f"unknown receiver {receiver!r}; configured: {', '.join(names) or 'none'} "
            "(alerting.notifications.receivers)"
        )
    d = _dispatcher(app)
    now = _now()
    d.enqueue(
        Notification(
            receiver=receiver,
            group_id=f"test:{now.timestamp():.0f}",
            group_key="test",
            seq=1,
            kind="test",
            status="firing",
            created_at=now,
            text=message,
        ),
        now,
    )
    report = d.deliver(now)
    if report.sent:
        click.echo(f"sent a test message to {receiver}")
        return
    reason = report.failed[0][1] if report.failed else "will retry (see `alerts outbox`)"
    raise click.ClickException(f"test message to {receiver} not delivered: {reason}")


# -- outbox -----------------------------------------------------------------------


@alerts.command("outbox")
@click.option("--status", type=click.Choice(["pending", "sending", "sent", "failed"]))
@click.option("--limit", default=30, show_default=True)
@pass_app
def outbox(app, status: str | None, limit: int) -> None:  # noqa: ANN001
    """Recent notifications in the outbox, with their delivery status."""
    rows = _dispatcher(app).outbox_rows(status=status, limit=limit)
    if not rows:
        click.echo("outbox is empty")
    for r in rows:
        err = f"  {r['last_error'][:120]}" if r["last_error"] else ""
        click.echo(
            f"#{r['id']:<5} {r['status']:<8} {r['receiver']:<16} {r['kind']:<8} seq={r['seq']:<3} "
            f"attempts={r['attempts']} created={_fmt(r['created_at'])} sent={_fmt(r['sent_at'])}{err}"
        )


# -- rollback -----------------------------------------------------------------------


@alerts.group("rollback")
def rollback() -> None:
    """Rollback plans (model / prompt alias), approvals and promotions."""


@rollback.command("list")
@click.option(
    "--status", help="e.g. awaiting_approval, executed, dry_run, blocked, aborted, expired."
)
@click.option("--limit", default=30, show_default=True)
@pass_app
def rollback_list(app, status: str | None, limit: int) -> None:  # noqa: ANN001
    """Recent rollback plans and their outcome."""
    mgr, _ = _rollback(app, with_notifier=False)
    rows = mgr.list_plans(status=status, limit=limit)
    if not rows:
        click.echo("no rollback plans")
    for p in rows:
        click.echo(
            f"{p['id']}  {p['status']:<17} {p['hook']:<16} {p['target_key']}  "
            f"v{p['from_version']} -> v{p['to_version']}  alert={p['alertname']}  "
            f"{_fmt(p['created_at'])}  {p['reason']}"
        )


@rollback.command("approve")
@click.argument("plan_id")
@pass_app
def rollback_approve(app, plan_id: str) -> None:  # noqa: ANN001
    """Execute a rollback plan that waits for confirmation (mode: confirm). Refused once the
    plan expired: not approved within the hook's approval_timeout, or its alert resolved."""
    mgr, notifier = _rollback(app)
    rec = mgr.approve(plan_id, _now(), actor=os.environ.get("USER", "cli"))
    if notifier is not None:
        notifier.deliver(_now())
    click.echo(json.dumps(rec.as_dict(), indent=2))
    if rec.outcome != "executed":
        raise click.ClickException(f"rollback {plan_id} {rec.outcome}: {rec.reason}")


@rollback.command("promote")
@click.option("--model", help="Registered model name.")
@click.option("--prompt", help="Prompt name.")
@click.option("--alias", required=True, help="Alias to move, e.g. champion or production.")
@click.option("--version", "version", required=True, help="Version the alias should point to.")
@click.option("--note", default="", help="Why (kept with the promotion record).")
@pass_app
def rollback_promote(
    app, model: str | None, prompt: str | None, alias: str, version: str, note: str
) -> None:  # noqa: ANN001
    """Move ALIAS to VERSION and record the previous version (what a rollback returns to)."""
    from mlflow_llmops.rollback import promote

    if (model is None) == (prompt is None):
        raise click.UsageError("give exactly one of --model or --prompt")
    prev = promote(
        _store(app),
        app.config.tracking.uri,
        model=model,
        prompt=prompt,
        alias=alias,
        version=version,
        actor=os.environ.get("USER", "cli"),
        note=note,
        now=_now(),
    )
    what = f"models:/{model}" if model else f"prompts:/{prompt}"
    click.echo(f"{what}@{alias} -> v{version} (previous: {'v' + prev if prev else 'none'})")
