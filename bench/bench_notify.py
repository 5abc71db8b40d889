"""Notification storm: 1,000 alert instances in 50 groups through the real pipeline
(outbox in SQLite, the monitor's delivery thread on the wall clock) to the fake Slack (incoming
webhook, real slack-sdk, rate limit 1 message/s per channel with a burst of 5) and the
fake PagerDuty (real ``pagerduty`` client over TLS), against the naive baseline of one
Slack message per alert sent as it fires.

Goals: one Slack message per group per interval (50, not 1,000), within Slack's rate
limit; re-submitting the same alerts on later monitor cycles sends nothing; delivery
under 2 s beyond ``group_wait`` where the receiver's rate limit allows it (PagerDuty:
one event per alert instance); on one Slack channel, 50 groups at 1/s take ~45 s by design.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_k, None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slack_sdk.webhook import WebhookClient  # noqa: E402

from mlflow_llmops.alerting.dispatch import Dispatcher  # noqa: E402
from mlflow_llmops.alerting.model import Alert, AlertState, Severity  # noqa: E402
from mlflow_llmops.alerting.monitor import deliver_when_due  # noqa: E402
from mlflow_llmops.alerting.notifiers import Notification  # noqa: E402
from mlflow_llmops.alerting.notifiers.slack import render_blocks  # noqa: E402
from mlflow_llmops.alerting.notify_config import NotificationsConfig  # noqa: E402
from mlflow_llmops.clock import SystemClock  # noqa: E402
from mlflow_llmops.store.state import StateStore  # noqa: E402
from mlflow_llmops.testing.fake_pagerduty import FakePagerDutyServer  # noqa: E402
from mlflow_llmops.testing.fake_slack import FakeSlackServer  # noqa: E402

ALERTS = int(os.environ.get("BENCH_NOTIFY_ALERTS", "1000"))
GROUPS = int(os.environ.get("BENCH_NOTIFY_GROUPS", "50"))
GROUP_WAIT_S = float(os.environ.get("BENCH_NOTIFY_GROUP_WAIT", "2"))
CYCLES = 3


def storm(now: datetime) -> list[Alert]:
    per = ALERTS // GROUPS
    out = []
    for g in range(GROUPS):
        for i in range(per):
            sev = "critical" if g % 5 == 0 else "warning"
            out.append(
                Alert(
                    labels={"alertname": f"Rule{g:02d}", "severity": sev, "model": f"model-{i}",
                            "route": f"/r{i % 7}"},
                    annotations={"summary": "storm", "runbook_url": "https://rb.example/x"},
                    state=AlertState.FIRING, severity=Severity(sev), starts_at=now,
                    value=1.5 + i, threshold=1.0, baseline=0.8, window_s=300, rule=f"Rule{g:02d}",
                )
            )  # fmt: skip
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def run_pipeline(slack: FakeSlackServer, pd: FakePagerDutyServer, tmp: Path) -> dict:
    conf = NotificationsConfig.model_validate(
        {
            "receivers": [
                {"type": "slack", "name": "slack", "webhook_url": slack.webhook_url("#alerts"),
                 "rate_limit": {"per_second": 1, "burst": 5}},
                {"type": "pagerduty", "name": "pd", "routing_key": "K" * 32, "base_url": pd.url,
                 "ca_bundle": pd.ca_path, "rate_limit": None},
            ],
            "group_by": ["alertname"],
            "group_wait": f"{GROUP_WAIT_S}s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "inhibit_rules": [],
        }
    )  # fmt: skip
    d = Dispatcher(conf, StateStore(f"sqlite:///{tmp / 'state.db'}"))
    clock = SystemClock()
    stop = threading.Event()
    # the monitor's delivery thread (what `mlflow-llmops monitor` runs beside its cycles)
    server = threading.Thread(
        target=deliver_when_due,
        args=(d, clock, stop),
        kwargs={"leading": lambda: True, "max_sleep_s": 0.2},
    )
    alerts = storm(clock.now())
    t_submit = time.time()
    t0 = time.perf_counter()
    d.submit(alerts, clock.now())
    submit_s = time.perf_counter() - t0
    server.start()
    # the monitor keeps re-sending active alerts every cycle (here every 5 s)
    deadline = time.monotonic() + 180
    cycles = 0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if len(slack.messages) >= GROUPS and len(pd.events) >= ALERTS:
            break
        if cycles < CYCLES and time.time() - t_submit > 5 * (cycles + 1):
            d.submit(alerts, clock.now())
            cycles += 1
    done = time.time()
    while cycles < CYCLES:
        d.submit(alerts, clock.now())
        cycles += 1
    time.sleep(1.0)
    stop.set()
    server.join(10)
    slack_lat = [m.received_at - t_submit - GROUP_WAIT_S for m in slack.messages]
    pd_lat = [e.received_at - t_submit - GROUP_WAIT_S for e in pd.requests if e.status == 202]
    return {
        "slack_messages": len(slack.messages),
        "slack_max_per_s": slack.max_per_second("#alerts"),
        "pd_events": len(pd.events),
        "pd_incidents": len(pd.incidents),
        "slack_p50": statistics.median(slack_lat),
        "slack_p95": pct(slack_lat, 0.95),
        "pd_p50": statistics.median(pd_lat),
        "pd_p95": pct(pd_lat, 0.95),
        "submit_ms": submit_s * 1000,
        "wall_s": done - t_submit,
    }


def run_naive(slack: FakeSlackServer) -> dict:
    """One message per alert, as soon as it fires, on every monitor cycle."""
    client = WebhookClient(slack.webhook_url("#sre"), retry_handlers=[])
    alerts = storm(datetime.now(UTC))
    t_submit = time.time()
    lat = []
    for a in alerts:
        n = Notification(receiver="naive", group_id=a.fingerprint, group_key=a.name, seq=1,
                         kind="alert", status="firing", alerts=(a,))  # fmt: skip
        text, blocks = render_blocks(n)
        client.send(text=text, blocks=blocks)
        lat.append(time.time() - t_submit)
    wall = time.time() - t_submit
    return {
        "messages_per_cycle": len(slack.messages_in("#sre")),
        "max_per_s": slack.max_per_second("#sre"),
        "p50": statistics.median(lat),
        "wall_s": wall,
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    print(f"storm: {ALERTS} alerts in {GROUPS} groups, group_wait {GROUP_WAIT_S:g}s, "
          f"{CYCLES} extra monitor cycles re-sending the same alerts")  # fmt: skip
    with FakeSlackServer(channels=("#alerts", "#sre")) as slack, FakePagerDutyServer() as pd:
        ours = run_pipeline(slack, pd, tmp)
        naive = run_naive(slack)
    naive_total = naive["messages_per_cycle"] * (1 + CYCLES)
    print(f"ours : {ours['slack_messages']} Slack messages (max {ours['slack_max_per_s']}/s in the "
          f"channel), {ours['pd_events']} PagerDuty events -> {ours['pd_incidents']} incidents; "
          f"submit of {ALERTS} alerts {ours['submit_ms']:.0f} ms")  # fmt: skip
    print(f"ours : beyond group_wait: Slack p50 {ours['slack_p50']:.1f}s p95 {ours['slack_p95']:.1f}s "
          f"(rate-limited 1/s, burst 5); PagerDuty p50 {ours['pd_p50']:.2f}s p95 {ours['pd_p95']:.2f}s")  # fmt: skip
    print(f"naive: {naive['messages_per_cycle']} Slack messages per monitor cycle "
          f"({naive_total} over {1 + CYCLES} cycles), max {naive['max_per_s']}/s in the channel, "
          f"p50 {naive['p50']:.2f}s after firing, {naive['wall_s']:.1f}s to send one cycle")  # fmt: skip
    print(
        f"RESULT notify_storm slack_messages={ours['slack_messages']} naive_messages={naive_total} "
        f"ratio={naive_total / max(1, ours['slack_messages']):.0f}x fewer "
        f"max_per_s={ours['slack_max_per_s']} (naive {naive['max_per_s']})"
    )
    print(
        f"RESULT notify_latency pagerduty_p50={ours['pd_p50']:.2f}s p95={ours['pd_p95']:.2f}s "
        f"slack_p50={ours['slack_p50']:.1f}s p95={ours['slack_p95']:.1f}s beyond group_wait "
        f"(naive p50 {naive['p50']:.2f}s after firing, no grouping, no rate limit)"
    )


if __name__ == "__main__":
    main()
