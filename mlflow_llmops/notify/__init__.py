"""The notify pipeline: routing, grouping, inhibition, silences, dedup, outbox, delivery.

Public names are imported lazily: ``mlflow_llmops.notify.config`` (models only) must load
on a service install, which lacks the monitor side's SQLAlchemy.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    **{
        n: "mlflow_llmops.notify.pipeline"
        for n in ("AlertSink", "Dispatcher", "DispatchReport", "Silences", "SqlThreadStore")
    },
    **{
        n: "mlflow_llmops.notify.stages"
        for n in ("Matcher", "Silence", "TokenBucket", "needs_update")
    },
    "NOTIFY_MIGRATIONS": "mlflow_llmops.notify.tables",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = list(_EXPORTS)
