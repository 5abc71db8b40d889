"""Rollback hooks: move an MLflow model or prompt alias back (or call a function), guarded
and audited. ``promote`` records the previous version, since MLflow keeps no alias history.

Public names are imported lazily: ``mlflow_llmops.rollback.config`` (models only) must
load on a service install, which lacks the monitor side's SQLAlchemy.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    n: "mlflow_llmops.rollback.manager"
    for n in (
        "KILL_SWITCH_ENV",
        "ROLLBACK_MIGRATIONS",
        "RollbackError",
        "RollbackManager",
        "RollbackRecord",
        "promote",
    )
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = list(_EXPORTS)
