"""Which install a feature needs: the service install (``mlflow-tracing``) or the monitor.

``pip install mlflow-llmops`` is the service side: tracing, sampling, redaction, the spool,
GenAI metrics, OTLP and the cost tail rule, on MLflow's light ``mlflow-tracing`` SDK.
``pip install 'mlflow-llmops[monitor]'`` adds full MLflow and what the monitor needs (SQL,
pricing job, scorers, alerting, notifications, CLI). A monitor module imported without
those gets one line saying what to install instead of a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

MONITOR_INSTALL = "pip install 'mlflow-llmops[monitor]'"

#: top-level modules that only the monitor install brings
MONITOR_MODULES = frozenset(
    {
        "alembic",
        "click",
        "duckdb",
        "flask",
        "matplotlib",
        "numpy",
        "pagerduty",
        "pandas",
        "pyarrow",
        "slack_sdk",
        "sqlalchemy",
        "sqlglot",
        "tqdm",
    }
)


class MissingMonitorInstall(ModuleNotFoundError):
    """A monitor feature was imported where only the service install is present."""


def _importer() -> str | None:
    """The ``mlflow_llmops`` module whose import statement is running, if any."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("mlflow_llmops.") and name != __name__:
            return name
        if not name.startswith("importlib"):
            return None  # imported by someone else's code: their error, not ours
        frame = frame.f_back
    return None


class _MonitorImportGuard(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: asked only about modules no finder could find."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        top = fullname.partition(".")[0]
        if top not in MONITOR_MODULES:
            return None
        importer = _importer()
        if importer is None:
            return None
        raise MissingMonitorInstall(
            f"{importer} is part of the monitoring side and needs {top!r}, which this "
            f"environment lacks (service install only?): {MONITOR_INSTALL}",
            name=fullname,
        )


def install_guard() -> None:
    """Idempotent: add the guard at the end of ``sys.meta_path``."""
    if not any(isinstance(f, _MonitorImportGuard) for f in sys.meta_path):
        sys.meta_path.append(_MonitorImportGuard())


def missing_for_monitor() -> list[str]:
    """What the monitor install would add here: full MLflow and its key libraries."""
    import importlib.metadata as md
    import importlib.util

    missing = [m for m in ("sqlalchemy", "pandas", "click") if importlib.util.find_spec(m) is None]
    try:
        md.distribution("mlflow")
    except md.PackageNotFoundError:
        missing.insert(0, "mlflow")
    return missing


def cli() -> None:
    """The ``mlflow-llmops`` console script: one line, not a traceback, on a service install."""
    missing = missing_for_monitor()
    if missing:
        print(
            f"mlflow-llmops: the CLI runs on the monitoring side, which needs "
            f"{', '.join(missing)} (this is a service install): {MONITOR_INSTALL}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    from mlflow_llmops.cli import main

    main()
