"""``mlflow-llmops config check|show``."""

from __future__ import annotations

import warnings

import click
import yaml

from mlflow_llmops.cli import AppContext, pass_app


@click.group("config")
def config_group() -> None:
    """Validate and show the configuration."""


@config_group.command("check")
@pass_app
def check(app: AppContext) -> None:
    """Validate the configuration file, the environment and the alert rules it names (rule
    files, packs, inline rules); exit 2 with the fix if invalid. Deprecated keys still in
    use are listed with their new spelling."""
    from mlflow_llmops.cli.alerts import _base_dir

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        cfg = app.config
    deprecated = [
        str(w.message).removeprefix(_DEPRECATED_PREFIX)
        for w in caught
        if str(w.message).startswith(_DEPRECATED_PREFIX)
    ]
    rules = cfg.alerting.all_rules(_base_dir(app))  # loading validates
    problems = [
        _sqlite_problem("tracking.uri", cfg.tracking.uri),
        _sqlite_problem("state_store.url", cfg.state_store.url),
    ]
    if any(problems):
        from mlflow_llmops.errors import ConfigError

        raise ConfigError("\n".join(p for p in problems if p))
    click.echo(
        f"configuration OK ({app.config_path or 'defaults and environment'}; "
        f"{len(rules)} alert rules)"
    )
    for message in dict.fromkeys(deprecated):
        click.echo(f"  deprecated: {message}")


_DEPRECATED_PREFIX = "mlflow-llmops configuration: "


def _sqlite_problem(name: str, url: str) -> str | None:
    """Why the SQLite database at ``url`` cannot be written, with the fix (None if it can,
    or if ``url`` is not a SQLite file). Otherwise tracing starts, then only says
    "experiment not resolved yet". MLflow creates missing parent directories, so the
    nearest existing one is probed with a real file: permissions alone do not tell (root,
    read-only mounts)."""
    import os
    import tempfile
    from pathlib import Path

    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///").split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    path = Path(raw).absolute()
    fix = f"point {name} at a file in a writable directory (e.g. sqlite:///mlflow.db)"
    if path.is_dir():
        return f"{name}: {url}: {path} is a directory; {fix}"
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{name}: {url}: {existing} is a file, not a directory; {fix}"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".llmops-check-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as e:
        return f"{name}: {url}: cannot write in {existing} ({e.strerror or e}); {fix}"
    return None


@config_group.command("show")
@pass_app
def show(app: AppContext) -> None:
    """Print the effective configuration, secrets masked: secret fields (tokens, routing
    keys, webhook URLs and secrets, headers) and the credentials of every URL."""
    from mlflow_llmops.secrets import mask_config

    data = app.config.model_dump(mode="json", by_alias=True)
    click.echo(yaml.safe_dump(mask_config(data), sort_keys=False))


COMMANDS = [config_group]
