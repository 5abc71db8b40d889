"""Demo step 60: dispatch the alerts the monitor detected (step 50) to the console and to a
(local, fake) Slack webhook through the notify pipeline, then let the rollback hook on the
detected error-rate incident plan a dry-run rollback of a model alias and print its audit
record."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

ORDER = 60
#: the three-layer pack's error-rate alert (critical): what the demo's error burst fires
ROLLBACK_RULE = "llm_error_rate_high"


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    from mlflow import MlflowClient

    from mlflow_llmops.notify import Dispatcher
    from mlflow_llmops.notify.config import NotificationsConfig
    from mlflow_llmops.rollback import RollbackManager, promote
    from mlflow_llmops.rollback.config import RollbackConfig
    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.fake_slack import FakeSlackServer

    ctx.banner("Notifications: console + Slack (local fake webhook)")
    now = datetime.now(UTC)
    alerts = [a for a in ctx.data.get("alerts") or [] if not a.resolved]
    if not alerts:
        raise RuntimeError("the monitor step (50) detected nothing to notify; run the whole demo")
    store = StateStore(ctx.state_url)
    with FakeSlackServer() as slack:
        config = NotificationsConfig.model_validate(
            {
                "receivers": [
                    {"type": "console", "name": "console"},
                    {"type": "slack", "name": "team-slack", "webhook_url": slack.webhook_url()},
                ],
                "group_by": ["alertname"],
                "group_wait": "0s",
                "mlflow_ui_url": "http://localhost:5000",
            }
        )
        dispatcher = Dispatcher(config, store)
        dispatcher.submit(alerts, now)
        report = dispatcher.flush(now)
        print(f"dispatch: {report.summary()}")
        dispatcher.submit(alerts, now + timedelta(seconds=60))
        again = dispatcher.flush(now + timedelta(seconds=60))
        print(f"one minute later, same alerts re-submitted: {again.sent} sent (deduplicated)")
        print(f"\nSlack received {len(slack.messages)} message(s):")
        for m in slack.messages:
            print("  " + m.text.replace("\n", "\n  "))
            for url, what in re.findall(r"<([^|>]+)\|(traces|runbook)>", str(m.blocks)):
                print(f"    {what}: {url}")

        ctx.banner("Rollback hook: dry run on a model alias")
        client = MlflowClient(tracking_uri=ctx.tracking_uri, registry_uri=ctx.tracking_uri)
        name = "chat-model"
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, description="demo model for rollback hooks")
        for i in range(2):
            client.create_model_version(name, source=str(ctx.workdir / f"model-v{i + 1}"))
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        promote(
            store, ctx.tracking_uri, model=name, alias="champion", version=versions[-2], now=now
        )
        prev = promote(
            store, ctx.tracking_uri, model=name, alias="champion", version=versions[-1], now=now
        )
        print(f"promoted models:/{name}@champion to v{versions[-1]} (previous v{prev}, recorded)")
        rollback = RollbackManager(
            RollbackConfig.model_validate(
                {
                    "hooks": [
                        {
                            "name": "chat-model-champion",
                            "target": "model_alias",
                            "model": name,
                            "alias": "champion",
                            "rules": [ROLLBACK_RULE],
                            "severities": ["critical"],
                            "mode": "dry_run",
                            "min_firing": "5m",
                            "notify": ["team-slack"],
                        }
                    ]
                }
            ),
            store,
            ctx.tracking_uri,
            notifier=dispatcher,
        )
        trigger = [a for a in alerts if a.name == ROLLBACK_RULE]
        if not trigger:
            raise RuntimeError(f"the monitor did not detect {ROLLBACK_RULE}; nothing to roll back")
        a = trigger[0]
        print(f"detected incident: {a.name} ({a.severity.value}) firing since "
              f"{a.starts_at:%H:%M} UTC, {a.annotations.get('summary', '')}")  # fmt: skip
        # plan at least five minutes after the alert started firing (min_firing)
        when = max(now, a.starts_at + timedelta(minutes=5))
        records = rollback.process([a], when)
        dispatcher.flush(when)
        for rec in records:
            print("audit record:")
            for k, v in rec.as_dict().items():
                print(f"  {k:<13} {v}")
        alias_now = client.get_model_version_by_alias(name, "champion").version
        print(f"models:/{name}@champion still at v{alias_now} (dry run changes nothing)")
        print(
            f"Slack now holds {len(slack.messages)} message(s); the last: {slack.messages[-1].text}"
        )
    ctx.data["notify_report"] = report
