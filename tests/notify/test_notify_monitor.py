"""The monitor's delivery thread: group_wait, rate limits and retries run on their own
timers, not once per evaluation interval, and only on the monitor holding the lease.
Real monitor, dispatcher, slack-sdk and the fake Slack; the wall clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from notify_helpers import make_alert

from mlflow_llmops.alerting.console import ConsoleSink
from mlflow_llmops.alerting.signals import MemorySignalSource
from mlflow_llmops.config import load_config
from mlflow_llmops.monitor.cycle import Monitor
from mlflow_llmops.notify import Dispatcher


def _config(tmp_path, state_url, slack, *, rules: int = 1, interval: str = "60s", **receiver):
    """``rules`` rules that fire at once (no data, ``no_data: alerting``): one group each."""
    return load_config(
        overrides={
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "state_store": {"url": state_url},
            "alerting": {
                "evaluation_interval": interval,
                "rules": [{"name": f"errors_{i}", "query": {"signal": "error_rate"},
                           "threshold": 0.2, "no_data": "alerting"} for i in range(rules)],
                "notifications": {
                    "receivers": [{"type": "slack", "name": "s",
                                   "webhook_url": slack.webhook_url("#alerts"), **receiver}],
                    "group_by": ["alertname"], "group_wait": "1s"},
            },
        },
        env={},
    )  # fmt: skip


def _wait_for(pred, timeout: float):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _run(mon: Monitor) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    th = threading.Thread(target=mon.run, kwargs={"stop": stop}, daemon=True)
    th.start()
    return th, stop


def test_group_wait_and_slack_rate_limit_do_not_wait_for_the_next_cycle(tmp_path, state_url, slack):
    """A storm of 8 groups, Slack limited to 2 messages per second: all are delivered within
    group_wait + 4 s, although the next evaluation is a minute away (without the delivery
    thread nothing at all goes out before it: group_wait is still running at the cycle)."""
    cfg = _config(tmp_path, state_url, slack, rules=8,
                  rate_limit={"per_second": 2, "burst": 2})  # fmt: skip
    mon = Monitor(cfg, source=MemorySignalSource(), steps={})
    assert isinstance(mon.sink, Dispatcher) and hasattr(mon.sink, "next_due")
    t0 = time.monotonic()
    th, stop = _run(mon)
    try:
        assert _wait_for(lambda: len(slack.messages_in("#alerts")) == 8, 20), len(
            slack.messages_in("#alerts")
        )
        took = time.monotonic() - t0
        assert 1.0 <= took <= 1.0 + 3.0 + 4.0, took  # group_wait + 6 rate-limited + slack
        names = sorted(m.text.split()[1] for m in slack.messages_in("#alerts"))
        assert names == [f"errors_{i}" for i in range(8)]
        # the rate limit held: never more than the burst plus two per second
        assert slack.max_per_second("#alerts") <= 4
    finally:
        stop.set()
        th.join(20)
    assert not th.is_alive()
    assert mon.store.lease_holder("alerting.monitor", datetime.now(UTC)) is None


def test_only_the_lease_holder_delivers(tmp_path, state_url, slack):
    cfg = _config(tmp_path, state_url, slack, interval="3s")
    mon = Monitor(cfg, source=MemorySignalSource(), steps={}, holder="standby")
    store = mon.store
    assert store.acquire_lease("alerting.monitor", "leader", 3600, datetime.now(UTC))
    # a notification is due in the standby's dispatcher (e.g. left by a dead leader)
    mon.sink.submit([make_alert("HighCost")], datetime.now(UTC))
    assert mon.sink.next_due(datetime.now(UTC)) is not None
    th, stop = _run(mon)
    try:
        time.sleep(2.5)
        assert slack.messages_in("#alerts") == [], "a standby delivered"
        store.release_lease("alerting.monitor", "leader")
        assert _wait_for(lambda: len(slack.messages_in("#alerts")) >= 1, 10)
        assert any("HighCost" in m.text for m in slack.messages_in("#alerts"))
    finally:
        stop.set()
        th.join(20)


def test_the_console_sink_needs_no_delivery_thread(tmp_path, state_url, slack):
    cfg = _config(tmp_path, state_url, slack, interval="1s")
    sink = ConsoleSink()
    assert not hasattr(sink, "next_due")
    mon = Monitor(cfg, source=MemorySignalSource(), steps={}, sink=sink)
    before = {t.name for t in threading.enumerate()}
    seen: list[set[str]] = []
    mon.run(max_cycles=2, on_cycle=lambda r: seen.append({t.name for t in threading.enumerate()}))
    assert all("llmops-monitor-delivery" not in names - before for names in seen)
    assert mon.drain(datetime.now(UTC)) == 0
