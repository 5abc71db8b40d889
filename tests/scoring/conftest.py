"""Scoring fixtures (helpers live in ``scoring_helpers.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from scoring_helpers import MlflowDb

from mlflow_llmops.statestore.state import StateStore


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> tuple[Path, str]:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("scoring-template") / "mlflow.db"
    exp_id = MlflowClient(f"sqlite:///{path}").create_experiment("exp")
    return path, exp_id


@pytest.fixture
def mlflow_db(tmp_path, template_db) -> MlflowDb:
    src, exp_id = template_db
    dst = tmp_path / "mlflow.db"
    shutil.copy(src, dst)
    return MlflowDb(f"sqlite:///{dst}", exp_id, dst)


@pytest.fixture
def judge_llm():
    """A fake OpenAI-compatible judge that grades like a real one (``grader``)."""
    from test_scoring_judge import grader

    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer

    with FakeLLMServer(FakeLLMConfig(responder=grader)) as srv:
        yield srv


@pytest.fixture
def store(state_url) -> StateStore:
    s = StateStore(state_url)
    yield s
    s.dispose()
