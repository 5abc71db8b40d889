"""A real Prometheus Alertmanager (Debian's package) and a signed webhook on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from notify_helpers import make_alert, resolved

from mlflow_llmops.alerting.dispatch import Dispatcher
from mlflow_llmops.alerting.notifiers.webhook import SIGNATURE_HEADER, verify_signature
from mlflow_llmops.alerting.notify_config import NotificationsConfig
from mlflow_llmops.testing.fake_slack import FakeHttpServer, Recorded
from mlflow_llmops.testing.ports import free_port


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory, require_binary):
    binary = require_binary("prometheus-alertmanager")
    d = tmp_path_factory.mktemp("alertmanager")
    (d / "am.yml").write_text(
        "route:\n  receiver: blackhole\n  group_wait: 1h\nreceivers:\n  - name: blackhole\n"
    )
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
    yield url
    proc.terminate()
    proc.wait(10)


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
