"""The monitor: each cycle re-prices, scores, evaluates the rules and notifies (with
rollback hooks), under a lease so that one of several monitors leads.

Public names are imported lazily so ``mlflow_llmops.config`` stays cheap.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Monitor": "mlflow_llmops.monitor.cycle",
    "CycleReport": "mlflow_llmops.monitor.cycle",
    "default_sink": "mlflow_llmops.monitor.cycle",
    "signal_source_from_config": "mlflow_llmops.monitor.cycle",
    "AlertingConfig": "mlflow_llmops.monitor.config",
    "MonitorConfig": "mlflow_llmops.monitor.config",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = list(_EXPORTS)
