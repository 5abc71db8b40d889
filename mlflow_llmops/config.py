"""One typed configuration: a YAML file plus the environment.

Values may reference the environment as ``${VAR}`` or ``${VAR:-default}``.
Any key can also be set as ``MLFLOW_LLMOPS__SECTION__KEY=value`` (double
underscores separate levels). Errors name the file, the key and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlflow_llmops.errors import ConfigError
from mlflow_llmops.monitor.config import AlertingConfig
from mlflow_llmops.pricing.config import PricingConfig
from mlflow_llmops.scoring.config import ScoringConfig
from mlflow_llmops.secrets import (
    SECRET_KEYS,
    mask_text,
    register_config_secrets,
    register_secret,
)
from mlflow_llmops.store.config import AnalyticsConfig
from mlflow_llmops.tracing.config import TracingConfig

ENV_PREFIX = "MLFLOW_LLMOPS__"
DEFAULT_CONFIG_FILES = ("mlflow-llmops.yaml", "mlflow-llmops.yml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
        for var in (self.scoring.judge.api_key_env, "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_TRACKING_TOKEN"):  # fmt: skip
            register_secret(os.environ.get(var))
        return self


def interpolate(value: Any, env: Mapping[str, str], *, where: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a nested structure."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where or 'config'}: environment variable ${{{name}}} is not set; "
                f"export {name}=... or write ${{{name}:-default}}"
            )

        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {
            k: interpolate(v, env, where=f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, env, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _env_keys(env: Mapping[str, str]) -> Iterator[tuple[list[str], str]]:
    """``(config key path, variable)`` of every ``MLFLOW_LLMOPS__...`` variable."""
    for key in env:
        if key.startswith(ENV_PREFIX):
            yield [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p], key


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for parts, key in _env_keys(env):
        raw = env[key]
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _env_names(env: Mapping[str, str]) -> dict[str, str]:
    """Config key path (``tracing.otlp.timeout_s``) -> the variable that set it."""
    return {".".join(parts): key for parts, key in _env_keys(env)}


def format_validation_error(
    err: ValidationError, source: str, env_names: Mapping[str, str] | None = None,
    prefix: str = "",
) -> str:  # fmt: skip
    """One line per error, naming the key (``prefix`` + its path) and, when an
    ``MLFLOW_LLMOPS__...`` variable set it, that variable."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "(root)")
        var = next((v for k, v in (env_names or {}).items()
                    if key == k or key.startswith(k + ".")), None)  # fmt: skip
        if var:
            key = f"{key} (from the environment variable {var})"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required; add it")
        else:
            secret = any(w in key.lower() for w in SECRET_KEYS)
            shown = "" if secret or isinstance(got, dict | list) else f" (got {got!r})"
            msg = e["msg"].replace("\n", "\n      ")  # rule errors: one line each
            lines.append(f"  - {key}: {msg}{shown}")
    return mask_text("\n".join(lines))


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: ``path``, else ``$MLFLOW_LLMOPS_CONFIG``, else a default file in the
    working directory, else None (defaults and the environment only)."""
    chosen = (
        path
        or env.get("MLFLOW_LLMOPS_CONFIG")
        or next((p for p in DEFAULT_CONFIG_FILES if Path(p).is_file()), None)
    )
    if chosen is None:
        return None
    p = Path(chosen)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found; pass --config with an existing file")
    return p


def _read_file(p: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}"
        )
    return interpolate(loaded, env, where="")


def load_section(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """One section (``tracing``, ``pricing``) of the configuration, from the same file and
    environment as :func:`load_config`, validated alone: a service reads its ``tracing:``
    without the monitor's sections having to be valid where it runs. ``overrides`` (a
    mapping of the section's keys) win over the file and the environment."""
    env = os.environ if env is None else env
    p = config_path(path, env)
    data = _read_file(p, env).get(name) or {} if p is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: section {name!r} must be a mapping, got {type(data).__name__}")
    data = _merge(data, _env_overrides(env).get(name) or {})
    if overrides:
        data = _merge(data, overrides)
    model = LlmopsConfig.model_fields[name].annotation
    try:
        section = model.model_validate(data)
        register_config_secrets(section)  # a service's OTLP headers, without the rest
        return section
    except ValidationError as e:
        where = str(p) if p is not None else "configuration"
        raise ConfigError(
            format_validation_error(e, where, _env_names(env), prefix=f"{name}.")
        ) from None


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
        data = _read_file(p, env)
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    try:
        return LlmopsConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, _env_names(env))) from None
