"""Configuration section ``analytics:`` (SQL views, exports, reports). Import-light."""

from __future__ import annotations

from pydantic import Field, field_validator

from mlflow_llmops.core.config import Section as _Section


class AnalyticsConfig(_Section):
    """Where SQL analyses run and where exports and reports go."""

    #: SQLAlchemy URL the SQL analyses run on; default: the tracking database
    #: (``tracking.database_url``, else ``tracking.uri`` when it is a database URL).
    database_url: str | None = None
    #: Folder of the ``*.sql`` analyses; default: the ``sql/`` folder of mlflow-llmops.
    sql_dir: str | None = None
    #: Only these MLflow experiments in exports and reports (empty: all).
    experiment_ids: list[str] = Field(default_factory=list)
    #: Where ``mlflow-llmops export parquet`` writes, and where ``--parquet`` reads by default.
    export_dir: str = ".mlflow-llmops/export"
    #: Each export re-writes this many days before its watermark (late traces, re-pricing).
    export_lookback_days: int = Field(default=2, ge=0, le=366)
    #: Where ``mlflow-llmops report daily`` writes its Markdown and PNG.
    report_dir: str = "reports"
    #: How many most expensive traces the daily report lists.
    report_top_traces: int = Field(default=10, ge=1, le=1000)
    #: The MLflow UI the daily report links top traces to; default: ``tracking.uri`` when
    #: it is an ``http(s)://`` server.
    ui_url: str | None = None

    @field_validator("experiment_ids", mode="before")
    @classmethod
    def _ids_as_strings(cls, v: object) -> object:
        if isinstance(v, str | int):
            v = [v]
        if isinstance(v, list):
            return [str(x) for x in v]
        return v
