"""Configuration section ``alerting:`` of mlflow-llmops.yaml. Import-light: models only.

The section the monitor runs: rules and the monitor loop are defined here,
``notifications`` in ``notify/config.py`` and ``rollback`` in ``rollback/config.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mlflow_llmops.alerting.rules import (
    BaselineRule,
    BurnRateRule,
    PackRef,
    ThresholdRule,
    collect_rules,
    parse_rules,
)
from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import Duration
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.rollback.config import RollbackConfig


class MonitorConfig(_Section):
    """The ``mlflow-llmops monitor`` loop."""

    #: re-price new spans before evaluating (cost signals need it)
    reprice: bool = True
    #: run due scorers before evaluating (quality signals need it)
    score: bool = True
    #: the evaluator lease: a standby takes over within this (+ a third) after a crash.
    #: Default: half the evaluation interval, so takeover happens within one interval.
    lease_ttl: Duration | None = None
    #: name of the lease several monitors on one state store compete for
    lease_name: str = "alerting.monitor"


class AlertingConfig(_Section):
    """Alert rules, monitor cycle, notifications and rollback."""

    #: how often the monitor evaluates the rules
    evaluation_interval: Duration = timedelta(minutes=1)
    #: evaluate windows ending this long before now (traces arrive asynchronously)
    evaluation_delay: Duration = timedelta(0)
    #: ready-made rule packs to enable (names or {name, overrides, disable, labels, where})
    packs: tuple[PackRef, ...] = ()
    #: YAML files holding ``rules: [...]`` (globs allowed; relative to the config file)
    rule_files: tuple[str, ...] = ()
    #: inline rules
    rules: tuple[ThresholdRule | BaselineRule | BurnRateRule, ...] = ()
    #: restrict signals to these MLflow experiments (default: all)
    experiment_ids: tuple[str, ...] = ()
    #: resolved instances are kept this long (episode numbering, status)
    resolved_retention: Duration = timedelta(days=7)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)

    @field_validator("packs", mode="before")
    @classmethod
    def _pack_names(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [{"name": p} if isinstance(p, str) else p for p in v]
        return v

    @field_validator("packs")
    @classmethod
    def _packs_load(cls, v: tuple[PackRef, ...]) -> tuple[PackRef, ...]:
        try:
            collect_rules([], [], v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, v: Any) -> Any:
        try:
            return parse_rules(v, source="alerting.rules")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("evaluation_interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if v < timedelta(seconds=1):
            raise ValueError("evaluation_interval must be at least 1s")
        return v

    def lease_ttl(self) -> timedelta:
        return self.monitor.lease_ttl or self.evaluation_interval / 2

    def all_rules(
        self, base_dir: str | Path | None = None
    ) -> list[ThresholdRule | BaselineRule | BurnRateRule]:
        """Packs, rule files and inline rules, validated; disabled rules left out."""
        return collect_rules(
            self.rules,
            self.rule_files,
            self.packs,
            base_dir=Path(base_dir) if base_dir else None,
        )
