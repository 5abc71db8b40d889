"""The CLI: silences, test-notify, outbox, rollback promote / list / approve, on a real
config file (secrets from the environment), the fake Slack and a SQLite MLflow registry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from notify_helpers import make_alert

from mlflow_llmops.cli import cli


def _config(tmp_path, slack) -> str:
    path = tmp_path / "mlflow-llmops.yaml"
    path.write_text(
        f"""
tracking:
  uri: sqlite:///{tmp_path / "mlflow.db"}
state_store:
  url: sqlite:///{tmp_path / "state.db"}
alerting:
  notifications:
    receivers:
      - name: team-slack
        type: slack
        webhook_url: ${{SLACK_WEBHOOK_URL}}
      - name: broken
        type: slack
        webhook_url: {slack.webhook_url("#archived")}
  rollback:
    hooks:
      - name: chat-model
        target: model_alias
        model: chat
        alias: champion
        rules: [QualityDrop]
        mode: confirm
        min_firing: 0s
        notify: [team-slack]
"""
    )
    return str(path)


def run(cfg: str, *args: str, env: dict | None = None):
    return CliRunner().invoke(
        cli, ["--config", cfg, "alerts", *args], env=env, catch_exceptions=False
    )


def test_silence_test_notify_and_outbox(tmp_path, slack, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.webhook_url("#alerts"))
    cfg = _config(tmp_path, slack)
    r = run(
        cfg, "silence", "add", "alertname=HighCost", "model=~gpt-4.*", "-d", "1h", "-c", "deploy"
    )
    assert r.exit_code == 0, r.output
    sid = re.search(r"silence (\S+) until", r.output).group(1)
    r = run(cfg, "silence", "list")
    assert sid in r.output and "model=~gpt-4.*" in r.output and "deploy" in r.output
    assert run(cfg, "silence", "expire", sid).exit_code == 0
    assert "no silences" in run(cfg, "silence", "list").output
    bad = CliRunner().invoke(cli, ["--config", cfg, "alerts", "silence", "add", "oops", "-c", "x"])
    assert bad.exit_code != 0 and "name=value" in bad.output

    r = run(cfg, "test-notify", "team-slack")
    assert r.exit_code == 0, r.output
    [m] = slack.messages_in("#alerts")
    assert "[TEST]" in m.text
    r = CliRunner().invoke(cli, ["--config", cfg, "alerts", "test-notify", "broken"])
    assert r.exit_code != 0 and "channel_not_found" in r.output
    r = CliRunner().invoke(cli, ["--config", cfg, "alerts", "test-notify", "nope"])
    assert r.exit_code != 0 and "team-slack" in r.output
    out = run(cfg, "outbox").output
    assert "sent" in out and "failed" in out and "team-slack" in out


def test_rollback_promote_list_approve(tmp_path, slack, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.webhook_url("#alerts"))
    cfg = _config(tmp_path, slack)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_registered_model("chat")
    for i in range(2):
        c.create_model_version("chat", source=f"/tmp/chat/{i}", run_id=None)
    assert "previous: none" in run(cfg, "rollback", "promote", "--model", "chat", "--alias",
                                   "champion", "--version", "1").output  # fmt: skip
    assert "previous: v1" in run(cfg, "rollback", "promote", "--model", "chat", "--alias",
                                 "champion", "--version", "2").output  # fmt: skip

    # the monitor plans a rollback (mode: confirm) through the public API
    from mlflow_llmops.config import load_config
    from mlflow_llmops.rollback import RollbackManager
    from mlflow_llmops.statestore.state import StateStore

    conf = load_config(cfg)
    mgr = RollbackManager(conf.alerting.rollback, StateStore(conf.state_store.url), uri)
    now = datetime.now(UTC)  # the CLI approves at the wall clock: within approval_timeout
    a = make_alert("QualityDrop", "critical", starts_at=now - timedelta(minutes=1))
    [rec] = mgr.process([a], now)
    out = run(cfg, "rollback", "list").output
    assert rec.plan_id in out and "awaiting_approval" in out
    r = run(cfg, "rollback", "approve", rec.plan_id)
    assert r.exit_code == 0, r.output
    assert '"outcome": "executed"' in r.output
    assert str(c.get_model_version_by_alias("chat", "champion").version) == "1"
    assert any("ROLLBACK EXECUTED" in m.text for m in slack.messages_in("#alerts"))
    bad = CliRunner().invoke(cli, ["--config", cfg, "alerts", "rollback", "approve", "nope"])
    assert bad.exit_code != 0
