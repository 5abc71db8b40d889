"""What a rollback moves: an MLflow registered-model alias, a prompt alias, or a user function.

MLflow keeps no alias history, so the version to go back to is the one
recorded by ``promote`` (see ``manager.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PROMPT_CACHE_ENV = "MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS"


class AliasTarget(Protocol):
    kind: str
    name: str
    alias: str

    def current_version(self) -> str | None: ...

    def set_version(self, version: str) -> None: ...

    def tag(self, version: str, key: str, value: str) -> None: ...

    def propagation(self, version: str) -> str: ...


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class ModelAliasTarget:
    """``models:/name@alias``: resolved when a service loads the model."""

    kind = "model"

    def __init__(self, tracking_uri: str, name: str, alias: str) -> None:
        self.client = _client(tracking_uri)
        self.name, self.alias = name, alias

    def current_version(self) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException:
            return None

    def set_version(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, self.alias, version)

    def tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    def version_exists(self, version: str) -> bool:
        try:
            self.client.get_model_version(self.name, version)
            return True
        except MlflowException:
            return False

    def propagation(self, version: str) -> str:
        return (
            f"models:/{self.name}@{self.alias} now resolves to v{version}; a service picks it "
            "up when it next loads the model (restart or reload it)"
        )


class PromptAliasTarget:
    """``prompts:/name@alias``: ``load_prompt`` caches aliases per process (default 60 s)."""

    kind = "prompt"

    def __init__(self, tracking_uri: str, name: str, alias: str, cache_ttl_s: float = 60.0) -> None:
        self.client = _client(tracking_uri)
        self.name, self.alias = name, alias
        self.cache_ttl_s = cache_ttl_s

    def current_version(self) -> str | None:
        try:
            return str(self.client.get_prompt_version_by_alias(self.name, self.alias).version)
        except MlflowException:
            return None

    def set_version(self, version: str) -> None:
        self.client.set_prompt_alias(self.name, self.alias, int(version))

    def tag(self, version: str, key: str, value: str) -> None:
        self.client.set_prompt_version_tag(self.name, version, key, value)

    def version_exists(self, version: str) -> bool:
        try:
            return self.client.get_prompt_version(self.name, version) is not None
        except MlflowException:
            return False

    def propagation(self, version: str) -> str:
        return (
            f"prompts:/{self.name}@{self.alias} now resolves to v{version}; services calling "
            f"load_prompt see it within {self.cache_ttl_s:g}s ({PROMPT_CACHE_ENV})"
        )


@dataclass(frozen=True)
class ModelAliasRef:
    """A hook's registered-model alias, named without a client."""

    name: str
    alias: str

    @property
    def key(self) -> str:
        return f"model:{self.name}@{self.alias}"

    @property
    def description(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def open(self, tracking_uri: str, prompt_cache_ttl_s: float) -> AliasTarget | None:
        return ModelAliasTarget(tracking_uri, self.name, self.alias)


@dataclass(frozen=True)
class PromptAliasRef:
    """A hook's prompt alias, named without a client."""

    name: str
    alias: str

    @property
    def key(self) -> str:
        return f"prompt:{self.name}@{self.alias}"

    @property
    def description(self) -> str:
        return f"prompts:/{self.name}@{self.alias}"

    def open(self, tracking_uri: str, prompt_cache_ttl_s: float) -> AliasTarget | None:
        return PromptAliasTarget(tracking_uri, self.name, self.alias, prompt_cache_ttl_s)


@dataclass(frozen=True)
class FunctionRef:
    """A hook that calls ``package.module:function`` (no alias to move)."""

    function: str

    @property
    def key(self) -> str:
        return f"function:{self.function}"

    @property
    def description(self) -> str:
        return f"function {self.function}"

    def open(self, tracking_uri: str, prompt_cache_ttl_s: float) -> AliasTarget | None:
        return None


TargetRef = ModelAliasRef | PromptAliasRef | FunctionRef


def target_ref(
    target: str, *, model: str | None, prompt: str | None, alias: str | None, function: str | None
) -> TargetRef:
    """The reference a hook's ``target`` field names (the one place that switches on it)."""
    if target == "model_alias":
        return ModelAliasRef(model or "", alias or "")
    if target == "prompt_alias":
        return PromptAliasRef(prompt or "", alias or "")
    return FunctionRef(function or "")


def load_function(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the callable; clear error when it is not there."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"rollback function {spec!r}: cannot import {module_name!r}: {e}") from e
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"rollback function {spec!r}: {module_name} has no {attr!r}")
    if not callable(obj):
        raise ValueError(f"rollback function {spec!r} is not callable")
    return obj
