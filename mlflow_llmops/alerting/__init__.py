"""Alerting: rules, signals, the alert engine (state machine), packs, Prometheus export.

Notifications are in ``mlflow_llmops.notify``, rollback hooks in ``mlflow_llmops.rollback``,
the monitor cycle in ``mlflow_llmops.monitor``.

Public names are imported lazily so ``mlflow_llmops.config`` stays cheap.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Alert": "mlflow_llmops.alerting.model",
    "AlertState": "mlflow_llmops.alerting.model",
    "Severity": "mlflow_llmops.alerting.model",
    "fingerprint": "mlflow_llmops.alerting.model",
    "ThresholdRule": "mlflow_llmops.alerting.rules",
    "BaselineRule": "mlflow_llmops.alerting.rules",
    "BurnRateRule": "mlflow_llmops.alerting.rules",
    "SignalSpec": "mlflow_llmops.alerting.rules",
    "parse_rules": "mlflow_llmops.alerting.rules",
    "load_rule_file": "mlflow_llmops.alerting.rules",
    "load_pack": "mlflow_llmops.alerting.rules",
    "available_packs": "mlflow_llmops.alerting.rules",
    "budget_consumed": "mlflow_llmops.alerting.rules",
    "burn_rate_for_budget": "mlflow_llmops.alerting.rules",
    "SignalSource": "mlflow_llmops.alerting.signals",
    "SqlSignalSource": "mlflow_llmops.alerting.signals",
    "MemorySignalSource": "mlflow_llmops.alerting.signals",
    "TraceEvent": "mlflow_llmops.alerting.signals",
    "AlertEngine": "mlflow_llmops.alerting.engine",
    "AlertInstance": "mlflow_llmops.alerting.engine",
    "Evaluation": "mlflow_llmops.alerting.engine",
    "ALERTING_MIGRATIONS": "mlflow_llmops.alerting.engine",
    "replay": "mlflow_llmops.alerting.engine",
    "ConsoleSink": "mlflow_llmops.alerting.console",
    "export_prometheus_rules": "mlflow_llmops.alerting.prometheus",
    "grafana_dashboard": "mlflow_llmops.alerting.prometheus",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = list(_EXPORTS)
