"""``mlflow-llmops costs reprice|show-price MODEL|unpriced|history|export-catalog DIR``."""

from __future__ import annotations

from datetime import UTC, date, datetime

import click

from mlflow_llmops.cli import AppContext, pass_app


def _calculator(app: AppContext, overrides: str | None = None):  # noqa: ANN202
    from mlflow_llmops.pricing import CostCalculator

    cfg = app.config.pricing
    if overrides:
        cfg = cfg.model_copy(update={"overrides_file": overrides})
    return CostCalculator.from_config(cfg)


def _when_ms(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date/time (e.g. 2026-06-01 or 2026-06-01T12:00)",
            param_hint=flag,
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1000)


def _experiment_ids(app: AppContext, experiments: tuple[str, ...]) -> list[str] | None:
    if not experiments:
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=app.config.tracking.uri)
    ids = []
    for e in experiments:
        if e.isdigit():
            ids.append(e)
            continue
        exp = client.get_experiment_by_name(e)
        if exp is None:
            raise click.BadParameter(f"no experiment named {e!r}", param_hint="--experiment")
        ids.append(exp.experiment_id)
    return ids


def _usd(d) -> str:  # noqa: ANN001
    return "-" if d is None else f"${d:,.6f}"


@click.group("costs")
def costs_group() -> None:
    """Price LLM spans, inspect prices, find models without a price."""


@costs_group.command("reprice")
@click.option("--experiment", "experiments", multiple=True, help="Name or id (repeatable).")
@click.option("--since", help="Only traces from this ISO time on (ignores the watermark).")
@click.option("--until", help="Only traces before this ISO time.")
@click.option("--force", is_flag=True, help="Re-write spans already priced with this catalog.")
@click.option("--overrides", type=click.Path(dir_okay=False), help="Price overrides YAML.")
@pass_app
def reprice_cmd(
    app: AppContext,
    experiments: tuple[str, ...],
    since: str | None,
    until: str | None,
    force: bool,
    overrides: str | None,
) -> None:
    """Price new LLM spans (or all history after a price change) and show what moved."""
    from mlflow_llmops.pricing import reprice
    from mlflow_llmops.statestore.state import StateStore

    cfg = app.config
    calc = _calculator(app, overrides)
    store = StateStore(cfg.state_store.url)
    try:
        result = reprice(
            tracking_uri=cfg.tracking.uri,
            state_store=store,
            experiment_ids=_experiment_ids(app, experiments),
            since_ms=_when_ms(since, "--since"),
            until_ms=_when_ms(until, "--until"),
            now=datetime.now(UTC),
            calculator=calc,
            database_url=cfg.tracking.sql_url(),
            force=force,
            lookback_s=cfg.pricing.lookback.total_seconds(),
            batch_size=cfg.pricing.batch_size,
        )
    finally:
        store.dispose()
    click.echo(result.summary())
    if result.cost_by_model:
        click.echo("\ncost of the spans priced in this run, by model:")
        for model, usd in sorted(result.cost_by_model.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {model:<45} {_usd(usd):>16}")
    changed = [d for d in result.diffs if d.changed_spans]
    if changed:
        click.echo("\ndifference to the previous pricing (re-priced spans):")
        click.echo(f"  {'model':<40} {'spans':>7} {'before':>14} {'after':>14} {'delta':>14}")
        for d in changed:
            click.echo(
                f"  {str(d.model):<40} {d.changed_spans:>7} {_usd(d.before_usd):>14} "
                f"{_usd(d.after_usd):>14} {_usd(d.delta_usd):>14}"
            )
    if result.unpriced:
        click.echo("\nspans without a full price (see `mlflow-llmops costs unpriced`):")
        for (model, provider), n in sorted(result.unpriced.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {model or '(no model)'} [{provider or '-'}]: {n}")


@costs_group.command("show-price")
@click.argument("model")
@click.option("--provider", help="Provider as spans report it (openai, anthropic, ...).")
@click.option("--at", "at", help="Price in force on this date (default: today).")
@click.option("--overrides", type=click.Path(dir_okay=False), help="Price overrides YAML.")
@pass_app
def show_price(
    app: AppContext, model: str, provider: str | None, at: str | None, overrides: str | None
) -> None:
    """How MODEL is matched and what it costs per million tokens (tiers, long context, history)."""
    calc = _calculator(app, overrides)
    try:
        day = date.fromisoformat(at) if at else None
    except ValueError:
        raise click.BadParameter(
            f"{at!r}: write the date as YYYY-MM-DD", param_hint="--at"
        ) from None
    match, entry = calc.entry_for(model, provider, day)
    click.echo(f"catalog version: {calc.catalog_version}")
    if not match.matched:
        click.echo(f"{model}: UNPRICED ({match.reason})")
        if match.candidates:
            click.echo("  pass --provider with one of: " + ", ".join(match.candidates))
        raise SystemExit(1)
    click.echo(f"{model} -> {match.entry_key} (match: {match.kind})")
    if match.provider_inferred:
        click.echo("  provider inferred; also priced by: " + ", ".join(match.candidates))
    if entry is None:
        click.echo("  no price in force at that date")
        raise SystemExit(1)
    click.echo(f"  entry {entry.label} from {entry.source}")

    def show(title: str, per_million: dict) -> None:  # noqa: ANN001
        parts = ", ".join(f"{k} ${v.normalize():f}" for k, v in per_million.items())
        click.echo(f"  {title:<22} {parts or '(none)'}  per 1M tokens")

    show("standard", entry.rates.per_million())
    for tier, r in sorted(entry.tiers.items()):
        show(f"tier {tier}", r.per_million())
    for lc in entry.long_context:
        show(f"prompt > {lc.threshold}", lc.rates.per_million())
    for tier, lcs in sorted(entry.tier_long_context.items()):
        for lc in lcs:
            show(f"{tier}, prompt > {lc.threshold}", lc.rates.per_million())
    history = calc.catalog.versions(match.key)
    if len(history) > 1:
        click.echo("  price history (lowest priority first):")
        for e in history:
            since = e.effective_from.isoformat() if e.effective_from else "always"
            how = f"{e.discount_percent}% discount" if e.discount_percent is not None else ""
            click.echo(f"    from {since:<10} {e.source:<28} {how}")


@costs_group.command("unpriced")
@click.option("--since", help="Only spans of traces from this ISO time on.")
@pass_app
def unpriced(app: AppContext, since: str | None) -> None:
    """Models seen on LLM spans without a price, with volume (exit 1 if there are any)."""
    from mlflow_llmops.pricing import unpriced_models

    cfg = app.config
    url = cfg.tracking.sql_url() or cfg.state_store.url
    rows = unpriced_models(url, since_ms=_when_ms(since, "--since"))
    if not rows:
        click.echo("every priced span has a price")
        return
    calc = _calculator(app)
    click.echo(f"{'model':<40} {'provider':<14} {'status':<9} {'spans':>7} {'tokens':>12}  why")
    for r in rows:
        why = calc.match(r["model"], r["provider"]).reason or "some token types have no price"
        tokens = int(r["input_tokens"] or 0) + int(r["output_tokens"] or 0)
        click.echo(
            f"{str(r['model']):<40} {str(r['provider'] or '-'):<14} {r['status']:<9} "
            f"{r['spans']:>7} {tokens:>12}  {why}"
        )
    raise SystemExit(1)


@costs_group.command("history")
@click.option("--limit", default=10, show_default=True)
@pass_app
def history(app: AppContext, limit: int) -> None:
    """Past re-pricing runs: catalog versions and the cost difference each one made."""
    from mlflow_llmops.pricing.job import reprice_history
    from mlflow_llmops.statestore.state import StateStore

    store = StateStore(app.config.state_store.url)
    try:
        runs = reprice_history(store, limit)
    finally:
        store.dispose()
    for r in runs:
        click.echo(
            f"#{r['id']} {r['started_at']} catalog {r['catalog_version']} "
            f"(prev {r['previous_version'] or '-'}): {r['spans_written']} written, "
            f"{r['spans_changed']} changed, before ${r['cost_before_usd']} "
            f"after ${r['cost_after_usd']}"
        )


@costs_group.command("export-catalog")
@click.argument("directory", type=click.Path(file_okay=False))
def export_catalog(directory: str) -> None:
    """Copy MLflow's bundled price catalog to DIRECTORY, for services on the light install.

    ``mlflow-tracing`` does not ship the catalog files: ship DIRECTORY with the service
    and set ``pricing.mlflow_catalog_dir`` to it, so its cost tail rule prices as we do.
    """
    import shutil
    from pathlib import Path

    from mlflow_llmops.pricing.catalog import mlflow_catalog_dir

    src = mlflow_catalog_dir()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.json"))
    for f in files:
        shutil.copyfile(f, out / f.name)
    click.echo(f"copied {len(files)} catalog files from {src} to {out}")


COMMANDS = [costs_group]
