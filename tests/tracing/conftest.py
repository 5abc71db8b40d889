"""Fixtures of the tracing tests: set up production tracing and always restore MLflow's
global state afterwards (other areas' tests share the worker processes)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from tracing_helpers import _CREATED, memory_dir

from mlflow_llmops.tracing import TracingHandle, setup_production_tracing


@pytest.fixture
def tracing() -> Iterator[Callable[..., TracingHandle]]:
    """``tracing(experiment, service, tracking_uri=..., **config)``; torn down afterwards."""
    import mlflow.tracking.fluent as fluent

    before_uri = mlflow.get_tracking_uri()
    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before_exp = fluent._active_experiment_id
    before_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    env_keys = (
        "MLFLOW_ASYNC_TRACE_LOGGING_RETRY_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    )
    before_vars = {k: os.environ.get(k) for k in env_keys}
    handles: list[TracingHandle] = []

    def make(experiment: str, service: str = "svc", **kw: Any) -> TracingHandle:
        h = setup_production_tracing(experiment, service, **kw)
        handles.append(h)
        return h

    yield make
    for h in handles:
        h.shutdown(10)
    mlflow.tracing.reset()
    mlflow.set_tracking_uri(before_uri)
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    fluent._active_experiment_id = before_exp
    for k, v in before_vars.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for s, h in before_signals.items():
        assert signal.getsignal(s) == h, f"signal handler for {s} not restored"


@pytest.fixture(scope="session", autouse=True)
def _remove_memory_dirs() -> Iterator[None]:
    yield
    for d in _CREATED:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fast_dir(tmp_path) -> Path:
    return memory_dir(tmp_path)


@pytest.fixture(scope="module")
def shared_sqlite_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store per module (creating one costs seconds); tests use their
    own experiments in it."""
    return f"sqlite:///{memory_dir(tmp_path_factory.mktemp('tracing-store')) / 'mlflow.db'}"
