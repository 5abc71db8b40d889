"""``mlflow-llmops scorers register|list|get|update|start|stop|delete|run|backfill|quality|
feedback``."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import yaml

from mlflow_llmops.cli import AppContext, pass_app


def _now() -> datetime:
    return datetime.now(UTC)


def _store(app: AppContext):  # noqa: ANN202 - StateStore
    from mlflow_llmops.statestore.state import StateStore

    return StateStore(app.config.state_store.url)


def _registry(app: AppContext):  # noqa: ANN202 - ScorerRegistry
    from mlflow_llmops.scoring import ScorerRegistry

    return ScorerRegistry(_store(app))


def _params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any] | None:
    if not pairs and params_json is None:
        return None
    out: dict[str, Any] = {}
    if params_json is not None:
        try:
            loaded = json.loads(params_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--params-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params-json")
        out.update(loaded)
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{p!r}: write KEY=VALUE", param_hint="--param")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def _is_relative(value: str | None) -> bool:
    """A duration ago (``30d``) rather than an ISO date/time."""
    if value is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return True
    return False


def _iso(ms: int | None) -> str:
    return (
        "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
    )


def _when_ms(value: str | None, flag: str, now: datetime) -> int | None:
    """ISO date/time, or a duration meaning that long ago (``7d``, ``12h``)."""
    if value is None:
        return None
    from mlflow_llmops.scoring import parse_duration
    from mlflow_llmops.scoring.registry import ScorerRegistryError

    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        try:
            d = now - timedelta(seconds=parse_duration(value, what=flag))
        except ScorerRegistryError:
            raise click.BadParameter(
                f"{value!r} is neither an ISO date/time (2026-06-01, 2026-06-01T12:00) nor a "
                "duration ago (7d, 12h)",
                param_hint=flag,
            ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1000)


def _show(spec: Any) -> str:
    state = "active" if spec.active else "stopped"
    flt = f" filter={spec.filter_string!r}" if spec.filter_string else ""
    params = f" params={json.dumps(dict(spec.params))}" if spec.params else ""
    return (
        f"{spec.name}@v{spec.version} [{state}] ref={spec.ref}{params} "
        f"sample_rate={spec.sample_rate:g} schedule={spec.schedule_s:g}s{flt}"
    )


@click.group("scorers")
def scorers_group() -> None:
    """Register scorers, score new traces on a schedule, backfill history, read quality."""


_REF_HELP = (
    "module:function (an MLflow @scorer or a factory), builtin:NAME (latency_budget, "
    "token_budget, cost_budget, json_validity, pii_leak, refusal, empty_answer), "
    "mlflow:CLASS (e.g. mlflow:Safety) or judge."
)


@scorers_group.command("register")
@click.argument("name")
@click.option("--ref", required=True, help=_REF_HELP)
@click.option("--param", "param_pairs", multiple=True, help="KEY=VALUE (YAML value), repeatable.")
@click.option("--params-json", help="All params as one JSON object.")
@click.option("--sample-rate", type=float, default=1.0, show_default=True)
@click.option("--filter", "filter_string", help="MLflow search_traces filter.")
@click.option("--schedule", default="1m", show_default=True, help="How often: 30s, 5m, 1h.")
@click.option("--stopped", is_flag=True, help="Register without starting it.")
@pass_app
def register_cmd(
    app: AppContext,
    name: str,
    ref: str,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    sample_rate: float,
    filter_string: str | None,
    schedule: str,
    stopped: bool,
) -> None:
    """Register scorer NAME (version 1). It is checked by building it once."""
    from mlflow_llmops.scoring import ScorerSpec, parse_duration, resolve

    spec = ScorerSpec(
        name=name,
        ref=ref,
        params=_params(param_pairs, params_json) or {},
        sample_rate=sample_rate,
        filter_string=filter_string,
        schedule_s=parse_duration(schedule, what="--schedule"),
        active=not stopped,
    ).validate()
    resolve(spec, judge_defaults=app.config.scoring.judge.model_dump())
    click.echo("registered " + _show(_registry(app).register(spec, now=_now())))


@scorers_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """All registered scorers."""
    specs = _registry(app).list()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in specs], indent=2))
    elif not specs:
        click.echo("no scorers registered; see `mlflow-llmops scorers register --help`")
    for s in specs if not as_json else []:
        click.echo(_show(s))


@scorers_group.command("get")
@click.argument("name")
@pass_app
def get_cmd(app: AppContext, name: str) -> None:
    """One scorer, as JSON."""
    click.echo(json.dumps(_registry(app).get(name).to_dict(), indent=2))


@scorers_group.command("update")
@click.argument("name")
@click.option("--ref", help=_REF_HELP)
@click.option("--param", "param_pairs", multiple=True, help="KEY=VALUE; replaces all params.")
@click.option("--params-json", help="All params as one JSON object; replaces all params.")
@click.option("--sample-rate", type=float)
@click.option("--filter", "filter_string")
@click.option("--clear-filter", is_flag=True)
@click.option("--schedule")
@click.option("--new-version", is_flag=True, help="Force a new version (re-scoring is due).")
@pass_app
def update_cmd(
    app: AppContext,
    name: str,
    ref: str | None,
    param_pairs: tuple[str, ...],
    params_json: str | None,
    sample_rate: float | None,
    filter_string: str | None,
    clear_filter: bool,
    schedule: str | None,
    new_version: bool,
) -> None:
    """Change the given fields only; a changed --ref or params makes a new version."""
    from mlflow_llmops.scoring import parse_duration, resolve

    if clear_filter and filter_string is not None:
        raise click.UsageError("give --filter or --clear-filter, not both")
    kwargs: dict[str, Any] = {}
    if ref is not None:
        kwargs["ref"] = ref
    params = _params(param_pairs, params_json)
    if params is not None:
        kwargs["params"] = params
    if sample_rate is not None:
        kwargs["sample_rate"] = sample_rate
    if filter_string is not None or clear_filter:
        kwargs["filter_string"] = filter_string
    if schedule is not None:
        kwargs["schedule_s"] = parse_duration(schedule, what="--schedule")
    registry = _registry(app)
    before = registry.get(name)
    spec = registry.update(name, now=_now(), new_version=new_version, **kwargs)
    try:
        resolve(spec, judge_defaults=app.config.scoring.judge.model_dump())
    except Exception:
        registry.update(name, now=_now(), ref=before.ref, params=before.params)
        raise
    note = " (new version: re-scoring is due)" if spec.version != before.version else ""
    click.echo("updated " + _show(spec) + note)


@scorers_group.command("start")
@click.argument("name")
@pass_app
def start_cmd(app: AppContext, name: str) -> None:
    """Score new traces with NAME on its schedule."""
    click.echo("started " + _show(_registry(app).start(name, now=_now())))


@scorers_group.command("stop")
@click.argument("name")
@pass_app
def stop_cmd(app: AppContext, name: str) -> None:
    """Stop scheduled scoring with NAME (history and assessments stay)."""
    click.echo("stopped " + _show(_registry(app).stop(name, now=_now())))


@scorers_group.command("delete")
@click.argument("name")
@click.confirmation_option(prompt="Delete this scorer? Its assessments in MLflow stay.")
@pass_app
def delete_cmd(app: AppContext, name: str) -> None:
    """Remove NAME from the registry."""
    _registry(app).delete(name)
    click.echo(f"deleted {name}")


@scorers_group.command("run")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--scorer", "names", multiple=True, help="Only these scorers (repeatable).")
@click.option("--force", is_flag=True, help="Ignore schedules: run every scorer now.")
@click.option("--interval", default="30s", show_default=True, help="Loop period without --once.")
@pass_app
def run_cmd(
    app: AppContext, once: bool, names: tuple[str, ...], force: bool, interval: str
) -> None:
    """Score new traces with every due scorer (forever, or --once)."""
    from mlflow_llmops.scoring import parse_duration, run_due_scorers

    store = _store(app)
    period = parse_duration(interval, what="--interval")
    while True:
        report = run_due_scorers(app.config, store, _now(), names=names or None, force=force)
        click.echo(report.summary())
        if once:
            return
        time.sleep(period)


@scorers_group.command("backfill")
@click.option("--scorer", required=True, help="Registered scorer name.")
@click.option("--since", help="ISO date/time or a duration ago (30d).")
@click.option("--until", help="ISO date/time or a duration ago; default now.")
@click.option("--filter", "filter_string", help="search_traces filter (default: the scorer's).")
@click.option("--sample-rate", type=float, help="Default: the scorer's sample rate.")
@click.option("--max-cost-usd", type=float, help="Stop before judge spend exceeds this.")
@click.option("--concurrency", type=int, help="Parallel traces (default scoring.concurrency).")
@click.option("--rps", type=float, help="Judge requests per second (default: unlimited).")
@click.option("--experiment", "experiments", multiple=True, help="Name or id (repeatable).")
@click.option("--worker-id", help="Name of this worker (default host:pid:random).")
@click.option(
    "--retry-errors",
    is_flag=True,
    help="Score again the traces that errored, those given up on too (fresh attempts).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--run-name", help="Record the job as an MLflow run (beside evaluate() runs).")
@pass_app
def backfill_cmd(
    app: AppContext,
    scorer: str,
    since: str | None,
    until: str | None,
    filter_string: str | None,
    sample_rate: float | None,
    max_cost_usd: float | None,
    concurrency: int | None,
    rps: float | None,
    experiments: tuple[str, ...],
    worker_id: str | None,
    retry_errors: bool,
    no_progress: bool,
    run_name: str | None,
) -> None:
    """Score history with SCORER's current version; resumable, idempotent, within budget.

    Run the same command on several machines to split the work; rerun it to resume. A
    relative --since/--until (30d) is resolved once, by the run that creates the job; the
    same command joins that job until it is done."""
    from mlflow_llmops.scoring import BackfillParams, backfill
    from mlflow_llmops.scoring.runner import resolve_experiment_ids

    window = _backfill_window(since, until, _now())
    exp_ids = resolve_experiment_ids(app.config.tracking.uri, experiments) if experiments else None
    params = BackfillParams(
        scorer=scorer,
        **window,
        filter_string=filter_string,
        sample_rate=sample_rate,
        max_cost_usd=max_cost_usd,
        concurrency=concurrency,
        rate_limit_rps=rps,
        experiment_ids=exp_ids,
        worker_id=worker_id,
        retry_errors=retry_errors,
        progress=not no_progress,
        on_plan=_echo_backfill_plan,
        run_name=run_name,
    )
    report = backfill(app.config, _store(app), params=params)
    click.echo(report.summary())
    if report.all_failed:  # nothing was scored: a broken scorer or judge, not a partial run
        raise SystemExit(1)


def _backfill_window(since: str | None, until: str | None, now: datetime) -> dict[str, Any]:
    """``since_ms``, ``until_ms`` and ``window_key`` (the text of a window relative to now,
    by which the job is found) of ``--since`` / ``--until``."""
    relative = _is_relative(since) or _is_relative(until)
    return {
        "since_ms": _when_ms(since, "--since", now),
        "until_ms": _when_ms(until, "--until", now) if until else None,
        "window_key": json.dumps({"since": since, "until": until}) if relative else None,
    }


def _echo_backfill_plan(report: Any, budget: float | None) -> None:
    """The job as planned, on stderr, before scoring starts."""
    est = "n/a (code scorer)" if not report.estimate_usd else f"${report.estimate_usd:.4f}"
    click.echo(
        f"backfill {report.job_id}: {report.total} traces, {report.already_done} already "
        f"done; estimated judge spend {est}"
        + ("" if budget is None else f", budget ${budget:.4f}")
        + f"; window {_iso(report.since_ms)} .. {_iso(report.until_ms)}",
        err=True,
    )
    if budget is not None and report.estimate_usd and report.estimate_usd > budget:
        click.echo("  the estimate exceeds the budget: it will stop at the budget", err=True)


@scorers_group.command("quality")
@click.option("--since", default="1d", show_default=True, help="ISO or a duration ago.")
@click.option("--until", help="ISO or a duration ago; default now.")
@click.option("--scorer", help="Only this scorer.")
@click.option("--bucket", help="Window width (1h, 15m); default one window.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def quality_cmd(
    app: AppContext,
    since: str,
    until: str | None,
    scorer: str | None,
    bucket: str | None,
    as_json: bool,
) -> None:
    """Pass rate and mean score per scorer (and version) per window."""
    from mlflow_llmops.scoring import parse_duration, quality_aggregates

    now = _now()
    since_ms = _when_ms(since, "--since", now)
    until_ms = _when_ms(until, "--until", now) if until else int(now.timestamp() * 1000)
    bucket_ms = int(parse_duration(bucket, what="--bucket") * 1000) if bucket else None
    rows = quality_aggregates(_store(app), since_ms, until_ms, scorer, bucket_ms=bucket_ms)
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "pass_rate": r.pass_rate} for r in rows], indent=2))
        return
    if not rows:
        click.echo("no scored traces in this window")
        return
    click.echo(
        f"{'scorer':<24} {'ver':>3} {'window start (UTC)':<20} {'scored':>7} "
        f"{'pass rate':>9} {'mean':>7} {'errors':>6}"
    )
    for r in rows:
        start = datetime.fromtimestamp(r.window_start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        rate = "-" if r.pass_rate is None else f"{r.pass_rate:.1%}"
        mean = "-" if r.mean_score is None else f"{r.mean_score:.3f}"
        click.echo(
            f"{r.scorer:<24} {r.version:>3} {start:<20} {r.scored:>7} {rate:>9} "
            f"{mean:>7} {r.errors:>6}"
        )


@scorers_group.command("feedback")
@click.argument("trace_id")
@click.option("--user", "user_id", required=True, help="Who gave the feedback.")
@click.option("--thumbs", type=click.Choice(["up", "down"]))
@click.option("--rating", type=int)
@click.option("--comment")
@pass_app
def feedback_cmd(
    app: AppContext,
    trace_id: str,
    user_id: str,
    thumbs: str | None,
    rating: int | None,
    comment: str | None,
) -> None:
    """Record end-user feedback on a trace (what services do with record_user_feedback)."""
    from mlflow_llmops.scoring import record_user_feedback

    logged = record_user_feedback(
        trace_id,
        user_id=user_id,
        thumbs_up=None if thumbs is None else thumbs == "up",
        rating=rating,
        comment=comment,
        tracking_uri=app.config.tracking.uri,
    )
    click.echo(f"logged {', '.join(a.name for a in logged)} on {trace_id}")


COMMANDS = [scorers_group]
