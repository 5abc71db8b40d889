"""Shared seeded stores for the SQL tests: the same traces, logged through MLflow's
public API into SQLite and PostgreSQL (schema created by MLflow), priced by the
re-pricing job up to a cut-off (later spans fall back to MLflow's cost), and exported
to Parquet for DuckDB."""

from __future__ import annotations

import os

import mlflow
import pytest
import sqlalchemy as sa
from mlflow_state import use_tracking_uri
from sql_dataset import EXPERIMENT, SPIKE, dataset  # noqa: F401 (shared with tests)
from sql_times import NOW, PRICED_UNTIL

from mlflow_llmops.analytics.views import create_views
from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available
from mlflow_llmops.testing.seed import seed_traces


@pytest.fixture(autouse=True)
def _mlflow_global_state_untouched():
    """SQL tests share workers with other areas: leave MLflow's tracking URI as found."""
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    yield
    after = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    assert after == before, "a SQL test changed MLflow's global tracking URI"


def _prepare(uri: str, state_url: str) -> tuple[sa.Engine, str]:
    from mlflow import MlflowClient

    from mlflow_llmops.pricing import reprice
    from mlflow_llmops.statestore.state import StateStore

    ids = seed_traces(uri, EXPERIMENT, dataset())
    exp_id = MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id
    _log_feedback(uri, ids)
    store = StateStore(state_url)
    reprice(uri, state_store=store, until_ms=int(PRICED_UNTIL.timestamp() * 1000), now=NOW)
    store.dispose()
    engine = sa.create_engine(uri)
    create_views(engine)
    return engine, exp_id


FEEDBACK = [(True, "correct"), (0.4, "relevance"), ("yes", "safe"), ("maybe", "tone")]


def _log_feedback(uri: str, trace_ids: list[str]) -> None:
    """Assessments as the scoring package writes them (docs/contracts.md)."""
    from mlflow.entities import AssessmentSource

    with use_tracking_uri(uri):
        for i, (value, name) in enumerate(FEEDBACK):
            mlflow.log_feedback(
                trace_id=trace_ids[i], name=name, value=value, rationale=f"because {i}",
                source=AssessmentSource(source_type="CODE", source_id=f"{name}@v2"),
                metadata={"llmops.scorer": name, "llmops.scorer_version": "2"},
            )  # fmt: skip


@pytest.fixture(scope="session")
def sqlite_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sql-sqlite")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    engine, exp_id = _prepare(uri, f"sqlite:///{d / 'state.db'}")
    yield uri, engine, exp_id
    engine.dispose()


@pytest.fixture(scope="session")
def pg_store(tmp_path_factory):
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    d = tmp_path_factory.mktemp("sql-pg")
    url = create_database("llmops_sql")
    try:
        engine, exp_id = _prepare(url, f"sqlite:///{d / 'state.db'}")
        yield url, engine, exp_id
        engine.dispose()
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def duck(sqlite_store, tmp_path_factory):
    from mlflow_llmops.analytics.export import export_parquet, read_export

    out = tmp_path_factory.mktemp("sql-parquet")
    export_parquet(sqlite_store[1], out, now=NOW)
    con = read_export(out)
    yield out, con
    con.close()
