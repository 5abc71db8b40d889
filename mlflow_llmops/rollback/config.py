"""Configuration of rollback hooks: ``alerting.rollback``. Import-light: models only."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator

from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import Duration


class RollbackHook(_Section):
    """What to roll back when which alert fires, and how carefully."""

    name: str
    #: ``model_alias`` (registered model), ``prompt_alias`` or ``function`` (``module:function``)
    target: Literal["model_alias", "prompt_alias", "function"]
    #: registered model or prompt name (alias targets)
    model: str | None = None
    prompt: str | None = None
    alias: str | None = None
    function: str | None = None
    #: rule names (``alertname``) that may trigger it; empty = none (explicit opt-in)
    rules: tuple[str, ...]
    severities: tuple[str, ...] = ("critical",)
    #: extra label matchers on the alert (e.g. ``model: gpt-4o``)
    match: dict[str, str] = Field(default_factory=dict)
    #: ``dry_run`` (default: plan and audit only), ``confirm`` (wait for
    #: ``alerts rollback approve ID``), ``auto``
    mode: Literal["dry_run", "confirm", "auto"] = "dry_run"
    #: the alert must have fired at least this long
    min_firing: Duration = timedelta(minutes=5)
    #: no second rollback of the same alias within this
    cooldown: Duration = timedelta(hours=1)
    #: at most this many executed rollbacks per alias per UTC day
    daily_budget: int = Field(default=2, ge=0)
    #: mode confirm: a plan not approved within this expires (as does one whose alert
    #: resolved); a stale rollback is worse than none
    approval_timeout: Duration = timedelta(hours=1)
    #: receivers that get the audit note (Slack note, PagerDuty change event)
    notify: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _target(self) -> RollbackHook:
        need = {
            "model_alias": ("model", "alias"),
            "prompt_alias": ("prompt", "alias"),
            "function": ("function",),
        }[self.target]
        missing = [k for k in need if not getattr(self, k)]
        if missing:
            raise ValueError(f"rollback hook {self.name!r} (target {self.target}): set {missing}")
        if self.function and not re.fullmatch(r"[\w.]+:[\w.]+", self.function):
            raise ValueError(
                f"rollback hook {self.name!r}: function must be 'package.module:function'"
            )
        if not self.rules:
            raise ValueError(
                f"rollback hook {self.name!r}: rules must name at least one alert rule"
            )
        return self


class RollbackConfig(_Section):
    """Rollback hooks and their guards."""

    #: the kill switch: false stops every rollback (also env MLFLOW_LLMOPS_ROLLBACK_DISABLED=1)
    enabled: bool = True
    hooks: tuple[RollbackHook, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> RollbackConfig:
        names = [h.name for h in self.hooks]
        if len(set(names)) != len(names):
            raise ValueError(f"rollback.hooks: duplicate hook names in {names}")
        return self
