"""Exported Prometheus rules pass promtool, and behave like ours on the same incident."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from mlflow_llmops.alerting.prometheus import (
    dashboard_json,
    export_prometheus_rules,
    grafana_dashboard,
)
from mlflow_llmops.alerting.rules import (
    LABEL_COLUMNS,
    PACKS_DIR,
    available_packs,
    load_pack,
    parse_rules,
)
from mlflow_llmops.cli import main


def all_pack_rules():
    return [r for p in available_packs() for r in load_pack(p)]


def test_packs_pass_promtool_check(tmp_path, promtool):
    export = export_prometheus_rules(all_pack_rules())
    path = tmp_path / "rules.yml"
    path.write_text(export.to_yaml())
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [r["alert"] for r in export.groups["groups"][0]["rules"]]
    assert {"llm_error_rate_high", "slo_latency"} <= set(names)
    assert names.count("slo_errors") == 3  # one per burn-rate tier
    assert "llm_cost_spike" in export.skipped  # no GenAI metric carries our cost
    assert "llm_latency_p95_high" in export.skipped  # a 5-day median: no PromQL equivalent
    assert "# Rules left out" in path.read_text()


def test_promtool_unit_test_error_rate_rule(tmp_path, promtool):
    """promtool replays an error burst: pending during ``for``, firing after."""
    ref = {"name": "three-layer", "overrides": {"llm_error_rate_high": {
        "runbook_url": "https://runbooks.test/{alertname}"}}}  # fmt: skip
    export = export_prometheus_rules([r for r in load_pack(ref)
                                      if r.name == "llm_error_rate_high"])  # fmt: skip
    (tmp_path / "rules.yml").write_text(export.to_yaml())
    ok = 'gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gpt-4o"}'
    bad = (
        'gen_ai_client_operation_duration_seconds_count{gen_ai_request_model="gpt-4o",'
        'error_type="timeout"}'
    )
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": ok, "values": "0+60x30"},
                    {"series": bad, "values": "0+0x10 30+30x20"},  # 30/min from minute 11
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "llm_error_rate_high", "exp_alerts": []},
                    # breached from ~11m; for 2m -> still pending at 12m
                    {"eval_time": "12m", "alertname": "llm_error_rate_high", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "llm_error_rate_high",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "layer": "infrastructure"},
                                "exp_annotations": {
                                    "summary": "LLM error rate 333.3m above 0.2 over 1m "
                                    "(all traffic)",
                                    "source": "exported by mlflow-llmops alerts export-prometheus",
                                    "description": load_pack("three-layer")[0].annotations[
                                        "description"
                                    ],
                                    "runbook_url": "https://runbooks.test/llm_error_rate_high",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    proc = subprocess.run(
        [promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_baseline_and_filters_translate():
    [rule] = parse_rules(
        [{"name": "tok", "type": "baseline", "query": {"signal": "input_tokens", "window": "1h",
          "group_by": "model", "where": {"model": "gpt-4o"}}, "offset": "1d", "factor": 3}],
        source="t",
    )  # fmt: skip
    [r] = export_prometheus_rules([rule]).groups["groups"][0]["rules"]
    assert "offset 1d" in r["expr"] and "> 3 *" in r["expr"]
    assert 'gen_ai_request_model="gpt-4o"' in r["expr"]
    assert 'gen_ai_token_type="input"' in r["expr"]
    assert "by (gen_ai_request_model)" in r["expr"]


def _emitted_labels() -> set[str]:
    """The series labels tracing's GenAI metrics really carry, as Prometheus names them."""
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mlflow_llmops.tracing.metrics import GenAiMetrics

    reader = InMemoryMetricReader()
    metrics = GenAiMetrics(service_name="svc", readers=[reader])
    metrics.record(provider="openai", model="gpt-4o", operation="chat", duration_s=0.5,
                   input_tokens=10, output_tokens=5, ttft_s=0.1)  # fmt: skip
    metrics.record(provider="openai", model="gpt-4o", operation="chat", duration_s=0.5,
                   error_type="timeout")  # fmt: skip
    keys = {
        re.sub(r"[^a-zA-Z0-9_]", "_", k)
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for dp in m.data.data_points
        for k in dp.attributes
    }
    metrics.shutdown(1)
    return keys


def _promql_labels(expr: str) -> set[str]:
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    return labels


def test_exported_promql_uses_only_labels_the_metrics_emit():
    """A rule on a label tracing never records would export PromQL that matches nothing:
    it is left out (listed in the header), and whatever is exported uses real labels."""
    emitted = _emitted_labels()
    assert {"gen_ai_request_model", "error_type", "gen_ai_token_type"} <= emitted
    rules = parse_rules(
        [{"name": f"p95_by_{label}", "query": {"signal": "latency_p95", "group_by": [label]},
          "threshold": 5000} for label in LABEL_COLUMNS]
        + [{"name": f"errors_in_{label}", "query": {"signal": "error_rate",
            "where": {label: "x"}}, "threshold": 0.1} for label in LABEL_COLUMNS],
        source="t",
    )  # fmt: skip
    export = export_prometheus_rules(rules + all_pack_rules())
    exported = export.groups["groups"][0]["rules"]
    for r in exported:
        assert _promql_labels(r["expr"]) <= emitted | {"le"}, (r["alert"], r["expr"])
    names = {r["alert"] for r in exported}
    assert {"p95_by_model", "errors_in_model"} <= names
    for label in ("route", "task_type", "environment", "service", "tenant"):
        assert f"p95_by_{label}" not in names and f"errors_in_{label}" not in names
        assert f"label {label!r} is not on the GenAI metrics" in export.skipped[f"p95_by_{label}"]
        assert f"#   errors_in_{label}: label {label!r}" in export.to_yaml()


def test_grafana_dashboard_is_shipped_and_current():
    shipped = (PACKS_DIR / "grafana-dashboard.json").read_text()
    assert shipped == dashboard_json()
    dash = json.loads(shipped)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert any("histogram_quantile(0.95" in e for e in exprs)
    assert all("gen_ai_client_" in e for e in exprs)
    assert len({p["id"] for p in grafana_dashboard()["panels"]}) == len(dash["panels"])


def test_cli_export_prometheus(tmp_path, monkeypatch):
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text("alerting:\n  packs: [three-layer, slo]\n")
    out, dash = tmp_path / "rules.yml", tmp_path / "dash.json"
    main(["--config", str(cfg), "alerts", "export-prometheus", "-o", str(out),
          "--dashboard", str(dash)])  # fmt: skip
    assert "llm_latency_p95_high" in out.read_text()
    assert json.loads(Path(dash).read_text())["uid"] == "mlflow-llmops"
