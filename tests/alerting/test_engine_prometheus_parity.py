"""The engine's state machine equals Prometheus's at every evaluation: random condition
series, random ``for``, ``keep_firing_for`` and restarts (state reloaded from its stored row)
run through ``AlertEngine._transition`` and through ``promtool test rules`` on the same
series; promtool checks, minute by minute, that exactly our firing minutes fire."""

from __future__ import annotations

import random
import subprocess
from datetime import UTC, datetime, timedelta

import yaml

from mlflow_llmops.alerting.engine import AlertEngine, AlertInstance
from mlflow_llmops.alerting.model import AlertState, Severity

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CASES, MINUTES = 60, 40


def _ours(values: list[int], for_m: int, keep_m: int, restarts: set[int]) -> list[bool]:
    inst = AlertInstance("f", "r", {}, {}, AlertState.INACTIVE, Severity.WARNING)
    firing = []
    for minute, v in enumerate(values):
        if minute in restarts:  # a monitor restart: the state comes back from the store
            inst = AlertInstance.from_row(inst.row())
        AlertEngine._transition(inst, bool(v), T0 + timedelta(minutes=minute),
                                keep_firing_for=timedelta(minutes=keep_m),
                                for_=timedelta(minutes=for_m))  # fmt: skip
        firing.append(inst.state == AlertState.FIRING)
    return firing


def _case(rng: random.Random) -> tuple[list[int], int, int, set[int]]:
    values, v = [], rng.random() < 0.5
    for _ in range(MINUTES):  # runs of true and false of random length: flaps and episodes
        if rng.random() < 0.3:
            v = not v
        values.append(int(v))
    return values, rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 2, 3, 5]), {
        m for m in range(MINUTES) if rng.random() < 0.1}  # fmt: skip


def test_state_machine_equals_promtool_at_every_evaluation(tmp_path, promtool):
    rng = random.Random(20261204)
    rules, series, checks = [], [], []
    fired_any = kept_any = 0
    for i in range(CASES):
        values, for_m, keep_m, restarts = _case(rng)
        ours = _ours(values, for_m, keep_m, restarts)
        without_keep = _ours(values, for_m, 0, set())
        fired_any += any(ours)
        kept_any += ours != without_keep  # cases where keep_firing_for changed something
        rule = {"alert": f"case_{i}", "expr": f"x_{i} > 0.5", "for": f"{for_m}m"}
        if keep_m:
            rule["keep_firing_for"] = f"{keep_m}m"
        rules.append(rule)
        series.append({"series": f"x_{i}", "values": " ".join(map(str, values))})
        checks += [{"eval_time": f"{m}m", "alertname": f"case_{i}",
                    "exp_alerts": [{"exp_labels": {}}] if fire else []}
                   for m, fire in enumerate(ours)]  # fmt: skip
    assert fired_any > CASES // 2 and kept_any > CASES // 6  # the cases test something
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "parity", "interval": "1m", "rules": rules}]})
    )
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }))  # fmt: skip
    out = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
