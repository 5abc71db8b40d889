"""Fixtures of the pricing tests."""

from __future__ import annotations

import os

import mlflow
import pytest


@pytest.fixture(autouse=True)
def _mlflow_global_state_untouched():
    """Pricing tests share workers with other areas: leave MLflow's tracking URI as found."""
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    yield
    after = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    assert after == before, "a pricing test changed MLflow's global tracking URI"
