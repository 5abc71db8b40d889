"""Shared fixtures: real servers on 127.0.0.1 only (MLflow, PostgreSQL, fake LLM)."""

from __future__ import annotations

import os

import pytest
from binaries import require_binary  # noqa: F401 - re-exported

from mlflow_llmops.testing.fake_llm import FakeLLMServer
from mlflow_llmops.testing.mlflow_server import MlflowServer
from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available

for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ["MLFLOW_MODEL_CATALOG_URI"] = ""  # never fetch the remote price catalog
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm (bench extra) must not fetch either


def _require_pg() -> None:
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI and is not reachable")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    _require_pg()
    url = create_database("llmops_t")
    yield url
    drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def state_url(tmp_path):
    return f"sqlite:///{tmp_path / 'state' / 'state.db'}"


@pytest.fixture
def fake_llm():
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def mlflow_server_sqlite(tmp_path_factory):
    """A real ``mlflow server`` on a SQLite store, shared by the session."""
    d = tmp_path_factory.mktemp("mlflow-server-sqlite")
    with MlflowServer(f"sqlite:///{d / 'mlflow.db'}", artifact_root=str(d / "artifacts")) as srv:
        yield srv


@pytest.fixture(scope="session")
def mlflow_server_pg(tmp_path_factory):
    """A real ``mlflow server`` on a fresh PostgreSQL database, shared by the session."""
    _require_pg()
    url = create_database("llmops_srv")
    d = tmp_path_factory.mktemp("mlflow-server-pg")
    try:
        with MlflowServer(url, artifact_root=str(d / "artifacts")) as srv:
            srv.database_url = url  # type: ignore[attr-defined]
            yield srv
    finally:
        drop_database(url)
