"""Forward alerts to a Prometheus Alertmanager through its v2 API (``POST /api/v2/alerts``).

For teams whose paging already runs through Alertmanager: we send every alert
of the notification (resolved ones with ``endsAt``) and let it group, silence
and route on its own.
"""

from __future__ import annotations

from typing import Any

import requests

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.alerting.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    error_for_status,
)
from mlflow_llmops.alerting.notify_config import AlertmanagerReceiver


def _rfc3339(a: Alert, ends: bool) -> str | None:
    d = a.ends_at if ends else a.starts_at
    return d.isoformat().replace("+00:00", "Z") if d else None


def to_postable(a: Alert, generator_url: str | None = None) -> dict[str, Any]:
    """One ``postableAlert`` of Alertmanager's OpenAPI spec."""
    item: dict[str, Any] = {
        "labels": {k: str(v) for k, v in a.labels.items()},
        "annotations": {k: str(v) for k, v in a.annotations.items()},
        "startsAt": _rfc3339(a, False),
    }
    if a.value is not None:
        item["annotations"].setdefault("value", f"{a.value:g}")
    if a.threshold is not None:
        item["annotations"].setdefault("threshold", f"{a.threshold:g}")
    if a.resolved and a.ends_at:
        item["endsAt"] = _rfc3339(a, True)
    if generator_url:
        item["generatorURL"] = generator_url
    return item


class AlertmanagerNotifier:
    """Posts the notification's alerts to one Alertmanager."""

    def __init__(self, cfg: AlertmanagerReceiver, session: requests.Session | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.session = session or requests.Session()
        self.session.trust_env = False

    def send(self, n: Notification) -> SendResult:
        if n.kind != "alert":
            return SendResult(requests=0)  # Alertmanager has no notion of change events
        body = [to_postable(a, n.mlflow_ui_url) for a in n.alerts]
        url = self.cfg.url.rstrip("/") + "/api/v2/alerts"
        try:
            r = self.session.post(url, json=body, timeout=self.cfg.timeout_s)
        except requests.RequestException as e:
            raise NotifyError(f"alertmanager {self.name}: {type(e).__name__}: {e}") from e
        if r.status_code // 100 != 2:
            raise error_for_status(
                r.status_code, f"alertmanager {self.name}", r.text, r.headers.get("Retry-After")
            )
        return SendResult(requests=1)
