"""A real Prometheus Alertmanager (Debian's package) and a signed webhook on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from notify_helpers import make_alert, resolved

from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.notify.notifiers.webhook import SIGNATURE_HEADER, verify_signature
from mlflow_llmops.testing.fake_slack import FakeHttpServer, Recorded
from mlflow_llmops.testing.ports import free_port


def start_alertmanager(binary: str, d, config: str):  # noqa: ANN001, ANN201
    """A real Alertmanager on a free loopback port: (process, url)."""
    (d / "am.yml").write_text(config)
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={d / 'am.yml'}", f"--storage.path={d / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=open(d / "am.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("alertmanager did not start: " + (d / "am.log").read_text()[-2000:])
    return proc, url


BLACKHOLE = "route:\n  receiver: blackhole\n  group_wait: 1h\nreceivers:\n  - name: blackhole\n"


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory, require_binary):
    binary = require_binary("prometheus-alertmanager")
    proc, url = start_alertmanager(binary, tmp_path_factory.mktemp("alertmanager"), BLACKHOLE)
    yield url
    proc.terminate()
    proc.wait(10)


def active_alerts(url: str) -> dict[str, dict]:
    got = requests.get(f"{url}/api/v2/alerts", params={"active": "true"}, timeout=5).json()
    return {x["labels"]["alertname"]: x for x in got if x["status"]["state"] == "active"}


def test_alerts_forwarded_to_a_real_alertmanager(store, alertmanager):
    conf = NotificationsConfig.model_validate(
        {
            "receivers": [{"type": "alertmanager", "name": "am", "url": alertmanager}],
            "group_wait": "0s",
            "group_by": ["..."],
        }  # fmt: skip
    )
    d = Dispatcher(conf, store)
    now = datetime.now(UTC).replace(microsecond=0)
    a = make_alert("HighCost", starts_at=now - timedelta(minutes=5), model="gpt-4o")
    b = make_alert("Latency", "warning", starts_at=now - timedelta(minutes=1), route="/chat")
    d.submit([a, b], now)
    assert d.flush(now).sent == 2
    got = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
    by_name = {x["labels"]["alertname"]: x for x in got}
    assert by_name["HighCost"]["labels"]["model"] == "gpt-4o"
    assert by_name["HighCost"]["annotations"]["runbook_url"].startswith("https://")
    assert by_name["HighCost"]["annotations"]["value"] == "12.5"
    assert by_name["HighCost"]["status"]["state"] == "active"
    assert by_name["Latency"]["labels"]["severity"] == "warning"
    # resolving sends endsAt; Alertmanager then no longer lists it as active
    d.submit([resolved(a, now)], now + timedelta(seconds=1))
    d.flush(now + timedelta(minutes=10))
    got = requests.get(f"{alertmanager}/api/v2/alerts", params={"active": "true"}, timeout=5).json()
    assert {x["labels"]["alertname"] for x in got if x["status"]["state"] == "active"} == {
        "Latency"
    }


class Sink(FakeHttpServer):
    def handle(self, rec: Recorded):
        return 200, {"Content-Type": "text/plain"}, "ok"


def test_signed_webhook(store):
    with Sink() as sink:
        conf = NotificationsConfig.model_validate(
            {
                "receivers": [
                    {
                        "type": "webhook",
                        "name": "wh",
                        "url": f"{sink.url}/hook",
                        "secret": "s3cret",
                        "headers": {"X-Team": "sre"},
                    }
                ],
                "group_wait": "0s",
            }  # fmt: skip
        )
        d = Dispatcher(conf, store)
        now = datetime.now(UTC)
        d.submit([make_alert("HighCost", model="m")], now)
        assert d.flush(now).sent == 1
        [req] = sink.requests
        body = json.dumps(req.body, separators=(",", ":")).encode()
        sig = req.headers[SIGNATURE_HEADER.lower()]
        assert req.headers["x-team"] == "sre"
        assert req.body["version"] == "4" and req.body["status"] == "firing"
        assert req.body["alerts"][0]["labels"]["model"] == "m"
        assert verify_signature("s3cret", body, sig, now=now)
        assert not verify_signature("wrong", body, sig, now=now)
        assert not verify_signature("s3cret", body + b" ", sig, now=now)
        assert not verify_signature("s3cret", body, sig, now=now + timedelta(hours=1))


def test_alertmanager_keeps_a_firing_alert_active_past_its_validity(store, tmp_path,
                                                                     require_binary):  # fmt: skip
    """Alertmanager resolves an alert whose endsAt passed, or (without endsAt) that was not
    re-posted within its resolve_timeout. The monitor re-submits a firing alert every
    cycle; the dispatcher re-posts it every resend_interval, past dedup, so it stays
    active; once the monitor stops, it resolves at its endsAt."""
    binary = require_binary("prometheus-alertmanager")
    proc, url = start_alertmanager(binary, tmp_path, "global:\n  resolve_timeout: 2s\n" + BLACKHOLE)
    try:
        conf = NotificationsConfig.model_validate(
            {
                "receivers": [
                    {
                        "type": "alertmanager",
                        "name": "am",
                        "url": url,
                        "resend_interval": "1s",
                        "alert_validity": "4s",
                    }
                ],
                "group_wait": "0s",
                "group_by": ["..."],
            }  # fmt: skip
        )
        d = Dispatcher(conf, store)
        first = datetime.now(UTC)
        a = make_alert("HighCost", starts_at=first - timedelta(minutes=5), model="gpt-4o")
        resent = 0
        while (now := datetime.now(UTC)) - first < timedelta(seconds=7):  # > validity, > timeout
            d.submit([a], now)  # a monitor cycle: still firing
            resent += d.flush(now).resent
            time.sleep(0.5)
        assert resent >= 4
        alert = active_alerts(url).get("HighCost")
        assert alert is not None, "Alertmanager resolved an alert that is still firing"
        ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
        assert timedelta(0) < ends - datetime.now(UTC) <= timedelta(seconds=4)
        # the monitor stops: no more re-posts, Alertmanager resolves it at endsAt
        time.sleep(5)
        assert "HighCost" not in active_alerts(url)
    finally:
        proc.terminate()
        proc.wait(10)


def test_test_notify_posts_a_short_lived_alert_to_alertmanager(tmp_path, alertmanager):
    from click.testing import CliRunner

    from mlflow_llmops.cli import cli
    from mlflow_llmops.notify.notifiers.alertmanager import TEST_ALERTNAME

    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text(
        f"state_store:\n  url: sqlite:///{tmp_path / 'state.db'}\n"
        "alerting:\n  notifications:\n    receivers:\n"
        f"      - {{name: am, type: alertmanager, url: '{alertmanager}'}}\n"
    )
    r = CliRunner().invoke(cli, ["--config", str(cfg), "alerts", "test-notify", "am", "-m", "hi"])
    assert r.exit_code == 0, r.output
    assert "sent a test message to am" in r.output
    alert = active_alerts(alertmanager)[TEST_ALERTNAME]
    assert alert["annotations"]["summary"] == "hi" and alert["labels"]["llmops_receiver"] == "am"
    ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    assert timedelta(seconds=30) < ends - datetime.now(UTC) <= timedelta(minutes=1)


def test_alert_validity_defaults_to_four_resend_or_evaluation_intervals(store):
    conf = NotificationsConfig.model_validate(
        {"receivers": [{"type": "alertmanager", "name": "am", "url": "http://127.0.0.1:9"}]}
    )
    slow = Dispatcher(conf, store, evaluation_interval=timedelta(minutes=2))
    assert slow.notifier("am").validity == timedelta(minutes=8)
    fast = Dispatcher(conf, store, evaluation_interval=timedelta(seconds=10))
    assert fast.notifier("am").validity == timedelta(minutes=4)  # the 1m resend interval wins
    with pytest.raises(ValueError, match="alert_validity .* must be longer than resend_interval"):
        NotificationsConfig.model_validate(
            {
                "receivers": [
                    {
                        "type": "alertmanager",
                        "name": "am",
                        "url": "http://x",
                        "resend_interval": "2m",
                        "alert_validity": "1m",
                    }
                ]
            }  # fmt: skip
        )
