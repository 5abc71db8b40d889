"""Receivers: Slack, PagerDuty, Alertmanager, signed webhook, console.

Each notifier has one method, ``send(notification)``, and raises
``NotifyError`` (permanent or retryable); retries belong to the outbox.
"""

from __future__ import annotations

from datetime import timedelta

from mlflow_llmops.notify.config import (
    AlertmanagerReceiver,
    ConsoleReceiver,
    PagerDutyReceiver,
    SlackReceiver,
    WebhookReceiver,
)
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    Notifier,
    NotifyError,
    SendResult,
)


def build_notifier(
    cfg: object, threads: object = None, *, evaluation_interval: timedelta = timedelta(minutes=1)
) -> Notifier:
    """The notifier for one receiver config (``threads``: Slack Web API thread store;
    ``evaluation_interval``: how often the monitor re-submits, for Alertmanager's validity)."""
    if isinstance(cfg, SlackReceiver):
        from mlflow_llmops.notify.notifiers.slack import SlackNotifier

        return SlackNotifier(cfg, threads)  # type: ignore[arg-type]
    if isinstance(cfg, PagerDutyReceiver):
        from mlflow_llmops.notify.notifiers.pagerduty import PagerDutyNotifier

        return PagerDutyNotifier(cfg)
    if isinstance(cfg, AlertmanagerReceiver):
        from mlflow_llmops.notify.notifiers.alertmanager import AlertmanagerNotifier

        return AlertmanagerNotifier(cfg, validity=cfg.validity(evaluation_interval))
    if isinstance(cfg, WebhookReceiver):
        from mlflow_llmops.notify.notifiers.webhook import WebhookNotifier

        return WebhookNotifier(cfg)
    if isinstance(cfg, ConsoleReceiver):
        from mlflow_llmops.notify.notifiers.console import ConsoleNotifier

        return ConsoleNotifier(cfg)
    raise TypeError(f"no notifier for {type(cfg).__name__}")


__all__ = ["Notification", "Notifier", "NotifyError", "SendResult", "build_notifier"]
