"""Reading mlflow-llmops.yaml: the file, ``${VAR}`` interpolation, ``MLFLOW_LLMOPS__...``
overrides, and validation errors that name the key and the variable. Used by the whole
configuration (``mlflow_llmops.config``) and by a service reading one section
(``setup_production_tracing`` reads ``tracing:`` without the monitor's sections)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mlflow_llmops.core.config import DeprecatedKeyConflict, new_key_path, rename_deprecated_keys
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.secrets import SECRET_KEYS, mask_text, register_config_secrets

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "MLFLOW_LLMOPS__"
DEFAULT_CONFIG_FILES = ("mlflow-llmops.yaml", "mlflow-llmops.yml")
ENV_SOURCE = "the environment"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


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


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
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


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def env_names(
    env: Mapping[str, str], model: type[BaseModel] | None = None, prefix: str = ""
) -> dict[str, str]:
    """Config key path (``tracing.otlp.timeout``) -> the variable that set it; with
    ``model`` (whose keys start after ``prefix``), a deprecated key's variable
    (``..._TIMEOUT_S``) is also found under the new key."""
    out = {".".join(parts): key for parts, key in _env_keys(env)}
    if model is not None:
        skip = len([p for p in prefix.split(".") if p])
        for parts, key in _env_keys(env):
            if parts[:skip] == prefix.split(".")[:skip]:
                out.setdefault(".".join(parts[:skip] + new_key_path(model, parts[skip:])), key)
    return out


def _env_var(path: str, key: str) -> str:
    """The variable that sets key ``path + key`` (``tracing.`` + ``shutdown_timeout``)."""
    return ENV_PREFIX + f"{path}{key}".replace(".", "__").upper()


def renamed(
    model: type[BaseModel], data: Mapping[str, Any], source: str, path: str = ""
) -> dict[str, Any]:
    """``data`` read from ``source`` with deprecated keys spelled the new way (see
    ``rename_deprecated_keys``); both spellings in one source is a ConfigError."""
    from_env = source == ENV_SOURCE
    try:
        return rename_deprecated_keys(model, data, path, _env_var if from_env else None)
    except DeprecatedKeyConflict as e:
        if from_env:
            old, new = _env_var(e.path, e.old), _env_var(e.path, e.new)
            raise ConfigError(
                f"the environment: both {old} and {new} are set; {old} is the deprecated "
                f"spelling of {new}: unset {old}"
            ) from None
        raise ConfigError(f"{source}: {e}") from None


def format_validation_error(
    err: ValidationError,
    source: str,
    env_names: Mapping[str, str] | None = None,
    prefix: str = "",
) -> str:
    """One line per error, naming the key (``prefix`` + its path) and, when an
    ``MLFLOW_LLMOPS__...`` variable set it, that variable."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = prefix + (".".join(str(p) for p in e["loc"]) or "(root)")
        var = next(
            (v for k, v in (env_names or {}).items() if key == k or key.startswith(k + ".")), None
        )
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


def read_file(p: Path, env: Mapping[str, str]) -> dict[str, Any]:
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


def load_section_model(
    name: str,
    model: type[M],
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
    data = read_file(p, env).get(name) or {} if p is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: section {name!r} must be a mapping, got {type(data).__name__}")
    path = f"{name}."
    data = renamed(model, data, str(p), path)
    from_env = env_overrides(env).get(name) or {}
    if isinstance(from_env, dict):
        from_env = renamed(model, from_env, ENV_SOURCE, path)
    data = merge(data, from_env)
    if overrides:
        data = merge(data, renamed(model, overrides, "arguments", path))
    try:
        section = model.model_validate(data)
        register_config_secrets(section)  # a service's OTLP headers, without the rest
        return section
    except ValidationError as e:
        where = str(p) if p is not None else "configuration"
        raise ConfigError(
            format_validation_error(e, where, env_names(env, model, path), prefix=path)
        ) from None
