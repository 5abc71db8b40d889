"""Notification storm: 1,000 alert instances in 50 groups through the real pipeline
(outbox in SQLite, the monitor's delivery thread on the wall clock) to the fake Slack (incoming
webhook, real slack-sdk, rate limit 1 message/s per channel with a burst of 5) and the
fake PagerDuty (real ``pagerduty`` client over TLS), against the naive baseline of one
Slack message per alert sent as it fires.

Goals: one Slack message per group per interval (50, not 1,000), within Slack's rate
limit; re-submitting the same alerts on later monitor cycles sends nothing; delivery
under 2 s beyond ``group_wait`` where the receiver's rate limit allows it; PagerDuty one
incident per group (50, not 1,000: the baseline is one incident per alert instance, whose
1,000 events take ~490 s at the default PagerDuty rate limit of 2/s, burst 20); on one
Slack channel, 50 groups at 1/s take ~45 s by design.

Then the crash storm: groups fired then resolved to the Slack Web API, a Slack incoming
webhook, PagerDuty and an idempotent webhook while the delivering process is SIGKILLed
repeatedly (mostly with a request applied by the receiver but not yet answered); counts
lost and duplicated effects per receiver kind (goal: 0 lost, 0 duplicated, incoming
webhook at most one repeat per kill).
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

from mlflow_llmops.alerting.model import Alert, AlertState, Severity  # noqa: E402
from mlflow_llmops.core.clock import SystemClock  # noqa: E402
from mlflow_llmops.monitor.cycle import deliver_when_due  # noqa: E402
from mlflow_llmops.notify import Dispatcher  # noqa: E402
from mlflow_llmops.notify.config import NotificationsConfig  # noqa: E402
from mlflow_llmops.notify.notifiers import Notification  # noqa: E402
from mlflow_llmops.notify.notifiers.slack import render_blocks  # noqa: E402
from mlflow_llmops.statestore.state import StateStore  # noqa: E402
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
                 "ca_bundle": pd.ca_path},
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
        if len(slack.messages) >= GROUPS and len(pd.incidents) >= GROUPS:
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
    slack_t = sorted(m.received_at for m in slack.messages)
    pd_t = sorted(e.received_at for e in pd.requests if e.status == 202)
    return {
        "slack_first_to_last": slack_t[-1] - slack_t[0],
        "pd_first_to_last": pd_t[-1] - pd_t[0],
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
    print(f"ours : first to last: Slack {ours['slack_first_to_last']:.1f}s, PagerDuty "
          f"{ours['pd_first_to_last']:.1f}s (rate limit 2/s, burst 20); one incident per "
          f"instance would be {ALERTS} events, {max(0, ALERTS - 20) / 2:.0f}s at that limit")  # fmt: skip
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
        f"RESULT notify_pagerduty incidents={ours['pd_incidents']} (per instance: {ALERTS}) "
        f"first_to_last={ours['pd_first_to_last']:.1f}s (per instance at the same rate limit: "
        f"{max(0, ALERTS - 20) / 2:.0f}s) ratio={ALERTS / max(1, ours['pd_incidents']):.0f}x fewer"
    )
    print(
        f"RESULT notify_latency pagerduty_p50={ours['pd_p50']:.2f}s p95={ours['pd_p95']:.2f}s "
        f"slack_p50={ours['slack_p50']:.1f}s p95={ours['slack_p95']:.1f}s beyond group_wait "
        f"(naive p50 {naive['p50']:.2f}s after firing, no grouping, no rate limit)"
    )
    crash_storm(tmp)


# -- crash storm ------------------------------------------------------------------------
CRASH_GROUPS = int(os.environ.get("BENCH_NOTIFY_CRASH_GROUPS", "12"))
CRASH_KILLS = int(os.environ.get("BENCH_NOTIFY_CRASH_KILLS", "8"))  # per phase


def _crash_alerts(state: str) -> list[Alert]:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    out = []
    for g in range(CRASH_GROUPS):
        for i in range(2):
            a = Alert(labels={"alertname": f"G{g:02d}", "severity": "critical", "model": f"m{i}"},
                      annotations={"summary": "crash storm"}, state=AlertState.FIRING,
                      severity=Severity.CRITICAL, starts_at=now, value=2.0, threshold=1.0,
                      rule=f"G{g:02d}")  # fmt: skip
            if state == "resolved":
                a = Alert(**{**a.__dict__, "state": AlertState.RESOLVED, "ends_at": now})
            out.append(a)
    return out


def crash_worker(state_url: str, config: str, state: str) -> None:
    """The delivering process of the crash storm: submit, flush until settled."""
    import json

    import sqlalchemy as sa

    from mlflow_llmops.notify import tables as t

    cfg = json.loads(config)
    store = StateStore(state_url)
    d = Dispatcher(NotificationsConfig.model_validate(cfg), store)
    d.submit(_crash_alerts(state), datetime.now(UTC))
    print("STARTED", flush=True)
    want = CRASH_GROUPS * len(cfg["receivers"])
    while True:
        with store.engine.connect() as c:
            busy = c.execute(
                sa.select(sa.func.count()).where(t.outbox.c.status.in_(("pending", "sending")))
            ).scalar_one()
            cond = t.groups.c.seq >= 1 if state == "firing" else t.groups.c.active.is_(False)
            done = c.execute(sa.select(sa.func.count()).where(cond)).scalar_one()
        if busy == 0 and done >= want:
            break
        d.flush(datetime.now(UTC))
        time.sleep(0.02)
    print("DONE", flush=True)


def _crash_phase(state_url: str, cfg: dict, phase: str, fakes: list, rng) -> int:  # noqa: ANN001
    import json
    import signal
    import subprocess

    kills = 0
    while True:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--crash-worker", state_url, json.dumps(cfg), phase],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout.readline().startswith("STARTED"), proc.stderr.read()
            if kills >= CRASH_KILLS:
                out, err = proc.communicate(timeout=180)
                assert "DONE" in out, err
                return kills
            fake = rng.choice(fakes)
            if rng.random() < 0.7:
                fake.request_seen.clear()
                fake.hold.clear()
                deadline = time.monotonic() + 20
                while proc.poll() is None and time.monotonic() < deadline:
                    if fake.request_seen.wait(0.05):
                        break
            else:
                time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is not None:
                return kills
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for f in fakes:
                f.hold.set()
        time.sleep(0.3)


def crash_storm(tmp: Path) -> None:
    import random

    from mlflow_llmops.testing.fake_webhook import FakeWebhookReceiver

    rng = random.Random(7)
    n = CRASH_GROUPS
    with FakeSlackServer() as api, FakeSlackServer() as hook, FakePagerDutyServer() as pd, \
            FakeWebhookReceiver() as web:  # fmt: skip
        cfg = {
            "receivers": [
                {"type": "slack", "name": "slack-api", "token": api.token, "channel": "#alerts",
                 "base_url": api.api_url, "rate_limit": None},
                {"type": "slack", "name": "slack-hook", "webhook_url": hook.webhook_url("#alerts"),
                 "rate_limit": None},
                {"type": "pagerduty", "name": "pd", "routing_key": "K" * 32, "base_url": pd.url,
                 "ca_bundle": pd.ca_path, "rate_limit": None},
                {"type": "webhook", "name": "hook", "url": web.url + "/alerts"},
            ],
            "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s",
            "retry": {"claim_timeout": "1s", "initial_backoff": "100ms", "max_attempts": 100},
        }  # fmt: skip
        url = f"sqlite:///{tmp / 'crash.db'}"
        t0 = time.perf_counter()
        fakes = [api, hook, pd, web]
        kills = _crash_phase(url, cfg, "firing", fakes, rng)
        kills += _crash_phase(url, cfg, "resolved", fakes, rng)
        wall = time.perf_counter() - t0
        msgs = api.messages_in("#alerts")
        api_dup = len(msgs) - n + sum(max(0, len(m.updates) - 1) for m in msgs)
        api_lost = max(0, n - len(msgs)) + sum(1 for m in msgs if not m.updates)
        texts = [m.text.split("\n")[0] for m in hook.messages_in("#alerts")]
        hook_lost = 2 * n - len(set(texts))
        hook_dup = len(texts) - len(set(texts))
        pd_lost = n - len({i.dedup_key for i in pd.incidents}) + len(pd.open_incidents())
        pd_dup = len(pd.incidents) - len({i.dedup_key for i in pd.incidents})
        web_keys = {r.headers.get("idempotency-key") for r in web.requests}
        web_lost = 2 * n - len(web.effects)
        web_dup = max(0, len(web.effects) - len(web_keys))
    print(f"\ncrash storm: {n} groups fired then resolved, {kills} SIGKILLs of the delivering "
          f"process, {wall:.0f}s")  # fmt: skip
    print(f"{'receiver':<24} {'lost':>5} {'duplicated':>11}")
    for name, lost, dup, note in (
        ("slack web api", api_lost, api_dup, "messages + resolved edits"),
        ("pagerduty", pd_lost, pd_dup, f"incidents ({len(pd.events)} events)"),
        ("webhook (idempotent)", web_lost, web_dup, f"effects ({web.replays} replays refused)"),
        ("slack incoming webhook", hook_lost, hook_dup, f"messages (bound: <= {kills} kills)"),
    ):
        print(f"{name:<24} {lost:>5} {dup:>11}   {note}")
    print(f"RESULT notify_crash_storm kills={kills} lost={api_lost + pd_lost + web_lost + hook_lost}"
          f" duplicated slack_api={api_dup} pagerduty={pd_dup} webhook={web_dup} "
          f"incoming_webhook={hook_dup}<= {kills}")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--crash-worker":
        crash_worker(*sys.argv[2:5])
    else:
        main()
