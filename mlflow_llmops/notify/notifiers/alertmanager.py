"""Forward alerts to a Prometheus Alertmanager through its v2 API (``POST /api/v2/alerts``).

For teams whose paging already runs through Alertmanager: we send every alert
of the notification and let it group, silence and route on its own. As
Prometheus does, a firing alert carries ``endsAt`` = send time + a validity
(4 x the resend interval by default) and the dispatcher re-posts the active
alerts every ``resend_interval``: Alertmanager keeps an alert active while it
is re-posted (idempotent) and resolves it on its own once a stopped monitor
stops re-posting. Resolved alerts carry their real ``endsAt``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.core.clock import utc
from mlflow_llmops.notify.config import AlertmanagerReceiver
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    error_for_status,
)

#: how long a ``test-notify`` alert stays active in Alertmanager
TEST_ALERT_TTL = timedelta(minutes=1)
TEST_ALERTNAME = "MlflowLlmopsNotificationTest"


def _rfc3339(d: datetime | None) -> str | None:
    if d is None:
        return None
    d = utc(d)
    return d.isoformat().replace("+00:00", "Z")


def to_postable(
    a: Alert, generator_url: str | None = None, *, valid_until: datetime | None = None
) -> dict[str, Any]:
    """One ``postableAlert`` of Alertmanager's OpenAPI spec; a firing alert ends at
    ``valid_until`` unless re-posted."""
    item: dict[str, Any] = {
        "labels": {k: str(v) for k, v in a.labels.items()},
        "annotations": {k: str(v) for k, v in a.annotations.items()},
        "startsAt": _rfc3339(a.starts_at),
    }
    if a.value is not None:
        item["annotations"].setdefault("value", f"{a.value:g}")
    if a.threshold is not None:
        item["annotations"].setdefault("threshold", f"{a.threshold:g}")
    if a.resolved and a.ends_at:
        item["endsAt"] = _rfc3339(a.ends_at)
    elif valid_until is not None:
        item["endsAt"] = _rfc3339(valid_until)
    url = a.annotations.get("traces_url") or generator_url
    if url:
        item["generatorURL"] = url
    return item


class AlertmanagerNotifier:
    """Posts the notification's alerts to one Alertmanager."""

    def __init__(
        self,
        cfg: AlertmanagerReceiver,
        session: requests.Session | None = None,
        *,
        validity: timedelta = timedelta(minutes=4),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.validity = validity
        self.clock = clock or (lambda: datetime.now(UTC))
        self.session = session or requests.Session()
        self.session.trust_env = False

    def send(self, n: Notification) -> SendResult:
        now = self.clock()
        if n.kind == "test":
            body = [self._test_alert(n, now)]
        elif n.kind == "alert":
            body = [
                to_postable(a, n.mlflow_ui_url, valid_until=now + self.validity) for a in n.alerts
            ]
        else:
            return SendResult(requests=0)  # Alertmanager has no notion of change events
        url = self.cfg.url.rstrip("/") + "/api/v2/alerts"
        try:
            r = self.session.post(url, json=body, timeout=self.cfg.timeout.total_seconds())
        except requests.RequestException as e:
            raise NotifyError(f"alertmanager {self.name}: {type(e).__name__}: {e}") from e
        if r.status_code // 100 != 2:
            raise error_for_status(
                r.status_code, f"alertmanager {self.name}", r.text, r.headers.get("Retry-After")
            )
        return SendResult(requests=1)

    def _test_alert(self, n: Notification, now: datetime) -> dict[str, Any]:
        """A real, short-lived alert: it goes through the Alertmanager's routes to its
        receivers, then resolves on its own a minute later."""
        return {
            "labels": {
                "alertname": TEST_ALERTNAME,
                "severity": "info",
                "llmops_receiver": self.name,
                "test_id": n.group_id,
            },
            "annotations": {"summary": n.text or "mlflow-llmops notification test"},
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(now + TEST_ALERT_TTL),
        }
