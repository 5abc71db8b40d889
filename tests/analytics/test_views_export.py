"""Views pinned to MLflow's schema; Parquet export incremental, resumable, and the same
through MLflow's REST API as through SQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import mlflow
import pytest
import sqlalchemy as sa
from mlflow_state import use_tracking_uri
from sql_times import NOW

from mlflow_llmops.analytics.export import export_parquet, read_export
from mlflow_llmops.analytics.queries import run_query
from mlflow_llmops.analytics.views import (
    TESTED_SCHEMAS,
    check_mlflow_schema,
    create_views,
    mlflow_head_revision,
    schema_release,
)
from mlflow_llmops.errors import StoreError
from mlflow_llmops.testing.seed import SeedSpan, SeedTrace, seed_traces

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")


def test_views_are_tested_on_the_installed_mlflow():
    """If this fails, MLflow was upgraded: re-check the views against its new schema
    (mlflow/store/tracking/dbmodels/models.py), then add the release to TESTED_SCHEMAS."""
    assert TESTED_SCHEMAS.get(mlflow_head_revision()) == mlflow.__version__
    assert schema_release(mlflow_head_revision()) == mlflow.__version__


def test_missing_schema_gives_a_clear_error(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError, match="not an MLflow tracking database.*mlflow db upgrade"):
        create_views(engine)


def test_old_schema_gives_a_clear_error(sqlite_store, tmp_path):
    import shutil

    src = sa.engine.make_url(sqlite_store[0]).database
    copy = tmp_path / "old.db"
    shutil.copy(src, copy)
    engine = sa.create_engine(f"sqlite:///{copy}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0584bdc529eb'"))
    with pytest.raises(StoreError, match=r"revision '0584bdc529eb'.*mlflow db upgrade"):
        create_views(engine)
    assert check_mlflow_schema(sa.create_engine(sqlite_store[0])) == mlflow_head_revision()


def _all(con, view):
    return sorted(con.execute(f"SELECT * FROM {view}").fetchall(), key=str)


def test_export_is_incremental_and_resumable(sqlite_store, duck, tmp_path):
    engine = sqlite_store[1]
    out = tmp_path / "exp"
    seen: list[str] = []

    def crash_after_three(day: str) -> None:
        seen.append(day)
        if len(seen) == 3:
            raise KeyboardInterrupt  # the process dies mid-export

    with pytest.raises(KeyboardInterrupt):
        export_parquet(engine, out, now=NOW, progress=crash_after_three)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["days"] == seen  # every finished day is recorded, nothing else
    assert not list(out.glob("**/.*tmp*"))  # no half-written file left behind

    resumed = export_parquet(engine, out, now=NOW)
    assert resumed.days[0] == "2026-03-02"  # 2 days before the watermark (end of the 3rd)
    full = read_export(duck[0])
    mine = read_export(out)
    for view in ("llmops_traces", "llmops_spans", "llmops_costs"):
        assert _all(mine, view) == _all(full, view)

    again = export_parquet(engine, out, now=NOW)
    assert again.days == ["2026-03-08", "2026-03-09", "2026-03-10"]  # 2 days lookback + today


def test_rest_export_matches_sql_export(mlflow_server_sqlite, tmp_path):
    from mlflow import MlflowClient

    from mlflow_llmops.pricing import reprice
    from mlflow_llmops.statestore.state import StateStore

    t0 = int(datetime(2026, 3, 9, 10, tzinfo=UTC).timestamp() * 1000)
    traces = [
        SeedTrace(timestamp_ms=t0 + i * 3_600_000, user=f"u{i % 2}", task_type="qa",
                  status="ERROR" if i == 2 else "OK",
                  spans=(SeedSpan("gpt-4o-mini", "openai", 1000 + i, 100, cache_read_tokens=200),
                         SeedSpan("acme-internal-llm", "acme", 50, 5, start_offset_ms=200)))
        for i in range(4)
    ]  # fmt: skip
    seed_traces(mlflow_server_sqlite.url, "rest-export", traces)
    exp_id = MlflowClient(mlflow_server_sqlite.url).get_experiment_by_name("rest-export")
    exp_id = exp_id.experiment_id
    db = mlflow_server_sqlite.backend_store_uri
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    reprice(db, state_store=store, experiment_ids=[exp_id], now=NOW)
    store.dispose()

    via_api = export_parquet(mlflow_server_sqlite.url, tmp_path / "api", now=NOW,
                             experiment_ids=[exp_id])  # fmt: skip
    via_sql = export_parquet(sa.create_engine(db), tmp_path / "sql", now=NOW,
                             experiment_ids=[exp_id])  # fmt: skip
    assert via_api.rows == via_sql.rows and via_api.rows["llmops_traces"] == 4
    a, b = read_export(tmp_path / "api"), read_export(tmp_path / "sql")
    for view in ("llmops_traces", "llmops_spans"):
        cols = "* EXCLUDE (cost_usd)"
        assert sorted(a.execute(f"SELECT {cols} FROM {view}").fetchall(), key=str) == sorted(
            b.execute(f"SELECT {cols} FROM {view}").fetchall(), key=str
        )
        assert (
            a.execute(f"SELECT ROUND(SUM(cost_usd), 12) FROM {view}").fetchall()
            == b.execute(f"SELECT ROUND(SUM(cost_usd), 12) FROM {view}").fetchall()
        )
    # the CLI picks the REST source for an http:// tracking URI
    from click.testing import CliRunner

    from mlflow_llmops.cli import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tracking:\n  uri: {mlflow_server_sqlite.url}\n")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "export", "parquet", "--out",
                                 str(tmp_path / "cli"), "--experiment-id", exp_id,
                                 "--since", "2026-03-09"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "traces=4" in r.output and "spans=12" in r.output
    q = run_query("unpriced_usage", a, {"since_ms": t0, "until_ms": t0 + 86_400_000}, now=NOW)
    assert [r[0] for r in q.rows] == ["acme-internal-llm"]
    assert run_query("unpriced_usage", b, q.params, now=NOW).rows == q.rows


def test_export_picks_up_changes_to_days_before_its_lookback(tmp_path):
    """A backfill scoring old traces and a re-pricing after a price change touch days far
    behind the watermark: the next incremental export rewrites exactly those days."""
    from mlflow.entities import AssessmentSource

    from mlflow_llmops.pricing import reprice
    from mlflow_llmops.statestore.state import StateStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    day0 = int(datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp() * 1000)
    traces = [SeedTrace(timestamp_ms=day0 + d * 86_400_000, user=f"u{d}",
                        spans=(SeedSpan("gpt-4o-mini", "openai", 1000, 100),))
              for d in range(8)]  # fmt: skip
    ids = seed_traces(uri, "export-changes", traces)
    engine = sa.create_engine(uri)
    out = tmp_path / "lake"
    first = export_parquet(engine, out, now=NOW)
    assert first.days[0] == "2026-03-01" and first.rows["llmops_assessments"] == 0
    again = export_parquet(engine, out, now=NOW)
    assert again.days == ["2026-03-08", "2026-03-09", "2026-03-10"]  # nothing old changed

    with use_tracking_uri(uri):  # a backfill scores the trace of 2026-03-02, a week behind
        mlflow.log_feedback(trace_id=ids[1], name="quality", value=0.25,
                            source=AssessmentSource(source_type="CODE", source_id="q@v1"))  # fmt: skip
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    reprice(uri, state_store=store, now=NOW)  # our costs replace MLflow's on every day
    store.dispose()

    third = export_parquet(engine, out, now=NOW)
    assert set(third.days) >= {f"2026-03-0{d}" for d in range(1, 9)}
    lake = read_export(out)
    got = lake.execute("SELECT trace_id, value_num FROM llmops_assessments").fetchall()
    assert got == [(ids[1], 0.25)]
    assert lake.execute("SELECT COUNT(*) FROM llmops_costs").fetchone()[0] == 8
    fourth = export_parquet(engine, out, now=NOW)
    assert fourth.days == ["2026-03-08", "2026-03-09", "2026-03-10"]  # settled again
    engine.dispose()
