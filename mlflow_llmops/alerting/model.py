"""What the alert engine hands to dispatch: plain, frozen values.

The engine (rules, state machine) produces ``Alert`` values; the dispatch
pipeline (routing, grouping, outbox, notifiers, rollback) consumes them.
Identity is the label set, as in Prometheus: ``fingerprint`` is a stable hash
of the sorted labels (rule name included as label ``alertname``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ["info", "warning", "error", "critical"].index(self.value)


class AlertState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable identity of an alert instance: sha256 of the sorted label set, 16 hex chars."""
    blob = json.dumps(sorted((str(k), str(v)) for k, v in labels.items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    """One alert instance at one moment, as sent to receivers.

    ``labels`` identify it (``alertname``, ``severity`` and the group-by labels
    of the rule, e.g. ``model``); ``annotations`` describe it (``summary``,
    ``description``, ``runbook_url``, ``traces_url``). ``value`` is the signal
    that breached, ``threshold`` and ``baseline`` what it was compared with.
    ``episode`` counts firings of this instance: a re-breach after resolve is
    a new episode. ``ends_at`` is set once resolved.
    """

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: AlertState
    severity: Severity
    starts_at: datetime
    ends_at: datetime | None = None
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    window_s: float | None = None
    episode: int = 1
    rule: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def name(self) -> str:
        return str(self.labels.get("alertname", self.rule))

    @property
    def resolved(self) -> bool:
        return self.state == AlertState.RESOLVED
