"""The SQL cost analyses on Spark SQL, over a Parquet export: the scale-out path.

``run_query_spark(query, "s3a://bucket/export", now=...)`` registers the four
``llmops_*`` views as temporary views over the export written by
:mod:`mlflow_llmops.analytics.export` (local folders, or any path Spark's Parquet reader
accepts: ``s3a://``, ``abfss://``, ``hdfs://``), then runs the query as rendered for
Spark (:meth:`Query.render`) with every parameter bound by Spark itself
(``spark.sql(sql, args=...)``): values are data, never SQL text.

The views have exactly the columns and types of the DuckDB views
(:data:`~mlflow_llmops.analytics.views.VIEW_COLUMNS`, :func:`export.arrow_schema`): the
reader is given that schema, so a column that is NULL in every row keeps its type and
Spark's partition discovery adds no ``day`` column. A view with no folder or no files
yet (no assessments logged) is an empty table of that schema, not ``PATH_NOT_FOUND``.

Needs ``pip install 'mlflow-llmops[spark]'`` and a Java runtime (17+).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow_llmops.analytics.queries import Query, QueryResult, _normalise, bind_params, get_query
from mlflow_llmops.analytics.views import VIEW_COLUMNS, VIEW_NAMES
from mlflow_llmops.errors import LlmopsError, StoreError

DEFAULT_MASTER = "local[2]"

#: Session settings we rely on: UTC (the queries' day and hour buckets are UTC epoch
#: arithmetic, but Spark would show timestamps in the JVM's zone), no UI port taken, no
#: progress bars on the terminal under the CLI's table, and few shuffle partitions (an
#: export of days is small next to Spark's default of 200).
SESSION_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
}


def _require_pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise LlmopsError(
            "Spark needs pyspark: pip install 'mlflow-llmops[spark]' (and a Java 17+ runtime)"
        ) from None
    return pyspark


def spark_session(
    master: str = DEFAULT_MASTER,
    *,
    app_name: str = "mlflow-llmops",
    conf: Mapping[str, str] | None = None,
) -> Any:
    """A SparkSession for the analyses (or the active one, with our settings applied).

    ``master`` is ``local[N]``, ``spark://host:7077``, ``yarn``, ``k8s://...``; ``conf``
    adds settings such as ``spark.hadoop.fs.s3a.endpoint`` or ``spark.driver.memory``.
    """
    _require_pyspark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    for k, v in {**SESSION_CONF, **(conf or {})}.items():
        builder = builder.config(k, v)
    try:
        return builder.getOrCreate()
    except Exception as e:  # the JVM did not start: no java, bad master URL
        java = os.environ.get("JAVA_HOME") or "java on PATH"
        raise LlmopsError(
            f"cannot start Spark (master {master!r}, {java}): {str(e).splitlines()[0]}; "
            "install a Java 17+ runtime (Debian: apt-get install default-jre-headless) "
            "and check --master"
        ) from e


def spark_schema(view: str) -> Any:
    """The Spark schema of one view, from the Parquet schema the export writes."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from mlflow_llmops.analytics.export import arrow_schema

    return from_arrow_schema(arrow_schema(view))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path)


def _read_view(spark: Any, view: str, path: str) -> Any:
    """One view over the Parquet files under ``path`` (all ``day=`` folders), or empty."""
    from pyspark.errors import AnalysisException

    schema = spark_schema(view)
    empty = spark.createDataFrame([], schema)
    if _is_local(path):
        if not any(_local(path).glob("**/*.parquet")):
            return empty
        path = str(_local(path).resolve())
    reader = (
        spark.read.schema(schema)
        # every part file below the folder, without partition discovery (no `day`
        # column) and without the export's in-flight `.tmp-PID` files
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
    )
    try:
        df = reader.parquet(path)
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e) or "Path does not exist" in str(e):
            return empty
        raise
    return df.select(*VIEW_COLUMNS[view])


def create_spark_views(spark: Any, parquet_dir: str | Path) -> list[str]:
    """Register the four ``llmops_*`` views as temporary views of ``spark`` over the
    export at ``parquet_dir`` (a local folder or a URL such as ``s3a://bucket/export``);
    return their names."""
    from mlflow_llmops.analytics.export import EXPORT_TABLES

    root = str(parquet_dir).rstrip("/")
    if _is_local(root) and not _local(root).is_dir():
        raise StoreError(f"{root}: no Parquet export here; run `mlflow-llmops export parquet`")
    for view in VIEW_NAMES:
        _read_view(spark, view, f"{root}/{EXPORT_TABLES[view]}").createOrReplaceTempView(view)
    return list(VIEW_NAMES)


def run_query_spark(
    query: Query | str,
    parquet_dir: str | Path | None,
    params: Mapping[str, Any] | None = None,
    *,
    now: datetime,
    spark: Any = None,
    master: str = DEFAULT_MASTER,
    sql_dir: str | Path | None = None,
) -> QueryResult:
    """Run ``query`` with Spark SQL over the Parquet export at ``parquet_dir``.

    Parameters are checked and defaults resolved by the same :func:`bind_params` as
    the other engines (``now`` resolves ``now-7d``), then bound by Spark. Pass a
    ``spark`` session to reuse it (its views are replaced); otherwise one is started
    on ``master``. ``parquet_dir=None`` uses the ``llmops_*`` views already registered
    in ``spark``. Rows hold Python ints, floats (Spark decimals become floats) and
    strings, in the query's documented column order.
    """
    q = get_query(query, sql_dir) if isinstance(query, str) else query
    bound = bind_params(q, params or {}, now)
    spark = spark or spark_session(master)
    if parquet_dir is not None:
        create_spark_views(spark, parquet_dir)
    from pyspark.errors import PySparkException

    try:
        df = spark.sql(q.render("spark"), args=bound)
        rows = [tuple(_normalise(v) for v in r) for r in df.collect()]
    except PySparkException as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "TABLE_OR_VIEW_NOT_FOUND" in msg:
            raise LlmopsError(
                f"query {q.name}: the llmops_* views are not registered in this Spark "
                "session; pass parquet_dir= (an export from `mlflow-llmops export parquet`)"
            ) from e
        raise LlmopsError(f"query {q.name} failed on Spark: {msg}") from e
    return QueryResult(q, q.column_names, rows, bound)
