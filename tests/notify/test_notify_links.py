"""Alerts produced by the engine carry the links the on-call needs: the traces behind the
alert in the MLflow UI (on the alert's window) and the runbook, all the way to Slack."""

from __future__ import annotations

from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
from mlflow_llmops.config import load_config
from mlflow_llmops.core.clock import FakeClock, to_ms
from mlflow_llmops.monitor.cycle import Monitor

UI = "http://mlflow.test:5000"


def _config(tmp_path, state_url, slack, **notifications):
    return load_config(
        overrides={
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "state_store": {"url": state_url},
            "alerting": {
                "packs": [{"name": "three-layer", "disable": [
                    "llm_latency_p95_high", "llm_token_usage_spike", "llm_cost_spike",
                    "llm_unpriced_usage", "llm_quality_score_low"],
                    "overrides": {"llm_error_rate_high": {"for": "0s",
                                                          "query": {"window": "5m"}}}}],
                "rules": [{"name": "model_errors", "query": {"signal": "error_rate",
                           "window": "5m", "group_by": ["model"]}, "threshold": 0.2,
                           "runbook_url": "https://runbooks.test/errors?model={model}"}],
                "notifications": {
                    "receivers": [{"type": "slack", "name": "s",
                                   "webhook_url": slack.webhook_url("#alerts")}],
                    "group_by": ["alertname"], "group_wait": "0s", **notifications},
            },
        },
        env={},
    )  # fmt: skip


def _traffic(source: MemorySignalSource, clock: FakeClock) -> None:
    """Five minutes: gpt-4o in experiment 7 fails half the time; m2 in experiment 8 is fine."""
    start = to_ms(clock.now())
    for i in range(300):
        ms = start + i * 1000
        source.add(
            TraceEvent(ms, status="ERROR" if i % 2 else "OK",
                       labels={"model": "gpt-4o", "experiment_id": "7"}),
            TraceEvent(ms + 1, labels={"model": "m2", "experiment_id": "8"}),
        )  # fmt: skip
    clock.advance(300)


def test_engine_alerts_reach_slack_with_traces_and_runbook_links(tmp_path, state_url, slack):
    clock, source = FakeClock(), MemorySignalSource()
    cfg = _config(tmp_path, state_url, slack, mlflow_ui_url=UI + "/",
                  runbook_url="https://wiki.test/llm-runbooks#{alertname}")  # fmt: skip
    mon = Monitor(cfg, clock=clock, source=source, steps={})
    _traffic(source, clock)
    report = mon.cycle()
    assert sorted(a.name for a in report.alerts) == ["llm_error_rate_high", "model_errors"]
    assert report.dispatch.sent == 2
    window = (
        "startTimeLabel=CUSTOM&startTime=2026-01-01T00%3A00%3A00.000Z"
        "&endTime=2026-01-01T00%3A05%3A00.000Z"
    )
    by_name = {}
    for m in slack.messages_in("#alerts"):
        text = "\n".join(b["text"]["text"] for b in m.blocks if b["type"] == "section")
        by_name[m.text.split("]")[1].split()[0]] = text
    # a rule grouped by model: the experiment that model's traffic went to, on the window
    assert f"<{UI}/#/experiments/7/traces?{window}|traces>" in by_name["model_errors"]
    assert "<https://runbooks.test/errors?model=gpt-4o|runbook>" in by_name["model_errors"]
    # a pack rule over all traffic: the busiest experiment, the default runbook, the
    # rule's description (what to check first)
    pack = by_name["llm_error_rate_high"]
    assert f"<{UI}/#/experiments/7/traces?{window}|traces>" in pack
    assert "<https://wiki.test/llm-runbooks#llm_error_rate_high|runbook>" in pack
    assert "Runbook: open the traces link" in pack


def test_one_configured_experiment_needs_no_lookup(tmp_path, state_url, slack):
    clock, source = FakeClock(), MemorySignalSource()
    cfg = _config(tmp_path, state_url, slack, mlflow_ui_url=UI)
    cfg = cfg.model_copy(
        update={"alerting": cfg.alerting.model_copy(update={"experiment_ids": ("8",)})}
    )
    mon = Monitor(cfg, clock=clock, source=source, steps={})
    _traffic(source, clock)
    alerts = {a.name: a for a in mon.cycle().alerts}
    url = alerts["model_errors"].annotations["traces_url"]
    assert url.startswith(f"{UI}/#/experiments/8/traces?startTimeLabel=CUSTOM")
    # from a window before the alert became active to the evaluation
    assert url.endswith(
        "startTime=2026-01-01T00%3A00%3A00.000Z&endTime=2026-01-01T00%3A05%3A00.000Z"
    )
    assert "runbook_url" not in alerts["llm_error_rate_high"].annotations  # none configured
