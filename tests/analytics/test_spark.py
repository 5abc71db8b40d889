"""Every query of sql/ gives on Spark SQL (local[2]) the rows DuckDB gives over the same
Parquet export, with the same views, parameters bound by Spark, and empty views."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from sql_times import NOW, START

from mlflow_llmops.analytics.queries import load_queries, run_query
from mlflow_llmops.analytics.views import VIEW_COLUMNS, VIEW_NAMES

pyspark = pytest.importorskip("pyspark", reason="pyspark missing: pip install '.[spark]'")
if shutil.which("java") is None and not __import__("os").environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime (apt-get install default-jre-headless)", allow_module_level=True)

from mlflow_llmops.analytics.spark import create_spark_views, run_query_spark, spark_session  # noqa: E402

pytestmark = pytest.mark.xdist_group("sql")

QUERIES = load_queries()
RANGE = {"since_ms": int(START.timestamp() * 1000), "until_ms": int(NOW.timestamp() * 1000)}


def params_for(name: str) -> dict:
    declared = {p.name for p in QUERIES[name].params}
    return {k: v for k, v in RANGE.items() if k in declared}


@pytest.fixture(scope="module")
def spark():
    s = spark_session("local[2]", conf={"spark.driver.memory": "512m"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def full(spark, duck):
    """A session (own temp views, shared JVM) with the views over the seeded export,
    registered once for all the parity tests."""
    session = spark.newSession()
    create_spark_views(session, duck[0])
    return session


def same_rows(spark_rows: list[tuple], duck_rows: list[tuple]) -> None:
    """Equal rows in the same order: ints stay ints, floats equal within 1e-9."""
    assert len(spark_rows) == len(duck_rows)
    for i, (a, b) in enumerate(zip(spark_rows, duck_rows, strict=True)):
        assert len(a) == len(b), i
        for j, (x, y) in enumerate(zip(a, b, strict=True)):
            where = f"row {i} column {j}: spark {x!r} duckdb {y!r}"
            if isinstance(y, float) or isinstance(x, float):
                if y is None or (isinstance(y, float) and math.isnan(y)):
                    assert x is None or math.isnan(x), where
                else:
                    assert x is not None and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), where
            else:
                assert type(x) is type(y) and x == y, where


def test_views_have_duckdb_columns_and_types(full, duck):
    out, con = duck
    spark = full
    types = {"BIGINT": "bigint", "DOUBLE": "double", "VARCHAR": "string", "BOOLEAN": "boolean"}
    for v in VIEW_NAMES:
        want = [
            (d[0], types[str(d[1])]) for d in con.execute(f"SELECT * FROM {v} LIMIT 0").description
        ]
        got = [(f.name, f.dataType.simpleString()) for f in spark.table(v).schema.fields]
        assert got == want, v
        assert got and [c for c, _ in got] == list(VIEW_COLUMNS[v])  # no `day` column
        n = con.execute(f"SELECT COUNT(*) FROM {v}").fetchone()[0]
        assert spark.table(v).count() == n > 0, v


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_matches_duckdb(name, full, duck):
    _, con = duck
    p = params_for(name)
    want = run_query(name, con, p, now=NOW)
    got = run_query_spark(name, None, p, now=NOW, spark=full)
    assert got.columns == want.columns and got.params == want.params
    assert want.rows, f"{name} returned nothing on the seeded data"
    same_rows(got.rows, want.rows)


def test_defaults_and_explicit_parameters_are_bound(full, duck):
    _, con = duck
    out, spark = None, full  # the views registered by `full`
    # limit (20) and experiment_id (NULL: all) left to their defaults
    p = {"since_ms": RANGE["since_ms"]}
    got = run_query_spark("top_traces", out, p, now=NOW, spark=spark)
    assert set(got.params) == {"since_ms", "until_ms", "experiment_id", "limit"}
    assert got.params["limit"] == 20 and got.params["experiment_id"] is None
    assert len(got.rows) == 20
    same_rows(got.rows, run_query("top_traces", con, p, now=NOW).rows)
    # every default, including relative times (now-1d .. now)
    same_rows(
        run_query_spark("daily_totals", out, now=NOW, spark=spark).rows,
        run_query("daily_totals", con, now=NOW).rows,
    )
    # an experiment id bound as a value: all rows belong to it, another id has none
    exp_id = con.execute("SELECT MIN(experiment_id) FROM llmops_traces").fetchone()[0]
    mine = run_query_spark("top_traces", out, {**p, "experiment_id": exp_id}, now=NOW, spark=spark)
    assert mine.rows == got.rows
    other = {**p, "experiment_id": exp_id + 1000}
    assert run_query_spark("top_traces", out, other, now=NOW, spark=spark).rows == []
    # a string parameter is data, not SQL
    evil = {**p, "user_id": "x' OR '1'='1", "limit": 5}
    assert run_query_spark("cost_by_session", out, evil, now=NOW, spark=spark).rows == []


def test_empty_views_are_empty_tables(spark, duck, tmp_path):
    """No assessments folder at all, and a costs folder without files (never priced):
    both engines see empty views of the right schema and agree on the queries that
    read them."""
    from mlflow_llmops.analytics.export import read_export

    spark = spark.newSession()
    src, _ = duck
    out = tmp_path / "export"
    shutil.copytree(src, out)
    shutil.rmtree(out / "assessments")
    for f in (out / "costs").glob("**/*.parquet"):
        f.unlink()
    con = read_export(out)
    try:
        create_spark_views(spark, out)
        for v in ("llmops_assessments", "llmops_costs"):
            df = spark.table(v)
            assert df.columns == list(VIEW_COLUMNS[v]) and df.count() == 0
        emptied = [n for n, q in QUERIES.items()
                   if "llmops_costs" in q.sql or "llmops_assessments" in q.sql]  # fmt: skip
        assert "cache_savings" in emptied
        for name in [*emptied, "daily_totals"]:
            p = params_for(name)
            same_rows(
                run_query_spark(name, out, p, now=NOW, spark=spark).rows,
                run_query(name, con, p, now=NOW).rows,
            )
        p = params_for("cache_savings")
        assert run_query_spark("cache_savings", None, p, now=NOW, spark=spark).rows == []
    finally:
        con.close()


def test_bad_input_gives_clear_errors(spark, duck, tmp_path):
    from mlflow_llmops.analytics.queries import QueryError
    from mlflow_llmops.errors import LlmopsError, StoreError

    out, _ = duck
    spark = spark.newSession()
    with pytest.raises(StoreError, match="no Parquet export here.*export parquet"):
        run_query_spark("daily_totals", tmp_path / "nope", now=NOW, spark=spark)
    with pytest.raises(QueryError, match="unknown parameter"):
        run_query_spark("daily_totals", out, {"bogus": 1}, now=NOW, spark=spark)
    with pytest.raises(QueryError, match="expected an integer"):
        run_query_spark("top_traces", out, {"limit": "ten"}, now=NOW, spark=spark)
    spark.catalog.dropTempView("llmops_traces")
    with pytest.raises(LlmopsError, match="not registered.*parquet_dir"):
        run_query_spark("daily_totals", None, now=NOW, spark=spark)


def test_cli_sql_run_engine_spark(spark, duck, tmp_path):
    """`sql run NAME --engine spark --parquet DIR` prints what DuckDB's run prints."""
    from click.testing import CliRunner

    from mlflow_llmops.cli import cli

    out, _ = duck
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text(f"tracking:\n  uri: sqlite:///{tmp_path / 'unused.db'}\n")
    args = ["--config", str(cfg), "sql", "run", "cost_by_user", "--parquet", str(out),
            "--now", NOW.isoformat(), "-p", "since_ms=2026-03-01", "--format", "json"]  # fmt: skip
    runner = CliRunner()
    duck_out = runner.invoke(cli, args, catch_exceptions=False)
    spark_out = runner.invoke(cli, [*args, "--engine", "spark", "--master", "local[2]"],
                              catch_exceptions=False)  # fmt: skip
    assert duck_out.exit_code == 0 and spark_out.exit_code == 0, spark_out.output
    a, b = json.loads(spark_out.output), json.loads(duck_out.output)
    assert a and [list(r) for r in a] == [list(r) for r in b]
    same_rows([tuple(r.values()) for r in a], [tuple(r.values()) for r in b])
    bad = runner.invoke(cli, [*args[:5], "--engine", "spark"], catch_exceptions=False)
    assert bad.exit_code != 0 and "--parquet" in bad.output
