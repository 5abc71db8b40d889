"""Fenced leadership: two monitor processes on one PostgreSQL state store; the leader is
frozen (SIGSTOP) past its lease while a Slack send of its is in flight, the standby takes
over, the old leader is resumed (SIGCONT). From then on the old leader writes nothing to
the state store (a trigger records the writer of every row written) and sends nothing
(every Slack message carries its sender's lease epoch in its metadata)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from mlflow_llmops.alerting.engine import ALERTING_MIGRATIONS
from mlflow_llmops.notify import NOTIFY_MIGRATIONS
from mlflow_llmops.statestore.state import StateStore

HERE = Path(__file__).resolve().parent
LEASE = "alerting.monitor"

AUDIT = """
CREATE TABLE fence_audit (app text, tbl text, op text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fence_audit_fn() RETURNS trigger AS $$
BEGIN
  INSERT INTO fence_audit (app, tbl, op)
  VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
"""


def _overrides(tmp_path, url: str, slack) -> dict:  # noqa: ANN001
    return {
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "state_store": {"url": url},
        "alerting": {
            "evaluation_interval": "2s",
            "monitor": {"lease_ttl": "3s"},
            "rules": [{"name": f"errors_{i}", "query": {"signal": "error_rate"},
                       "threshold": 0.2, "no_data": "alerting"} for i in range(2)],
            "notifications": {
                "receivers": [{"type": "slack", "name": "s", "token": slack.token,
                               "channel": "#alerts", "base_url": slack.api_url,
                               "rate_limit": None}],
                "group_by": ["alertname"], "group_wait": "0s", "group_interval": "1s",
                "repeat_interval": "2s", "retry": {"claim_timeout": "4s"}},
        },
    }  # fmt: skip


def _audited(store: StateStore) -> None:
    """Every row written to our tables (but the lease) records the writer's application."""
    with store.engine.begin() as c:
        c.exec_driver_sql(AUDIT)
        names = [
            r[0]
            for r in c.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'llmops_%%' "
                "AND tablename NOT IN ('llmops_leases', 'llmops_schema_versions')"
            )
        ]
        for t in names:
            c.exec_driver_sql(
                f"CREATE TRIGGER audit_{t} AFTER INSERT OR UPDATE OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION fence_audit_fn()"
            )


def _spawn(overrides: dict, url: str, holder: str, log: Path) -> subprocess.Popen[str]:
    o = json.loads(json.dumps(overrides))
    o["state_store"]["url"] = f"{url}?application_name={holder}"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.Popen(
        [sys.executable, str(HERE / "monitor_worker.py"), json.dumps(o), holder],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env,
    )  # fmt: skip
    assert p.stdout.readline().startswith("READY"), log.read_text()
    return p


def _wait_for(pred, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _epochs(slack, after: float = 0.0) -> list[int]:  # noqa: ANN001
    with slack.lock:
        msgs = [m for m in slack.messages if m.received_at > after]
        out = [int((m.metadata or {}).get("event_payload", {}).get("epoch", -1)) for m in msgs]
    return out


@pytest.mark.slow
def test_a_leader_frozen_past_its_lease_writes_and_sends_nothing_after_resuming(
    tmp_path, pg_url, slack
):
    store = StateStore(pg_url)
    store.ensure_schema(ALERTING_MIGRATIONS)
    store.ensure_schema(NOTIFY_MIGRATIONS)
    _audited(store)
    ov = _overrides(tmp_path, pg_url, slack)
    a = _spawn(ov, pg_url, "monA", tmp_path / "a.log")
    b = None
    try:
        assert _wait_for(lambda: store.lease_holder(LEASE, datetime.now(UTC)) == "monA", 60)
        epoch_a = store.lease_epoch(LEASE)
        assert _wait_for(lambda: len(slack.messages) >= 2, 60), (tmp_path / "a.log").read_text()
        b = _spawn(ov, pg_url, "monB", tmp_path / "b.log")
        # freeze the leader while one of its sends is in flight (Slack holds the answer)
        slack.request_seen.clear()
        slack.hold.clear()
        assert slack.request_seen.wait(60), "the leader sent nothing"
        a.send_signal(signal.SIGSTOP)
        slack.hold.set()
        # the standby takes over and sends under its own, newer epoch
        # (within the TTL, or 30 s if the leader froze inside a transaction)
        assert _wait_for(lambda: store.lease_holder(LEASE, datetime.now(UTC)) == "monB", 120)
        epoch_b = store.lease_epoch(LEASE)
        assert epoch_b > epoch_a
        assert _wait_for(lambda: epoch_b in _epochs(slack), 60), (tmp_path / "b.log").read_text()
        resumed = time.time()
        a.send_signal(signal.SIGCONT)
        log_a = tmp_path / "a.log"
        assert _wait_for(lambda: "newer leader" in log_a.read_text() or
                         "lost the evaluator lease" in log_a.read_text(), 60)  # fmt: skip
        time.sleep(6)  # three evaluation intervals in which the old leader could act
        assert a.poll() is None and b.poll() is None
        # no send from the old leader after it resumed; the new one kept sending
        late = _epochs(slack, after=resumed)
        assert epoch_a not in late, late
        assert epoch_b in late
        # no state write from the old leader after it resumed
        with store.engine.connect() as c:
            rows = c.execute(
                sa.text("SELECT app, tbl, op FROM fence_audit WHERE at > to_timestamp(:t)"),
                {"t": resumed},
            ).all()
        assert not [r for r in rows if r[0] == "monA"], rows
        assert any(r[0] == "monB" for r in rows)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        store.dispose()
