"""The links an on-call engineer needs on every alert: the traces behind it in the
MLflow UI and the runbook.

The engine adds them as annotations (``traces_url``, ``runbook_url``) because
only it knows the rule, the window and the experiment; every receiver then
shows the same links. MLflow 3's UI opens an experiment's traces tab on a time
range with ``#/experiments/<id>/traces?startTimeLabel=CUSTOM&startTime=..&endTime=..``
(the links its own charts build); there is no traces view across experiments,
so an alert links the experiment that carried most of its traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from mlflow_llmops.core.clock import utc


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _iso(d: datetime) -> str:
    d = utc(d)
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def fill_url(template: str, values: Mapping[str, Any]) -> str:
    """``{alertname}``, ``{model}``, ... of ``template`` filled in, URL-quoted; unknown kept."""
    return template.format_map(_Keep({k: quote(str(v), safe="") for k, v in values.items()}))


@dataclass(frozen=True)
class AlertLinks:
    """Where the links of an alert point (``alerting.notifications``)."""

    #: the MLflow UI, e.g. https://mlflow.internal (None: no traces link)
    mlflow_ui_url: str | None = None
    #: runbook for rules that name none (templates: ``{alertname}``, labels)
    runbook_url: str | None = None
    #: the experiments the monitor watches (one of them: the link needs no lookup)
    experiment_ids: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, alerting: Any) -> AlertLinks:
        """From an ``AlertingConfig``."""
        n = alerting.notifications
        return cls(n.mlflow_ui_url, n.runbook_url, tuple(alerting.experiment_ids))

    def traces_url(
        self, experiment_id: str, start: datetime | None = None, end: datetime | None = None
    ) -> str | None:
        """The experiment's traces tab, on ``[start, end]`` when given."""
        if not self.mlflow_ui_url:
            return None
        url = (
            f"{self.mlflow_ui_url.rstrip('/')}/#/experiments/{quote(experiment_id, safe='')}/traces"
        )
        if start is not None and end is not None:
            url += "?" + urlencode(
                {"startTimeLabel": "CUSTOM", "startTime": _iso(start), "endTime": _iso(end)}
            )
        return url

    def runbook(self, rule_runbook: str | None, values: Mapping[str, Any]) -> str | None:
        template = rule_runbook or self.runbook_url
        return fill_url(template, values) if template else None
