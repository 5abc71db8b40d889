"""Exported Prometheus rules pass promtool, and behave like ours on the same incident."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from mlflow_llmops.alerting.prometheus import (
    dashboard_json,
    export_prometheus_rules,
    grafana_dashboard,
)
from mlflow_llmops.alerting.rules import PACKS_DIR, available_packs, load_pack, parse_rules
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
    assert {"llm_error_rate_high", "llm_latency_p95_high", "llm_token_usage_spike"} <= set(names)
    assert names.count("slo_errors") == 3  # one per burn-rate tier
    assert "llm_cost_spike" in export.skipped  # no GenAI metric carries our cost
    assert "# Rules left out" in path.read_text()


def test_promtool_unit_test_error_rate_rule(tmp_path, promtool):
    """promtool replays an error burst: pending during ``for``, firing after."""
    export = export_prometheus_rules([r for r in load_pack("three-layer")
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
                                    "summary": "LLM error rate 333.3m above 0.05 over 5m "
                                    "(all traffic)",
                                    "source": "exported by mlflow-llmops alerts export-prometheus",
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
          "group_by": "model", "where": {"environment": "prod"}}, "offset": "1d", "factor": 3}],
        source="t",
    )  # fmt: skip
    [r] = export_prometheus_rules([rule]).groups["groups"][0]["rules"]
    assert "offset 1d" in r["expr"] and "> 3 *" in r["expr"]
    assert 'deployment_environment_name="prod"' in r["expr"]
    assert 'gen_ai_token_type="input"' in r["expr"]
    assert "by (gen_ai_request_model)" in r["expr"]


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
