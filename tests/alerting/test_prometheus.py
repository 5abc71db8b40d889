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
    notes = export.groups["groups"][0]["rules"][0]["annotations"]["export_notes"]
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
                                    "summary": "LLM error rate 33.33% above 20% over 1m "
                                    "(all traffic)",
                                    "export_notes": notes,
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


def test_cli_export_prometheus(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text("alerting:\n  packs: [three-layer, slo]\n")
    out, dash = tmp_path / "rules.yml", tmp_path / "dash.json"
    main(["--config", str(cfg), "alerts", "export-prometheus", "-o", str(out),
          "--dashboard", str(dash)])  # fmt: skip
    assert "llm_error_rate_high" in out.read_text()
    err = capsys.readouterr().err
    assert "approximated llm_error_rate_high: " in err and "left out llm_cost_spike: " in err
    assert "left out llm_latency_p95_high: median_of_days" in err
    assert json.loads(Path(dash).read_text())["uid"] == "mlflow-llmops"


def _promtool_test(tmp_path, promtool, rules_text: str, test: dict) -> None:
    (tmp_path / "rules.yml").write_text(rules_text)
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"],
                                                       "evaluation_interval": "1m",
                                                       "tests": [test]}))  # fmt: skip
    proc = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_changed_rule_is_listed_with_why(tmp_path, promtool):
    """Each rule whose export differs from the monitor's says how and why, in the header and
    in its export_notes annotation; an exact translation says nothing; promtool accepts it."""
    rules = parse_rules([
        {"name": "calls", "query": {"signal": "request_count", "window": "5m"},
         "op": "<", "threshold": 10, "no_data": "alerting"},
        {"name": "errors_hyst", "query": {"signal": "error_rate", "min_samples": 30},
         "threshold": 0.1, "recovery_threshold": 0.05, "on_error": "alerting"},
        {"name": "p95", "query": {"signal": "latency_p95", "group_by": "model"},
         "threshold": 8000},
        {"name": "slow_share_exact", "query": {"signal": "latency_over",
                                               "latency_threshold_ms": 5120}, "threshold": 0.2},
        {"name": "slo_latency_10s", "type": "burn_rate", "sli": "latency", "objective": 0.95,
         "latency_threshold_ms": 10000},
        {"name": "tokens_exact", "query": {"signal": "tokens", "window": "1h"},
         "threshold": 1e6},
    ], source="t")  # fmt: skip
    export = export_prometheus_rules(rules)
    text = export.to_yaml()
    header = text.split("\ngroups:", 1)[0]
    want = {
        "calls": ["counts LLM calls", "where the monitor counts traces",
                  "no_data: alerting dropped"],
        "errors_hyst": ["share of failed LLM calls", "min_samples (30) counted in LLM calls",
                        "recovery_threshold 5% dropped", "back past the threshold 10%",
                        "on_error: alerting dropped"],
        "p95": ["latency of single LLM calls", "estimated from the histogram buckets"],
        "slow_share_exact": ["share of LLM calls slower than the threshold"],
        "slo_latency_10s": ['latency threshold 10 s moved to the 10.24 s bucket boundary '
                            '(le="10.24")', "calls between 10 s and 10.24 s count as fast"],
    }  # fmt: skip
    assert set(export.changed) == set(want)
    by_name = {r["alert"]: r for r in export.groups["groups"][0]["rules"]}
    for name, phrases in want.items():
        section = re.split(r"\n# {1,3}\S", header.split(f"#   {name}:\n", 1)[1])[0]
        note = by_name[name]["annotations"]["export_notes"]
        for phrase in phrases:
            assert phrase in section and phrase in note, (name, phrase, section, note)
    assert "moved to" not in by_name["slow_share_exact"]["annotations"]["export_notes"]
    assert 'le="5.12"' in by_name["slow_share_exact"]["expr"]
    assert 'le="10.24"' in by_name["slo_latency_10s"]["expr"]
    assert "export_notes" not in by_name["tokens_exact"]["annotations"]
    assert "tokens_exact" not in header
    (tmp_path / "rules.yml").write_text(text)
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout  # the burn rate: one per tier


def test_ratios_are_shown_as_percentages(tmp_path, promtool):
    """An error ratio of 0.12 reads "12%" (not "120m") in the alert promtool fires."""
    [rule] = parse_rules([{"name": "err", "query": {"signal": "error_rate"}, "threshold": 0.1,
                           "annotations": {"summary": "{value} of calls failed (over {threshold})"}}],
                         source="t")  # fmt: skip
    export = export_prometheus_rules([rule])
    ann = export.groups["groups"][0]["rules"][0]["annotations"]
    calls = "gen_ai_client_operation_duration_seconds_count"
    _promtool_test(tmp_path, promtool, export.to_yaml(), {
        "interval": "1m",
        "input_series": [
            {"series": f'{calls}{{gen_ai_request_model="m"}}', "values": "0+88x20"},
            {"series": f'{calls}{{gen_ai_request_model="m",error_type="timeout"}}',
             "values": "0+12x20"},
        ],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "err", "exp_alerts": [{
            "exp_labels": {"severity": "warning"},
            "exp_annotations": {"summary": "12% of calls failed (over 10%)",
                                "source": ann["source"], "export_notes": ann["export_notes"]},
        }]}],
    })  # fmt: skip
