"""One way for tests to change MLflow's global state for a while and leave no trace of it.

``mlflow.set_tracking_uri(saved)`` to restore also sets ``MLFLOW_TRACKING_URI`` (MLflow
exports it for subprocesses), which leaks into later tests on the same worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import mlflow
from mlflow.tracking._tracking_service import utils as _tracking


@contextlib.contextmanager
def mlflow_globals_restored() -> Iterator[None]:
    """MLflow's tracking URI (and its variable) and active experiment as before, afterwards:
    for tests that call ``setup_production_tracing``, which sets both."""
    import mlflow.tracking.fluent as fluent

    saved_global = _tracking._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved_exp = fluent._active_experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)  # None unsets the variable too
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
        fluent._active_experiment_id = saved_exp


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI is ``uri`` inside; all as before after."""
    with mlflow_globals_restored():
        mlflow.set_tracking_uri(uri)
        yield
