"""``mlflow-llmops config check|show``."""

from __future__ import annotations

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
    files, packs, inline rules); exit 2 with the fix if invalid."""
    from mlflow_llmops.cli.alerts import _base_dir

    rules = app.config.alerting.all_rules(_base_dir(app))  # loading validates
    click.echo(f"configuration OK ({app.config_path or 'defaults and environment'}; "
               f"{len(rules)} alert rules)")  # fmt: skip


@config_group.command("show")
@pass_app
def show(app: AppContext) -> None:
    """Print the effective configuration, secrets masked: secret fields (tokens, routing
    keys, webhook URLs and secrets, headers) and the credentials of every URL."""
    from mlflow_llmops.secrets import mask_config

    data = app.config.model_dump(mode="json", by_alias=True)
    click.echo(yaml.safe_dump(mask_config(data), sort_keys=False))


COMMANDS = [config_group]
