"""Rollback hooks: move an MLflow model or prompt alias back (or call a function), guarded
and audited. ``promote`` records the previous version, since MLflow keeps no alias history."""

from mlflow_llmops.rollback.manager import (
    KILL_SWITCH_ENV,
    ROLLBACK_MIGRATIONS,
    RollbackError,
    RollbackManager,
    RollbackRecord,
    promote,
)

__all__ = [
    "KILL_SWITCH_ENV",
    "ROLLBACK_MIGRATIONS",
    "RollbackError",
    "RollbackManager",
    "RollbackRecord",
    "promote",
]
