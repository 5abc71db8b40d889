"""Delivery under faults with the wall clock: Retry-After counted from the 429 that asked
for it, and PagerDuty incidents per alert group in a storm. Real slack-sdk and pagerduty
clients against the fakes on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from notify_helpers import PD_KEY, T0, make_alert, resolved

from mlflow_llmops.core.clock import SystemClock
from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.notify.notifiers.pagerduty import group_dedup_key
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


def _storm(groups: int, per_group: int) -> list:
    return [
        make_alert(f"Storm{g:02d}", model=f"m{i}") for g in range(groups) for i in range(per_group)
    ]


def _flush_until_sent(d: Dispatcher, start: datetime) -> datetime:
    """Flush once a second of injected time until the outbox is empty; the last flush time."""
    t = start
    for _ in range(600):
        d.flush(t)
        if not d.outbox_rows(status="pending") + d.outbox_rows(status="sending"):
            return t
        t += timedelta(seconds=1)
    raise AssertionError("the outbox did not drain")


def test_pagerduty_storm_opens_one_incident_per_group_and_resolves_them(store, pd):
    """1,000 alert instances in 50 groups: 50 incidents (Alertmanager opens 50; one per
    instance opened 1,000 over 8 minutes at PagerDuty's rate limit), all resolved after."""
    cfg = NotificationsConfig.model_validate({
        "receivers": [{"type": "pagerduty", "name": "pd", "routing_key": PD_KEY,
                       "base_url": pd.url, "ca_bundle": pd.ca_path}],
        "group_by": ["alertname"], "group_wait": "30s",
    })  # fmt: skip
    d = Dispatcher(cfg, store)
    alerts = _storm(50, 20)
    d.submit(alerts, T0)
    last = _flush_until_sent(d, T0 + timedelta(seconds=30))
    assert len(pd.incidents) == 50 and len(pd.open_incidents()) == 50
    assert {i.dedup_key for i in pd.incidents} == {
        group_dedup_key(k) for k in {r["group_key"] for r in _groups(store)}
    }
    assert len(pd.events) == 50  # one event per group notification, none per instance
    first = pd.events[0]
    assert first["payload"]["summary"].startswith("[FIRING:20] Storm")
    assert first["payload"]["custom_details"]["num_firing"] == 20
    # the default rate limit (burst 20, 2 per second) spreads the 30 others over 15 s
    assert last - (T0 + timedelta(seconds=30)) <= timedelta(seconds=20)
    # every alert resolves: each incident is resolved, none opened
    t = last + timedelta(minutes=10)
    d.submit([resolved(a, t) for a in alerts], t)
    _flush_until_sent(d, t)
    assert len(pd.incidents) == 50 and pd.open_incidents() == []


def _groups(store) -> list[dict]:
    import sqlalchemy as sa

    from mlflow_llmops.notify import tables

    with store.engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(tables.groups)).mappings()]
