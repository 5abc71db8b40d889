"""Delivery under faults with the wall clock: Retry-After counted from the 429 that asked
for it, and PagerDuty incidents per alert group in a storm. Real slack-sdk and pagerduty
clients against the fakes on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from notify_helpers import make_alert

from mlflow_llmops.alerting.dispatch import Dispatcher
from mlflow_llmops.alerting.notify_config import NotificationsConfig
from mlflow_llmops.clock import SystemClock
from mlflow_llmops.testing.fake_slack import SlackFault


def _wait_for(pred, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def _serve(d: Dispatcher) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    th = threading.Thread(target=d.serve, args=(SystemClock(), stop), daemon=True)
    th.start()
    return th, stop


def test_retry_after_counts_from_the_429_late_in_a_flush(store, slack):
    """Six groups in one flush; the first four answers are slow, the fifth is a 429 with
    Retry-After: 2 about 1.2 s into the flush. Its retry comes at least 2 s after that
    answer (it came 0.8 s after it when the delay was counted from the flush start)."""
    cfg = NotificationsConfig.model_validate({
        "receivers": [{"type": "slack", "name": "s", "token": slack.token, "channel": "#alerts",
                       "base_url": slack.api_url, "rate_limit": None}],
        "group_by": ["alertname"], "group_wait": "0s",
        "retry": {"initial_backoff": "50ms"},
    })  # fmt: skip
    d = Dispatcher(cfg, store)
    slack.script(*[SlackFault(200, delay_s=0.3)] * 4, SlackFault(429, retry_after=2))
    d.submit([make_alert(f"A{i}") for i in range(6)], datetime.now(UTC))
    th, stop = _serve(d)
    try:
        assert _wait_for(lambda: len(slack.messages_in("#alerts")) == 6, 30)
    finally:
        stop.set()
        th.join(10)
    posts = [r for r in slack.requests if r.path.endswith("chat.postMessage")]
    limited = next(r for r in posts if r.status == 429)
    retry = next(r for r in posts if r.received_at > limited.received_at and r.body == limited.body)
    assert retry.status == 200
    assert retry.received_at - limited.answered_at >= 2.0 - 0.01, (
        f"retry came {retry.received_at - limited.answered_at:.2f}s after the 429"
    )
