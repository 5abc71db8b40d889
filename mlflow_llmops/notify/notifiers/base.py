"""What a notifier receives and how it reports failure.

A ``Notification`` is the JSON-serialisable payload the outbox stores, so a
notification decided before a crash is sent unchanged after the restart.
Notifiers raise ``NotifyError``: ``permanent`` failures (400, 403, 404, 410,
``channel_not_found``) are reported and never retried; the others are retried
by the outbox, honouring ``retry_after``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mlflow_llmops.alerting.model import Alert, AlertState, Severity
from mlflow_llmops.core.clock import utc
from mlflow_llmops.core.http import retry_after_seconds

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410, 413, 422})


class NotifyError(Exception):
    """A send failed; ``permanent`` says whether retrying can help."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status


def error_for_status(
    status: int, what: str, body: str = "", retry_after: str | None = None
) -> NotifyError:
    """Classify an HTTP status the way every receiver API documents it."""
    ra = retry_after_seconds(retry_after)
    permanent = status in PERMANENT_STATUSES or (400 <= status < 500 and status not in (408, 429))
    return NotifyError(
        f"{what}: HTTP {status} {body[:200]}".strip(),
        permanent=permanent,
        retry_after=ra,
        status=status,
    )


def _iso(d: datetime | None) -> str | None:
    if d is None:
        return None
    return utc(d).isoformat()


def alert_to_dict(a: Alert) -> dict[str, Any]:
    """An ``Alert`` as plain JSON (what the outbox stores)."""
    return {
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "state": a.state.value,
        "severity": a.severity.value,
        "starts_at": _iso(a.starts_at),
        "ends_at": _iso(a.ends_at),
        "value": a.value,
        "threshold": a.threshold,
        "baseline": a.baseline,
        "window_s": a.window_s,
        "episode": a.episode,
        "rule": a.rule,
        "extra": {k: v for k, v in a.extra.items() if isinstance(v, str | int | float | bool)},
        "fingerprint": a.fingerprint,
    }


def alert_from_dict(d: Mapping[str, Any]) -> Alert:
    return Alert(
        labels=dict(d["labels"]),
        annotations=dict(d.get("annotations") or {}),
        state=AlertState(d["state"]),
        severity=Severity(d["severity"]),
        starts_at=datetime.fromisoformat(d["starts_at"]),
        ends_at=datetime.fromisoformat(d["ends_at"]) if d.get("ends_at") else None,
        value=d.get("value"),
        threshold=d.get("threshold"),
        baseline=d.get("baseline"),
        window_s=d.get("window_s"),
        episode=int(d.get("episode") or 1),
        rule=d.get("rule") or "",
        extra=dict(d.get("extra") or {}),
    )


@dataclass(frozen=True)
class Notification:
    """One message to one receiver about one group (or a rollback / test note)."""

    receiver: str
    group_id: str
    group_key: str
    seq: int
    kind: str  # "alert" | "rollback" | "test"
    status: str  # "firing" | "resolved"
    group_labels: Mapping[str, str] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()
    created_at: datetime | None = None
    mlflow_ui_url: str | None = None
    #: for kind == "rollback": the audit record
    rollback: Mapping[str, Any] | None = None
    #: free text for kind == "test"
    text: str = ""
    #: set by the outbox at send time, not stored in the payload: the key of this
    #: (receiver, group, sequence) that receivers dedupe on (Slack message metadata,
    #: webhook ``Idempotency-Key``), and whether an earlier attempt may have reached the
    #: receiver (claimed but never confirmed): then look before sending again
    outbox_key: str = ""
    maybe_sent: bool = False
    #: the lease epoch of the leader sending it (None without leader election)
    epoch: int | None = None

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if not a.resolved]

    @property
    def resolved_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.resolved]

    @property
    def common_labels(self) -> dict[str, str]:
        if not self.alerts:
            return dict(self.group_labels)
        common = dict(self.alerts[0].labels)
        for a in self.alerts[1:]:
            common = {k: v for k, v in common.items() if a.labels.get(k) == v}
        return common

    @property
    def common_annotations(self) -> dict[str, str]:
        if not self.alerts:
            return {}
        common = dict(self.alerts[0].annotations)
        for a in self.alerts[1:]:
            common = {k: v for k, v in common.items() if a.annotations.get(k) == v}
        return common

    @property
    def top_severity(self) -> Severity:
        pool = self.firing or list(self.alerts)
        if not pool:
            return Severity.INFO
        return max((a.severity for a in pool), key=lambda s: s.rank)

    @property
    def title(self) -> str:
        name = self.group_labels.get("alertname") or self.common_labels.get("alertname", "")
        if self.kind == "rollback" and self.rollback:
            r = self.rollback
            return f"[ROLLBACK {str(r.get('outcome', '')).upper()}] {r.get('target_desc', '')}"
        if self.kind == "test":
            return "[TEST] mlflow-llmops notification test"
        if self.status == "resolved":
            return f"[RESOLVED] {name}".strip()
        return f"[FIRING:{len(self.firing)}] {name} ({self.top_severity.value})".strip()

    def to_json(self) -> dict[str, Any]:
        return {
            "receiver": self.receiver,
            "group_id": self.group_id,
            "group_key": self.group_key,
            "seq": self.seq,
            "kind": self.kind,
            "status": self.status,
            "group_labels": dict(self.group_labels),
            "alerts": [alert_to_dict(a) for a in self.alerts],
            "created_at": _iso(self.created_at),
            "mlflow_ui_url": self.mlflow_ui_url,
            "rollback": dict(self.rollback) if self.rollback else None,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Notification:
        return cls(
            receiver=d["receiver"],
            group_id=d["group_id"],
            group_key=d["group_key"],
            seq=int(d["seq"]),
            kind=d["kind"],
            status=d["status"],
            group_labels=dict(d.get("group_labels") or {}),
            alerts=tuple(alert_from_dict(a) for a in d.get("alerts") or ()),
            created_at=datetime.fromisoformat(d["created_at"]) if d.get("created_at") else None,
            mlflow_ui_url=d.get("mlflow_ui_url"),
            rollback=d.get("rollback"),
            text=d.get("text") or "",
        )


def outbox_key(receiver: str, group_id: str, seq: int, created_at: str | None) -> str:
    """The idempotency key of one (receiver, group, sequence): stable across restarts (it
    is derived from the stored row), distinct for a group that restarts its sequence."""
    raw = f"{receiver}\n{group_id}\n{seq}\n{created_at or ''}"
    return "llmops-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class SendResult:
    """What a successful send returns: an external reference (Slack ts, PagerDuty keys)."""

    external_ref: str | None = None
    requests: int = 1


class Notifier(Protocol):
    """Sends one notification; raises ``NotifyError`` on failure."""

    name: str

    def send(self, n: Notification) -> SendResult: ...


def fmt_num(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:,.2f}"
    return f"{v:.4g}"


def describe_alert(a: Alert) -> str:
    """One line: value against threshold and baseline over the window."""
    parts = [f"value {fmt_num(a.value)}"]
    if a.threshold is not None:
        parts.append(f"threshold {fmt_num(a.threshold)}")
    if a.baseline is not None:
        parts.append(f"baseline {fmt_num(a.baseline)}")
    if a.window_s:
        parts.append(
            f"window {int(a.window_s // 60)}m" if a.window_s >= 60 else f"window {a.window_s:g}s"
        )
    return ", ".join(parts)


def target_desc(a: Alert) -> str:
    """Model and alias/version when the alert carries them (labels, annotations or extra)."""
    model = a.labels.get("model") or a.annotations.get("model") or a.extra.get("model")
    alias = a.labels.get("alias") or a.annotations.get("alias") or a.extra.get("alias")
    version = (
        a.labels.get("model_version")
        or a.annotations.get("model_version")
        or a.extra.get("model_version")
    )
    out = str(model) if model else ""
    if alias:
        out += f"@{alias}"
    if version:
        out += f" (v{version})"
    return out
