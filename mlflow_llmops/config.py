"""One typed configuration: a YAML file plus the environment.

Values may reference the environment as ``${VAR}`` or ``${VAR:-default}``.
Any key can also be set as ``MLFLOW_LLMOPS__SECTION__KEY=value`` (double
underscores separate levels). Errors name the file, the key and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from mlflow_llmops.analytics.config import AnalyticsConfig
from mlflow_llmops.core.config import Section
from mlflow_llmops.core.configfile import (
    ENV_SOURCE,
    config_path,
    env_names,
    env_overrides,
    format_validation_error,
    load_section_model,
    merge,
    read_file,
    renamed,
)
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.monitor.config import AlertingConfig
from mlflow_llmops.pricing.config import PricingConfig
from mlflow_llmops.scoring.config import ScoringConfig
from mlflow_llmops.secrets import (
    register_config_secrets,
    register_secret,
)
from mlflow_llmops.tracing.config import TracingConfig


class TrackingConfig(Section):
    """Where MLflow keeps traces (the system of record)."""

    uri: str = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    experiment_name: str = "llmops-demo"
    #: SQLAlchemy URL of the tracking database, for SQL analyses when ``uri`` is an
    #: HTTP server. Defaults to ``uri`` itself when that is a database URL.
    database_url: str | None = None

    @field_validator("uri")
    @classmethod
    def _uri_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty; use e.g. sqlite:///mlflow.db or http://host:5000")
        return v

    def sql_url(self) -> str | None:
        """The tracking database's SQLAlchemy URL, or None for a REST-only server."""
        if self.database_url:
            return self.database_url
        if self.uri.startswith(("http://", "https://", "databricks")):
            return None
        return self.uri


class StateStoreConfig(Section):
    """Our own state (watermarks, price versions, alert instances, outbox)."""

    url: str = "sqlite:///.mlflow-llmops/state.db"


class LlmopsConfig(Section):
    """The whole configuration of mlflow-llmops."""

    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    state_store: StateStoreConfig = Field(default_factory=StateStoreConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)

    @model_validator(mode="after")
    def _register_secrets(self) -> LlmopsConfig:
        """Every secret this configuration holds is masked in logs, errors and stored text
        of this process from now on, however the configuration was built."""
        register_config_secrets(self)
        # secrets read from the environment by name (the judge's key, MLflow's credentials)
        for var in (
            self.scoring.judge.api_key_env,
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN",
        ):
            register_secret(os.environ.get(var))
        return self


def load_section(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """One section (``tracing``, ``pricing``) of the configuration, from the same file and
    environment as :func:`load_config`, validated alone (see ``load_section_model``)."""
    model = LlmopsConfig.model_fields[name].annotation
    return load_section_model(name, model, path, env=env, overrides=overrides)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LlmopsConfig:
    """Load the configuration from ``path`` (or the default files, or nothing) and the env."""
    env = os.environ if env is None else env
    source = "defaults"
    data: dict[str, Any] = {}
    p = config_path(path, env)
    if p is not None:
        source = str(p)
        data = renamed(LlmopsConfig, read_file(p, env), source)
    data = merge(data, renamed(LlmopsConfig, env_overrides(env), ENV_SOURCE))
    if overrides:
        data = merge(data, renamed(LlmopsConfig, overrides, "arguments"))
    try:
        return LlmopsConfig.model_validate(data)
    except ValidationError as e:
        names = env_names(env, LlmopsConfig)
        raise ConfigError(format_validation_error(e, source, names)) from None
