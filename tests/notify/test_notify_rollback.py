"""Rollback hooks against a real MLflow registry (SQLite tracking store): alias moves,
cooldown, compare-and-set, dry run, confirmation, kill switch, prompt alias, audit."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from mlflow.tracking import MlflowClient
from notify_helpers import T0, make_alert, resolved

from mlflow_llmops.monitor import default_sink
from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.rollback import RollbackError, RollbackManager, promote
from mlflow_llmops.rollback.config import RollbackConfig

_n = itertools.count()
CALLS: list[dict] = []


def record_call(**kw):
    """A user rollback function (``module:function``)."""
    CALLS.append(kw)
    return "flag flipped"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()  # create schema
    return uri


def new_model(uri: str, versions: int = 3) -> str:
    name = f"chat-model-{next(_n)}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c.create_registered_model(name)
    for i in range(versions):
        c.create_model_version(name, source=f"/tmp/artifacts/{name}/{i}", run_id=None)
    return name


def alias_version(uri: str, name: str, alias: str = "champion") -> str:
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return str(c.get_model_version_by_alias(name, alias).version)


def hook(name: str, model: str, **kw) -> dict:
    return {"name": name, "target": "model_alias", "model": model, "alias": "champion",
            "rules": ["QualityDrop"], "min_firing": "5m", **kw}  # fmt: skip


def manager(store, uri, *hooks, **kw) -> RollbackManager:
    return RollbackManager(RollbackConfig.model_validate({"hooks": list(hooks)}), store, uri, **kw)


def qd(**kw):
    return make_alert("QualityDrop", "critical", starts_at=T0, **kw)


def slack_dispatcher(store, slack) -> Dispatcher:
    """A dispatcher with one Slack webhook receiver ``s`` (rollback notes go there)."""
    cfg = {"receivers": [{"type": "slack", "name": "s", "webhook_url": slack.webhook_url()}]}
    return Dispatcher(NotificationsConfig.model_validate(cfg), store)


def test_auto_rollback_moves_alias_back_then_cooldown_blocks(store, registry):
    m = new_model(registry)
    assert promote(store, registry, model=m, alias="champion", version=1, now=T0) is None
    assert promote(store, registry, model=m, alias="champion", version=2, now=T0) == "1"
    mgr = manager(store, registry, hook("back", m, mode="auto", cooldown="1h"))
    assert mgr.process([qd()], T0 + timedelta(minutes=4)) == []  # min_firing not reached
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "executed" and (rec.from_version, rec.to_version) == ("2", "1")
    assert "when it next loads the model" in rec.propagation
    assert alias_version(registry, m) == "1"
    assert mgr.process([qd()], T0 + timedelta(minutes=7)) == []  # one plan per episode
    # tags on both versions, a row in the audit table
    c = MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert c.get_model_version(m, "2").tags[f"llmops.rollback.{rec.plan_id}"].startswith("executed")
    assert [a["outcome"] for a in mgr.audit_log(rec.plan_id)] == ["executed"]
    # never roll forward on resolve
    assert mgr.process([resolved(qd(), T0 + timedelta(minutes=8))], T0 + timedelta(minutes=9)) == []
    assert alias_version(registry, m) == "1"
    # a new episode within the cooldown is blocked (and audited)
    promote(store, registry, model=m, alias="champion", version=3, now=T0 + timedelta(minutes=10))
    [blocked] = mgr.process([qd(episode=2)], T0 + timedelta(minutes=20))
    assert blocked.outcome == "blocked" and "cooldown" in blocked.reason
    assert alias_version(registry, m) == "3"


def test_compare_and_set_aborts_when_alias_moved_since_planning(store, registry):
    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    mgr = manager(store, registry, hook("confirm", m, mode="confirm"))
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "awaiting_approval" and alias_version(registry, m) == "2"
    # someone deploys v3 meanwhile
    promote(store, registry, model=m, alias="champion", version=3, now=T0 + timedelta(minutes=7))
    done = mgr.approve(rec.plan_id, T0 + timedelta(minutes=8), actor="alice")
    assert done.outcome == "aborted" and "moved from v2 to v3" in done.reason
    assert alias_version(registry, m) == "3"
    with pytest.raises(RollbackError, match="not awaiting_approval"):
        mgr.approve(rec.plan_id, T0 + timedelta(minutes=9), actor="alice")


def test_confirm_then_approve_executes(store, registry):
    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    promote(store, registry, model=m, alias="champion", version=3, now=T0)
    mgr = manager(store, registry, hook("confirm", m, mode="confirm"))
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    done = mgr.approve(rec.plan_id, T0 + timedelta(minutes=8), actor="alice")
    assert done.outcome == "executed" and done.actor == "alice"
    assert alias_version(registry, m) == "2"


def test_dry_run_changes_nothing_but_is_audited_and_announced(store, registry, slack):
    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    disp = slack_dispatcher(store, slack)
    mgr = manager(store, registry, hook("dry", m, notify=["s"]), notifier=disp)
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "dry_run" and alias_version(registry, m) == "2"
    assert rec.propagation.startswith("dry run, nothing changed; if executed")
    c = MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert c.get_model_version(m, "2").tags[f"llmops.rollback.{rec.plan_id}"].startswith("dry_run")
    disp.flush(T0 + timedelta(minutes=6))
    [msg] = slack.messages_in("#alerts")
    assert "ROLLBACK DRY_RUN" in msg.text and "v2 → v1" in str(msg.blocks)


def test_guards_kill_switch_no_history_budget_and_rules(store, registry):
    m = new_model(registry)
    c = MlflowClient(tracking_uri=registry, registry_uri=registry)
    c.set_registered_model_alias(m, "champion", "2")  # moved outside promote(): no history
    mgr = manager(store, registry, hook("h", m, mode="auto"))
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "blocked" and "no previous version recorded" in rec.reason
    promote(store, registry, model=m, alias="champion", version=3, now=T0)
    killed = manager(store, registry, hook("h2", m, mode="auto"),
                     env={"MLFLOW_LLMOPS_ROLLBACK_DISABLED": "1"})  # fmt: skip
    [rec] = killed.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "blocked" and "kill switch" in rec.reason
    assert alias_version(registry, m) == "3"
    # other rules and severities are not opted in
    other = manager(store, registry, hook("h3", m, mode="auto"))
    assert other.process([make_alert("HighCost", "critical")], T0 + timedelta(hours=1)) == []
    assert other.process([make_alert("QualityDrop", "warning")], T0 + timedelta(hours=1)) == []
    # daily budget 0 blocks
    nobudget = manager(store, registry, hook("h4", m, mode="auto", daily_budget=0))
    [rec] = nobudget.process([qd(episode=3)], T0 + timedelta(minutes=6))
    assert rec.outcome == "blocked" and "daily budget" in rec.reason


def test_prompt_alias_and_function_hooks(store, registry, monkeypatch):
    c = MlflowClient(tracking_uri=registry, registry_uri=registry)
    name = f"support-prompt-{next(_n)}"
    c.register_prompt(name, "Answer {{q}}")
    c.register_prompt(name, "Answer briefly {{q}}")
    promote(store, registry, prompt=name, alias="production", version=1, now=T0)
    promote(store, registry, prompt=name, alias="production", version=2, now=T0)
    monkeypatch.setenv("MLFLOW_ALIAS_PROMPT_CACHE_TTL_SECONDS", "30")
    mgr = manager(
        store, registry,
        {"name": "p", "target": "prompt_alias", "prompt": name, "alias": "production",
         "rules": ["QualityDrop"], "mode": "auto", "min_firing": "0s"},
        {"name": "f", "target": "function", "function": "test_notify_rollback:record_call",
         "rules": ["QualityDrop"], "mode": "auto", "min_firing": "0s"},
    )  # fmt: skip
    recs = mgr.process([qd()], T0 + timedelta(minutes=1))
    by_hook = {r.hook: r for r in recs}
    assert by_hook["p"].outcome == "executed" and "within 30s" in by_hook["p"].propagation
    assert c.get_prompt_version_by_alias(name, "production").version == 1
    assert by_hook["f"].outcome == "executed" and "flag flipped" in by_hook["f"].reason
    assert CALLS and CALLS[-1]["dry_run"] is False


def test_rollback_config_errors(store, registry):
    from mlflow_llmops.errors import ConfigError

    disp = Dispatcher(
        NotificationsConfig.model_validate({"receivers": [{"type": "console", "name": "c"}]}), store
    )
    with pytest.raises(ConfigError, match=r"hooks\[h\]\.notify: unknown receiver\(s\) \['slack'\]"):
        manager(store, registry, hook("h", "m", notify=["slack"]), notifier=disp)
    with pytest.raises(ValueError, match="set \\['model'"):
        RollbackConfig.model_validate({"hooks": [{"name": "x", "target": "model_alias",
                                                  "alias": "a", "rules": ["R"]}]})  # fmt: skip
    with pytest.raises(ValueError, match="rules must name"):
        RollbackConfig.model_validate({"hooks": [{"name": "x", "target": "function",
                                                  "function": "m:f", "rules": []}]})  # fmt: skip


def test_dispatcher_from_config_runs_rollback_hooks_on_submit(store, registry, slack, tmp_path):
    from mlflow_llmops.config import LlmopsConfig

    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    conf = LlmopsConfig.model_validate(
        {
            "tracking": {"uri": registry},
            "alerting": {
                "notifications": {"receivers": [{"type": "slack", "name": "s",
                                                 "webhook_url": slack.webhook_url()}],
                                  "group_wait": "0s"},
                "rollback": {"hooks": [hook("auto", m, mode="auto", notify=["s"])]},
            },
        }
    )  # fmt: skip
    d = default_sink(conf, store)
    d.submit([qd()], T0 + timedelta(minutes=6))
    d.flush(T0 + timedelta(minutes=6))
    assert alias_version(registry, m) == "1"
    texts = [msg.text for msg in slack.messages_in("#alerts")]
    assert any("ROLLBACK EXECUTED" in t for t in texts) and any("QualityDrop" in t for t in texts)


def test_a_plan_not_approved_in_time_expires(store, registry):
    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    mgr = manager(store, registry, hook("confirm", m, mode="confirm", approval_timeout="30m"))
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    assert rec.outcome == "awaiting_approval"
    late = T0 + timedelta(minutes=37)
    with pytest.raises(RollbackError, match=r"expired and cannot be approved: not approved "
                                            r"within 0:30:00"):  # fmt: skip
        mgr.approve(rec.plan_id, late, actor="alice")
    assert alias_version(registry, m) == "2"
    assert mgr.get_plan(rec.plan_id)["status"] == "expired"
    assert [a["outcome"] for a in mgr.audit_log(rec.plan_id)] == ["awaiting_approval", "expired"]
    with pytest.raises(RollbackError, match="expired and cannot be approved"):
        mgr.approve(rec.plan_id, late, actor="alice")
    # the default timeout is an hour; the monitor expires stale plans on its own
    mgr2 = manager(store, registry, hook("confirm2", m, mode="confirm"))
    [rec2] = mgr2.process([qd(episode=2)], T0 + timedelta(minutes=6))
    assert mgr2.process([qd(episode=2)], T0 + timedelta(minutes=50)) == []
    [gone] = mgr2.process([], T0 + timedelta(minutes=67))
    assert gone.plan_id == rec2.plan_id and gone.outcome == "expired"


def test_a_plan_whose_alert_resolved_cannot_be_approved(store, registry, slack):
    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    disp = slack_dispatcher(store, slack)
    mgr = manager(store, registry, hook("confirm", m, mode="confirm", notify=["s"]),
                  notifier=disp)  # fmt: skip
    [rec] = mgr.process([qd()], T0 + timedelta(minutes=6))
    [gone] = mgr.process([resolved(qd(), T0 + timedelta(minutes=9))], T0 + timedelta(minutes=10))
    assert gone.plan_id == rec.plan_id and gone.outcome == "expired"
    assert "resolved at" in gone.reason
    with pytest.raises(RollbackError, match="QualityDrop .*resolved"):
        mgr.approve(rec.plan_id, T0 + timedelta(minutes=11), actor="alice")
    assert alias_version(registry, m) == "2"
    disp.flush(T0 + timedelta(minutes=11))
    assert any("ROLLBACK EXPIRED" in msg.text for msg in slack.messages_in("#alerts"))


def test_approval_checks_the_alert_engine_state(store, registry):
    """The resolve never reached the rollback hooks (say the monitor restarted between):
    the alert engine's state in the same store still tells the approval it is over."""
    from mlflow_llmops.alerting.engine import AlertEngine
    from mlflow_llmops.alerting.rules import parse_rules
    from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
    from mlflow_llmops.core.clock import to_ms

    m = new_model(registry)
    promote(store, registry, model=m, alias="champion", version=1, now=T0)
    promote(store, registry, model=m, alias="champion", version=2, now=T0)
    rules = parse_rules([{"name": "QualityDrop", "severity": "critical", "threshold": 0.2,
                          "query": {"signal": "error_rate", "window": "1m"}}], source="t")  # fmt: skip
    source = MemorySignalSource()
    engine = AlertEngine(rules, source, store)

    def minute(at, errors: bool) -> list:
        source.add(*(TraceEvent(to_ms(at) - 60_000 + i * 1000, status="ERROR" if errors and i % 2
                                else "OK") for i in range(60)))  # fmt: skip
        return engine.evaluate(at).alerts

    [firing] = minute(T0, errors=True)
    mgr = manager(store, registry, hook("confirm", m, mode="confirm", min_firing="0s"))
    [rec] = mgr.process([firing], T0)
    assert rec.outcome == "awaiting_approval"
    [res] = minute(T0 + timedelta(minutes=1), errors=False)
    assert res.resolved  # ... but it is never handed to the rollback hooks
    with pytest.raises(RollbackError, match="QualityDrop \\(episode 1\\) has resolved at"):
        mgr.approve(rec.plan_id, T0 + timedelta(minutes=2), actor="alice")
    assert alias_version(registry, m) == "2"
    assert mgr.get_plan(rec.plan_id)["status"] == "expired"
