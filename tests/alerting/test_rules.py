"""Rule validation (errors name the rule and field), packs, burn-rate arithmetic."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlflow_llmops.alerting.rules import (
    DEFAULT_TIERS,
    BurnRateRule,
    available_packs,
    budget_consumed,
    burn_rate_for_budget,
    collect_rules,
    load_pack,
    load_rule_file,
    parse_rules,
)
from mlflow_llmops.config import load_config
from mlflow_llmops.core.duration import format_duration, parse_duration
from mlflow_llmops.errors import ConfigError

D30 = timedelta(days=30)


@pytest.mark.parametrize(
    ("fraction", "window", "rate"),
    [(0.02, timedelta(hours=1), 14.4), (0.05, timedelta(hours=6), 6.0),
     (0.10, timedelta(days=3), 1.0)],
)  # fmt: skip
def test_burn_rates_of_the_sre_workbook(fraction, window, rate):
    assert burn_rate_for_budget(fraction, window, D30) == pytest.approx(rate)
    assert budget_consumed(rate, window, D30) == pytest.approx(fraction)


def test_default_tiers_are_the_workbook_table():
    got = [(t.long, t.short, t.factor, str(t.severity)) for t in DEFAULT_TIERS]
    assert got == [
        (timedelta(hours=1), timedelta(minutes=5), 14.4, "critical"),
        (timedelta(hours=6), timedelta(minutes=30), 6.0, "critical"),
        (timedelta(days=3), timedelta(hours=6), 1.0, "warning"),
    ]


def test_burn_rate_rule_pages_at_the_table_values():
    from mlflow_llmops.alerting.engine import evaluate_burn_rate
    from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent

    [rule] = parse_rules([{"name": "slo", "type": "burn_rate", "sli": "errors",
                           "objective": 0.999}], source="t")  # fmt: skip
    assert isinstance(rule, BurnRateRule)
    # steady traffic for 6h; 3% errors in the last hour only = 30x a 0.1% budget there.
    end = 3 * 86400 * 1000
    hour = 3_600_000
    events = [
        TraceEvent(t, status="ERROR" if t >= end - hour and (t // 1000) % 100 < 3 else "OK")
        for t in range(end - 6 * hour, end, 1000)
    ]
    outcome = evaluate_burn_rate(rule, MemorySignalSource(events), end)
    tiers = {s.labels["slo_window"]: s for s in outcome.samples}
    assert tiers["1h"].value == pytest.approx(30.0) and tiers["1h"].active  # > 14.4 and 5m too
    assert tiers["6h"].value == pytest.approx(5.0) and not tiers["6h"].active  # < 6
    # only 6h of traffic exist, so 3d and its 6h short window both see 5x > 1x: a ticket
    assert tiers["3d"].value == pytest.approx(5.0) and tiers["3d"].active
    assert str(tiers["3d"].severity) == "warning" and str(tiers["1h"].severity) == "critical"


def test_durations():
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration(90) == timedelta(seconds=90)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert format_duration(timedelta(days=1)) == "1d"
    with pytest.raises(ValueError, match="invalid duration '5x'"):
        parse_duration("5x")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "a", "query": {"signal": "latncy_p95"}, "threshold": 1},
         "rule 'a' (#1): field 'query.signal': unknown signal 'latncy_p95'"),
        ({"name": "a", "query": {"signal": "error_rate"}},
         "rule 'a' (#1): field 'threshold': required"),
        ({"name": "a", "query": {"signal": "error_rate"}, "threshold": 1, "for": "2 minutes"},
         "field 'for': invalid duration"),
        ({"name": "a", "query": {"signal": "error_rate", "group_by": ["user_id"]},
          "threshold": 1}, "cannot group or filter by 'user_id'"),
        ({"name": "a", "query": {"signal": "error_rate"}, "threshold": 0.1, "op": ">",
          "recovery_threshold": 0.2}, "recovery_threshold 0.2 must be on the healthy side"),
        ({"name": "a", "type": "burn_rate", "sli": "latency", "objective": 0.99},
         "sli latency needs latency_threshold_ms"),
        ({"name": "a", "type": "burn_rate", "sli": "errors", "objective": 99},
         "field 'objective'"),
        ({"name": "a", "type": "slo"}, "field 'type': must be one of"),
        ({"name": "a", "query": {"signal": "error_rate"}, "threshold": 1, "severty": "x"},
         "field 'severty': unknown field"),
        ({"name": "a", "query": {"signal": "error_rate"}, "threshold": 1,
          "labels": {"severity": "x"}}, "label 'severity' is set by the engine"),
        ({"query": {"signal": "error_rate"}, "threshold": 1}, "rule #1: field 'name'"),
    ],
)  # fmt: skip
def test_errors_name_rule_and_field(rule, message):
    with pytest.raises(ConfigError) as e:
        parse_rules([rule], source="rules.yaml")
    assert message in str(e.value) and str(e.value).startswith("rules.yaml: ")


def test_duplicate_names_rejected():
    r = {"name": "a", "query": {"signal": "error_rate"}, "threshold": 1}
    with pytest.raises(ConfigError, match="same name as rule #1"):
        parse_rules([r, r], source="x")


def test_rule_file_and_config(tmp_path):
    f = tmp_path / "rules" / "team.yaml"
    f.parent.mkdir()
    f.write_text(
        "rules:\n  - name: cost_high\n    query: {signal: cost_usd, window: 1h}\n"
        "    threshold: 50\n    for: 10m\n    severity: error\n"
    )
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text(
        "alerting:\n  evaluation_interval: 30s\n  rule_files: ['rules/*.yaml']\n"
        "  packs:\n    - name: three-layer\n      overrides:\n        llm_latency_p95_high:"
        " {factor: 3, for: 5m}\n      disable: [llm_unpriced_usage]\n"
        "      where: {environment: production}\n"
        "  rules:\n    - name: inline_rule\n      query: {signal: request_count, window: 5m}\n"
        "      op: '<'\n      threshold: 1\n      no_data: alerting\n"
    )
    c = load_config(cfg, env={})
    assert c.alerting.evaluation_interval == timedelta(seconds=30)
    assert c.alerting.lease_ttl() == timedelta(seconds=15)
    rules = {r.name: r for r in c.alerting.all_rules(tmp_path)}
    assert "llm_unpriced_usage" not in rules and "cost_high" in rules and "inline_rule" in rules
    p95 = rules["llm_latency_p95_high"]
    assert p95.factor == 3 and p95.for_ == timedelta(minutes=5)
    assert p95.query.where == {"environment": "production"}


def test_config_errors_are_clear(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("alerting:\n  rules:\n    - name: x\n      query: {signal: nope}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, env={})
    assert "alerting.rules" in str(e.value) and "rule 'x' (#1)" in str(e.value)
    with pytest.raises(ConfigError, match="unknown rule pack 'nope'"):
        load_config(overrides={"alerting": {"packs": ["nope"]}}, env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: y\n    query: {signal: error_rate}\n    threshold: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: rule 'y' \(#1\): field 'threshold'"):
        load_rule_file(bad)
    with pytest.raises(ConfigError, match="no rule named 'typo'"):
        collect_rules([], [], [{"name": "three-layer", "disable": ["typo"]}])


def test_packs_match_the_guide():
    rules = {r.name: r for r in load_pack("three-layer")}
    assert set(available_packs()) >= {"three-layer", "slo"}
    # detection within `for` + one interval: windows of 1-5 minutes (the incident bench)
    p95 = rules["llm_latency_p95_high"]
    assert (p95.query.signal, p95.median_of_days, p95.factor, p95.for_) == (
        "latency_p95",
        5,
        2,
        timedelta(minutes=3),
    )
    err = rules["llm_error_rate_high"]
    assert (err.threshold, err.query.window, err.for_) == (
        0.2,
        timedelta(minutes=1),
        timedelta(minutes=2),
    )
    for name in ("llm_token_usage_spike", "llm_cost_spike"):
        r = rules[name]
        assert (r.factor, r.median_of_days, r.for_) == (2, 5, timedelta(minutes=10))
    q = rules["llm_quality_score_low"]
    assert (q.op, q.threshold, q.for_) == ("<", 0.8, timedelta(minutes=10))


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"name": "a", "query": {"signal": "error_rate", "group_by": ["user_id"]},
          "threshold": 1}, "query.group_by"),
        ({"name": "a", "query": {"signal": "error_rate", "where": {"user_id": "x"}},
          "threshold": 1}, "query.where"),
        ({"name": "a", "query": {"signal": "latency_over"}, "threshold": 1},
         "query.latency_threshold_ms"),
        ({"name": "a", "query": {"signal": "error_rate"}, "threshold": 0.1,
          "recovery_threshold": 0.2}, "recovery_threshold"),
        ({"name": "a", "type": "burn_rate", "sli": "latency", "objective": 0.99},
         "latency_threshold_ms"),
        ({"name": "a", "type": "burn_rate", "sli": "errors", "objective": 0.99,
          "group_by": ["user_id"]}, "group_by"),
        ({"name": "a", "type": "burn_rate", "sli": "errors", "objective": 0.99,
          "tiers": [{"long": "1h", "short": "5m", "factor": 14}, {"long": "1h", "short": "2h",
                                                                 "factor": 6}]}, "tiers[1].short"),
    ],
)  # fmt: skip
def test_errors_carry_the_exact_field_path(rule, field):
    with pytest.raises(ConfigError) as e:
        parse_rules([rule], source="r.yaml")
    assert f"r.yaml: rule 'a' (#1): field {field!r}: " in str(e.value), str(e.value)


BROKEN_A = """rules:
  - name: a1
    query: {signal: latncy_p95, group_by: [user_id]}
    threshold: x
  - name: a2
    query: {signal: error_rate}
    threshold: 0.1
  - name: a3
    query: {signal: error_rate, group_by: [tenant, customer]}
    threshold: 0.1
    severty: critical
"""
BROKEN_B = """rules:
  - name: b1
    type: burn_rate
    sli: latency
    objective: 1.5
  - {name: b2, type: slo}
"""
GOOD = "rules:\n  - {name: ok1, query: {signal: error_rate}, threshold: 0.1}\n"

#: every error of both files, with its exact field path
EXPECTED = [
    "a.yaml: rule 'a1' (#1): field 'query.signal': unknown signal 'latncy_p95'",
    "a.yaml: rule 'a1' (#1): field 'query.group_by': cannot group or filter by 'user_id'",
    "a.yaml: rule 'a1' (#1): field 'threshold': Input should be a valid number",
    "a.yaml: rule 'a3' (#3): field 'query.group_by': cannot group or filter by 'customer'",
    "a.yaml: rule 'a3' (#3): field 'severty': unknown field",
    "b.yaml: rule 'b1' (#1): field 'objective': Input should be less than 1",
    "b.yaml: rule 'b1' (#1): field 'latency_threshold_ms': sli latency needs",
    "b.yaml: rule 'b2' (#2): field 'type': must be one of threshold, baseline, burn_rate",
]


def _write_rule_files(tmp_path):
    for name, text in (("a.yaml", BROKEN_A), ("b.yaml", BROKEN_B), ("good.yaml", GOOD)):
        (tmp_path / name).write_text(text)


def test_every_error_of_every_file_is_reported(tmp_path):
    _write_rule_files(tmp_path)
    with pytest.raises(ConfigError) as e:
        collect_rules([], ["a.yaml", "good.yaml", "b.yaml"], base_dir=tmp_path)
    lines = str(e.value).splitlines()
    for want in EXPECTED:
        assert sum(f"{tmp_path}/{want}" in line for line in lines) == 1, (want, lines)
    assert len(lines) == len(EXPECTED), lines
    assert not any("a2" in line or "ok1" in line for line in lines)


def test_cli_rules_check_and_config_check_report_every_error(tmp_path):
    import subprocess
    import sys

    _write_rule_files(tmp_path)
    cli = [sys.executable, "-m", "mlflow_llmops.cli"]
    r = subprocess.run([*cli, "alerts", "rules", "check", "a.yaml", "good.yaml", "b.yaml"],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "good.yaml: 1 rules OK" in r.stdout
    assert f"{len(EXPECTED)} error(s) in the alert rules" in r.stderr
    for want in EXPECTED:
        assert want in r.stderr, (want, r.stderr)
    (tmp_path / "c.yml").write_text("alerting:\n  rule_files: ['*.yaml']\n")
    r = subprocess.run([*cli, "--config", "c.yml", "config", "check"],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    for want in EXPECTED:
        assert want in r.stderr, (want, r.stderr)
    assert "configuration OK" not in r.stdout
