"""The dispatcher end to end over a real state store: grouping timers, dedup, resolve,
inhibition, silences, retries, ordering, at-most-once claims, restart."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from notify_helpers import T0, Recorder, make_alert, resolved

from mlflow_llmops.errors import ConfigError
from mlflow_llmops.notify import Dispatcher, Silences
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.notify.notifiers import NotifyError


def make(store, rec: Recorder | None = None, **cfg) -> tuple[Dispatcher, Recorder]:
    rec = rec or Recorder()
    conf = NotificationsConfig.model_validate(
        {
            "receivers": [
                {"type": "console", "name": "rec", "send_resolved": cfg.pop("send_resolved", True)}
            ],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            **cfg,
        }
    )
    return Dispatcher(conf, store, notifiers={"rec": rec}), rec


def at(s: float):
    return T0 + timedelta(seconds=s)


def test_group_wait_batches_a_storm_into_one_notification(store):
    d, rec = make(store)
    alerts = [make_alert("HighCost", model=f"m{i}") for i in range(20)]
    d.submit(alerts, at(0))
    assert d.flush(at(29)).sent == 0
    d.submit(alerts, at(29))  # the monitor re-sends active alerts every cycle
    r = d.flush(at(30))
    assert r.sent == 1 and len(rec.sent[0].alerts) == 20
    assert rec.sent[0].status == "firing" and rec.sent[0].seq == 1
    # nothing new: no repeat before group_interval / repeat_interval
    d.submit(alerts, at(60))
    assert d.flush(at(400)).sent == 0
    # a new alert joins the group: sent at the next group_interval, not at once
    d.submit([*alerts, make_alert("HighCost", model="new")], at(401))
    assert d.flush(at(401)).sent == 0
    assert d.flush(at(699)).sent == 0
    assert d.flush(at(700)).sent == 1  # flushed at 400, so next at 700
    assert len(rec.sent[-1].alerts) == 21
    # repeat_interval re-sends an unchanged group
    d.submit([*alerts, make_alert("HighCost", model="new")], at(4 * 3600 + 700))
    assert d.flush(at(4 * 3600 + 700)).sent == 1
    assert [n.seq for n in rec.sent] == [1, 2, 3]


def test_resolved_notification_and_send_resolved_false(store, tmp_path):
    d, rec = make(store)
    a = make_alert("ErrRate", "warning")
    d.submit([a], at(0))
    d.flush(at(30))
    d.submit([resolved(a, at(100))], at(100))
    d.flush(at(330))
    assert [n.status for n in rec.sent] == ["firing", "resolved"]
    assert rec.sent[1].alerts[0].resolved
    # the group is gone; a new episode starts with a fresh group_wait
    d.submit([make_alert("ErrRate", "warning", episode=2)], at(400))
    assert d.flush(at(401)).sent == 0
    assert d.flush(at(430)).sent == 1

    from mlflow_llmops.statestore.state import StateStore

    s2 = StateStore(f"sqlite:///{tmp_path / 'other.db'}")
    d2, rec2 = make(s2, send_resolved=False)
    d2.submit([a], at(0))
    d2.flush(at(30))
    d2.submit([resolved(a, at(100))], at(100))
    d2.flush(at(330))
    assert [n.status for n in rec2.sent] == ["firing"]


def test_critical_inhibits_warning_and_silences_mute(store):
    d, rec = make(store, group_by=["alertname", "severity"])
    crit = make_alert("Latency", "critical")
    warn = make_alert("Latency", "warning")
    other = make_alert("Cost", "warning")
    d.submit([crit, warn, other], at(0))
    r = d.flush(at(30))
    got = sorted((n.group_labels["alertname"], n.group_labels["severity"]) for n in rec.sent)
    assert got == [("Cost", "warning"), ("Latency", "critical")]
    assert r.inhibited == 1

    sil = Silences(store)
    sid = sil.add(["alertname=Quality"], starts_at=at(0), ends_at=at(3600), created_by="me",
                  comment="known", now=at(0))  # fmt: skip
    d.submit([make_alert("Quality", "critical")], at(40))
    r = d.flush(at(70))
    assert r.silenced == 1 and len(rec.sent) == 2
    assert [s.id for s in sil.list(at(100))] == [sid]
    assert sil.expire(sid, at(100))
    assert sil.list(at(101)) == []
    d.submit([make_alert("Quality", "critical")], at(100))
    d.flush(at(370))
    assert any(n.group_labels["alertname"] == "Quality" for n in rec.sent)


def test_transient_failures_retry_with_retry_after_and_permanent_fails(store):
    d, rec = make(store)
    rec.failures = [NotifyError("429", retry_after=20), NotifyError("500")]
    d.submit([make_alert()], at(0))
    r = d.flush(at(30))
    assert r.sent == 0 and r.retry_scheduled == 1
    due = d.next_due(at(30))
    assert due >= at(50)  # Retry-After 20 s honoured
    assert d.flush(at(49)).sent == 0
    # due 20 s after the 429 answered (a few ms after at(30) on the wall clock)
    assert d.flush(at(51)).retry_scheduled == 1  # the 500
    assert d.flush(at(60)).sent == 1
    row = d.outbox_rows()[0]
    assert row["status"] == "sent" and row["attempts"] == 3

    rec.failures = [NotifyError("channel_not_found", permanent=True)]
    d.submit([make_alert("Other")], at(100))
    r = d.flush(at(130))
    assert r.sent == 0 and len(r.failed) == 1 and "channel_not_found" in r.failed[0][1]
    assert d.outbox_rows(status="failed")[0]["last_error"].startswith("permanent")


def test_later_notifications_of_a_group_wait_for_earlier_ones(store):
    d, rec = make(store)
    a = make_alert()
    d.submit([a], at(0))
    rec.failures = [NotifyError("503", retry_after=1000)]
    d.flush(at(30))
    d.submit([resolved(a, at(40))], at(40))
    r = d.flush(at(330))  # the resolve is decided but must wait for #1
    assert r.notifications_enqueued == 1 and r.sent == 0
    d.flush(at(2000))
    assert [n.seq for n in rec.sent] == [1, 2]


def test_two_dispatchers_on_one_store_send_each_notification_once(store):
    rec = Recorder(delay_s=0.05)
    d1, _ = make(store, rec)
    d2, _ = make(store, rec)
    d1.submit([make_alert(f"A{i}") for i in range(8)], at(0))
    d1.decide(at(30))
    threads = [threading.Thread(target=d.deliver, args=(at(30),)) for d in (d1, d2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(n.group_labels["alertname"] for n in rec.sent) == [f"A{i}" for i in range(8)]


def test_state_survives_a_restart(store):
    d, rec = make(store)
    d.submit([make_alert()], at(0))
    d2, rec2 = make(store)  # a new process on the same store
    d2.flush(at(30))
    assert len(rec2.sent) == 1 and not rec.sent
    d3, rec3 = make(store)
    d3.submit([make_alert()], at(60))
    assert d3.flush(at(360)).sent == 0  # deduplicated across the restart


def test_config_errors_name_the_key():
    secret = NotificationsConfig.model_validate(
        {"receivers": [{"type": "slack", "name": "s", "webhook_url": "https://hooks/T/B/SECRET"}]}
    )
    assert "SECRET" not in repr(secret) and "SECRET" not in secret.model_dump_json()
    with pytest.raises(ValueError, match="unknown receiver 'nope'"):
        NotificationsConfig.model_validate(
            {"receivers": [{"type": "console", "name": "c"}], "route": {"receiver": "nope"}}
        )
    with pytest.raises(ValueError, match="exactly one of webhook_url"):
        NotificationsConfig.model_validate({"receivers": [{"type": "slack", "name": "s"}]})
    with pytest.raises(ValueError, match="https"):
        NotificationsConfig.model_validate(
            {
                "receivers": [
                    {"type": "pagerduty", "name": "p", "routing_key": "k", "base_url": "http://x"}
                ]
            }  # fmt: skip
        )
    with pytest.raises(ConfigError, match="receivers is empty"):
        Dispatcher(NotificationsConfig(), None)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_outbox_on_postgresql(pg_url):
    from mlflow_llmops.statestore.state import StateStore

    store = StateStore(pg_url)
    try:
        rec = Recorder()
        d1, _ = make(store, rec)
        d2, _ = make(store, rec)
        a = make_alert()
        d1.submit([a, make_alert("Other")], at(0))
        rec.failures = [NotifyError("429", retry_after=5)]
        d1.flush(at(30))
        d2.flush(at(36))  # another process picks up the retry
        d1.submit([resolved(a, at(40))], at(40))
        d2.flush(at(330))
        assert sorted((n.group_labels["alertname"], n.status) for n in rec.sent) == [
            ("HighCost", "firing"), ("HighCost", "resolved"), ("Other", "firing")
        ]  # fmt: skip
        assert {r["status"] for r in d1.outbox_rows()} == {"sent"}
    finally:
        store.dispose()


def test_alert_not_resubmitted_resolves_after_resolve_timeout(store):
    d, rec = make(store, resolve_timeout="10m")
    d.submit([make_alert("Gone")], at(0))
    d.flush(at(30))
    d.submit([make_alert("Gone")], at(60))  # last time the monitor reports it
    d.flush(at(330))
    assert [n.status for n in rec.sent] == ["firing"]
    d.flush(at(60 + 600 + 1))
    assert [n.status for n in rec.sent] == ["firing", "resolved"]
    assert rec.sent[-1].alerts[0].ends_at == at(660)
