"""Real slack-sdk and pagerduty / pdpyras clients against fake servers on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from notify_helpers import PD_KEY, T0, make_alert, resolved

from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.notify.notifiers import Notification
from mlflow_llmops.notify.notifiers.pagerduty import dedup_key
from mlflow_llmops.testing.fake_pagerduty import PagerDutyFault
from mlflow_llmops.testing.fake_slack import SlackFault


def at(s: float):
    return T0 + timedelta(seconds=s)


def dispatcher(store, *receivers, **cfg) -> Dispatcher:
    conf = NotificationsConfig.model_validate(
        {"receivers": list(receivers), "group_wait": "30s", "group_interval": "5m", **cfg}
    )
    return Dispatcher(conf, store)


def hook(slack, name="hook", channel="#alerts", **kw):
    return {"type": "slack", "name": name, "webhook_url": slack.webhook_url(channel), **kw}


def pd_rcv(pd, name="pd", **kw):
    return {"type": "pagerduty", "name": name, "routing_key": PD_KEY, "base_url": pd.url,
            "ca_bundle": pd.ca_path, **kw}  # fmt: skip


def test_slack_webhook_block_kit_message(store, slack):
    d = dispatcher(store, hook(slack))
    a = make_alert("HighCost", model="gpt-4o", alias="champion", model_version="7")
    d.submit([a], at(0))
    assert d.flush(at(30)).sent == 1
    [m] = slack.messages_in("#alerts")
    assert m.blocks[0]["type"] == "header" and "HighCost" in m.blocks[0]["text"]["text"]
    body = m.blocks[1]["text"]["text"]
    for part in ("value 12.50", "threshold 10.00", "baseline 4.00", "window 5m",
                 "gpt-4o@champion (v7)", "|traces>", "|runbook>"):  # fmt: skip
        assert part in body, part


def test_slack_webhook_429_retry_after_500_then_ok_and_permanent_errors(store, slack):
    d = dispatcher(store, hook(slack), hook(slack, "gone", "#nowhere"))
    slack.script(SlackFault(429, retry_after=12), SlackFault(500))
    d.submit([make_alert()], at(0))
    r = d.flush(at(30))
    # the first receiver got 429, the second the 500; #nowhere answers 404 later
    assert r.retry_scheduled == 2
    assert d.next_due(at(30)) >= at(42) or d.next_due(at(30)) <= at(32)
    rows = {row["receiver"]: row for row in d.outbox_rows()}
    assert rows["hook"]["next_attempt_at"].replace(tzinfo=None) >= at(42).replace(tzinfo=None)
    d.flush(at(100))
    assert len(slack.messages_in("#alerts")) == 1
    failed = d.outbox_rows(status="failed")
    assert [f["receiver"] for f in failed] == ["gone"]
    assert "404" in failed[0]["last_error"] and "channel_not_found" in failed[0]["last_error"]
    for status in (400, 403, 410):
        slack.script(SlackFault(status))
        d.submit([make_alert(f"P{status}")], at(200))
        r = d.flush(at(231 + status))
        assert any(str(status) in err for _, err in r.failed), (status, r)


def test_slack_web_api_thread_and_resolved_edit(store, slack):
    d = dispatcher(
        store,
        {
            "type": "slack",
            "name": "api",
            "token": slack.token,
            "channel": "#alerts",
            "base_url": slack.api_url,
        },  # fmt: skip
        repeat_interval="1h",
    )
    a = make_alert("Latency", "critical", model="m1")
    d.submit([a], at(0))
    d.flush(at(30))
    d.submit([a, make_alert("Latency", "critical", model="m2")], at(60))
    d.flush(at(330))  # new alert: goes into the thread
    d.submit(
        [resolved(a, at(400)), resolved(make_alert("Latency", "critical", model="m2"), at(400))],
        at(400),
    )
    d.flush(at(630))
    top = slack.messages_in("#alerts", top_level=True)
    assert len(top) == 1
    replies = [m for m in slack.messages_in("#alerts") if m.thread_ts == top[0].ts]
    assert len(replies) == 1 and "FIRING:2" in replies[0].text
    assert top[0].updates and "RESOLVED" in top[0].text
    # a new episode after resolution opens a new top-level message
    d.submit([make_alert("Latency", "critical", model="m1", episode=2)], at(700))
    d.flush(at(730))
    assert len(slack.messages_in("#alerts", top_level=True)) == 2


def test_slack_web_api_channel_not_found_is_permanent_ratelimited_retried(store, slack):
    d = dispatcher(store, {"type": "slack", "name": "api", "token": slack.token,
                           "channel": "#missing", "base_url": slack.api_url})  # fmt: skip
    d.submit([make_alert()], at(0))
    r = d.flush(at(30))
    assert len(r.failed) == 1 and "channel_not_found" in r.failed[0][1]
    d2 = dispatcher(store, {"type": "slack", "name": "api2", "token": slack.token,
                            "channel": "#sre", "base_url": slack.api_url})  # fmt: skip
    slack.script(SlackFault(429, retry_after=3))
    d2.submit([make_alert("X")], at(0))
    assert d2.flush(at(30)).retry_scheduled == 1
    assert d2.flush(at(32)).sent == 0
    assert d2.flush(at(34)).sent == 1  # 3 s after the 429 answered


def test_slack_rate_limit_per_channel_with_the_delivery_thread(store, slack):
    """Real time: 8 groups to one channel go out at the configured rate after a burst of 2,
    delivered by ``serve`` (the thread that runs the group timers and retries)."""
    import threading

    from mlflow_llmops.core.clock import SystemClock

    d = dispatcher(store, hook(slack, rate_limit={"per_second": 5, "burst": 2}), group_wait="0s",
                   group_by=["alertname"])  # fmt: skip
    clock = SystemClock()
    stop = threading.Event()
    t = threading.Thread(target=d.serve, args=(clock, stop), kwargs={"max_sleep_s": 0.05})
    d.submit([make_alert(f"A{i}") for i in range(8)], clock.now())
    started = time.monotonic()
    t.start()
    try:
        while len(slack.messages_in("#alerts")) < 8 and time.monotonic() - started < 10:
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(5)
    assert len(slack.messages_in("#alerts")) == 8
    times = sorted(m.received_at for m in slack.messages_in("#alerts"))
    # The bucket spreads the 6 after the burst over ~1.2 s; unthrottled, 8 posts to a local
    # server take well under 0.2 s. Receive times jitter on a loaded machine: leave room.
    assert times[-1] - times[0] >= 0.7
    assert slack.max_per_second("#alerts") <= 2 + 5 + 1


def _pd_config(pd, backend):
    return pd_rcv(pd, backend=backend, incident_per="instance")


@pytest.mark.parametrize("backend", ["pagerduty", "pdpyras"])
def test_pagerduty_trigger_resolve_per_instance(store, pd, backend):
    if backend == "pdpyras":
        pytest.importorskip("pdpyras")
    d = dispatcher(store, _pd_config(pd, backend), group_by=["model"])
    alerts = [make_alert("Cost", "critical", model="a"), make_alert("Latency", "warning", model="b",
                                                                        service="chat")]  # fmt: skip
    d.submit(alerts, at(0))
    assert d.flush(at(30)).sent == 2
    assert len(pd.open_incidents()) == 2
    trig = pd.events[0]
    assert trig["payload"]["severity"] in ("critical", "warning")
    assert len(trig["payload"]["summary"]) <= 1024
    assert trig["payload"]["custom_details"]["threshold"] == 10.0
    assert {lk["text"] for lk in trig["links"]} == {"Traces in MLflow", "Runbook"}
    assert {e["payload"]["source"] for e in pd.events} == {"mlflow-llmops", "chat"}
    d.submit([resolved(alerts[0], at(100))], at(100))
    d.flush(at(330))
    assert [i.dedup_key for i in pd.open_incidents()] == [dedup_key(alerts[1])]
    assert pd.incidents_for(dedup_key(alerts[0]))[0].status == "resolved"


def test_pagerduty_summary_truncated_429_retried_400_permanent(store, pd):
    d = dispatcher(store, pd_rcv(pd))
    long = make_alert("Cost")
    long = type(long)(**{**long.__dict__, "annotations": {"summary": "x" * 5000}})
    pd.script(PagerDutyFault(429, retry_after=5))
    d.submit([long], at(0))
    assert d.flush(at(30)).retry_scheduled == 1
    assert len(pd.requests) == 1  # the client did not retry on its own: the outbox owns it
    assert d.flush(at(36)).sent == 1  # 5 s after the 429 answered
    assert len(pd.events[-1]["payload"]["summary"]) == 1024
    pd.script(PagerDutyFault(400))
    d.submit([make_alert("Bad")], at(40))
    r = d.flush(at(400))
    assert len(r.failed) == 1 and "400" in r.failed[0][1]


def test_pagerduty_change_event_for_rollback_note(store, pd):
    d = dispatcher(store, pd_rcv(pd))
    note = Notification(receiver="pd", group_id="rollback:abc", group_key="rollback:h", seq=1,
                        kind="rollback", status="firing",
                        rollback={"outcome": "executed", "target_desc": "models:/m@champion",
                                  "from_version": "2", "to_version": "1", "mode": "auto"})  # fmt: skip
    d.enqueue(note, at(0))
    assert d.flush(at(0)).sent == 1
    [ce] = pd.change_events
    assert "models:/m@champion" in ce["payload"]["summary"]
    assert ce["payload"]["custom_details"]["to_version"] == "1"
