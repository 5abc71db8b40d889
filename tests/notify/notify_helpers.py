"""Alerts for the notification tests."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from mlflow_llmops.alerting.model import Alert, AlertState, Severity
from mlflow_llmops.notify.notifiers import Notification, NotifyError, SendResult

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PD_KEY = "R0UT1NGK3Y0000000000000000000000"


def make_alert(
    name: str = "HighCost",
    severity: str = "critical",
    *,
    state: str = "firing",
    starts_at: datetime = T0,
    ends_at: datetime | None = None,
    value: float = 12.5,
    episode: int = 1,
    **labels: str,
) -> Alert:
    return Alert(
        labels={"alertname": name, "severity": severity, **labels},
        annotations={
            "summary": f"{name} above threshold",
            "runbook_url": "https://runbooks.example/high-cost",
            "traces_url": "http://mlflow.example/#/experiments/1/traces",
        },
        state=AlertState(state),
        severity=Severity(severity),
        starts_at=starts_at,
        ends_at=ends_at,
        value=value,
        threshold=10.0,
        baseline=4.0,
        window_s=300,
        episode=episode,
        rule=name,
    )


def resolved(a: Alert, at: datetime) -> Alert:
    return Alert(**{**a.__dict__, "state": AlertState.RESOLVED, "ends_at": at})


class Recorder:
    """A receiver that records what it gets and fails as scripted."""

    def __init__(self, name: str = "rec", delay_s: float = 0.0) -> None:
        self.name = name
        self.sent: list[Notification] = []
        self.failures: list[NotifyError] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def send(self, n: Notification) -> SendResult:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            if self.failures:
                raise self.failures.pop(0)
            self.sent.append(n)
        return SendResult()
