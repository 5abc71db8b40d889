"""The ``mlflow-llmops`` command. Thin: parses arguments and calls public API.

Each module in this package exposes ``COMMANDS``, a list of click commands or
groups, and is discovered automatically, so every feature owns its own file.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from mlflow_llmops.errors import LlmopsError


class AppContext:
    """Holds the config path; loads the config on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config = None

    @property
    def config(self):  # noqa: ANN201 - LlmopsConfig, imported lazily
        if self._config is None:
            from mlflow_llmops.config import load_config

            self._config = load_config(self.config_path)
        return self._config


pass_app = click.make_pass_decorator(AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="MLFLOW_LLMOPS_CONFIG",
    type=click.Path(dir_okay=False),
    help="mlflow-llmops.yaml (default: ./mlflow-llmops.yaml if present).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Production monitoring for LLM applications on MLflow traces."""
    from mlflow_llmops.secrets import install_log_masking

    install_log_masking()
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = AppContext(config_path)


def _load_commands() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_load_commands()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mlflow-llmops", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        from mlflow_llmops.secrets import mask_text

        e.message = mask_text(e.message)
        e.show()
        sys.exit(e.exit_code)
    except LlmopsError as e:
        from mlflow_llmops.secrets import mask_text

        click.echo(f"error: {mask_text(str(e))}", err=True)
        sys.exit(2)
    except Exception:  # an unexpected error: the traceback, with no secret in it
        import traceback

        from mlflow_llmops.secrets import mask_text

        click.echo(mask_text(traceback.format_exc()).rstrip(), err=True)
        sys.exit(1)
