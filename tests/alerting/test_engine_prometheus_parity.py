"""The engine's state machine equals Prometheus's at every evaluation: random condition
series, random evaluation interval, ``for``, ``keep_firing_for`` and restarts (state
reloaded from its stored row) run through ``AlertEngine._transition`` and through
``promtool test rules`` on the same series; promtool checks, at every evaluation, that
exactly our firing evaluations fire."""

from __future__ import annotations

import random
import subprocess
from datetime import UTC, datetime, timedelta

import yaml

from mlflow_llmops.alerting.engine import AlertEngine, AlertInstance
from mlflow_llmops.alerting.model import AlertState, Severity

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CASES, MINUTES = 60, 40


def _ours(
    values: list[int], for_m: int, keep_m: int, restarts: set[int], every: int = 1
) -> dict[int, bool]:
    """Firing or not at each evaluation minute (every ``every`` minutes from minute 0)."""
    inst = AlertInstance("f", "r", {}, {}, AlertState.INACTIVE, Severity.WARNING)
    firing = {}
    for minute in range(0, len(values), every):
        if minute in restarts:  # a monitor restart: the state comes back from the store
            inst = AlertInstance.from_row(inst.row())
        AlertEngine._transition(inst, bool(values[minute]), T0 + timedelta(minutes=minute),
                                keep_firing_for=timedelta(minutes=keep_m),
                                for_=timedelta(minutes=for_m))  # fmt: skip
        firing[minute] = inst.state == AlertState.FIRING
    return firing


def _case(rng: random.Random) -> tuple[list[int], int, int, set[int], int]:
    values, v = [], rng.random() < 0.5
    for _ in range(MINUTES):  # runs of true and false of random length: flaps and episodes
        if rng.random() < 0.3:
            v = not v
        values.append(int(v))
    return values, rng.choice([0, 1, 2, 3, 4]), rng.choice([0, 1, 2, 3, 5]), {
        m for m in range(MINUTES) if rng.random() < 0.1}, rng.choice([1, 1, 2, 3])  # fmt: skip


def test_state_machine_equals_promtool_at_every_evaluation(tmp_path, promtool):
    rng = random.Random(20261204)
    # promtool evaluates every group at the test file's evaluation_interval (it ignores a
    # group's own interval): one rule and test file per interval.
    groups: dict[int, list] = {}
    series: dict[int, list] = {}
    checks: dict[int, list] = {}
    fired_any = kept_any = slower = 0
    for i in range(CASES):
        values, for_m, keep_m, restarts, every = _case(rng)
        ours = _ours(values, for_m, keep_m, restarts, every)
        without_keep = _ours(values, for_m, 0, set(), every)
        fired_any += any(ours.values())
        kept_any += ours != without_keep  # cases where keep_firing_for changed something
        slower += every > 1 and any(ours.values())
        rule = {"alert": f"case_{i}", "expr": f"x_{i} > 0.5", "for": f"{for_m}m"}
        if keep_m:
            rule["keep_firing_for"] = f"{keep_m}m"
        groups.setdefault(every, []).append({"name": f"parity_{i}", "interval": f"{every}m",
                                             "rules": [rule]})  # fmt: skip
        series.setdefault(every, []).append({"series": f"x_{i}",
                                             "values": " ".join(map(str, values))})  # fmt: skip
        checks.setdefault(every, []).extend(
            {"eval_time": f"{m}m", "alertname": f"case_{i}",
             "exp_alerts": [{"exp_labels": {}}] if fire else []}
            for m, fire in ours.items())  # fmt: skip
    assert fired_any > CASES // 2 and kept_any > CASES // 6 and slower > CASES // 8
    for every in groups:
        (tmp_path / f"rules_{every}.yml").write_text(yaml.safe_dump({"groups": groups[every]}))
        (tmp_path / f"test_{every}.yml").write_text(yaml.safe_dump({
            "rule_files": [f"rules_{every}.yml"], "evaluation_interval": f"{every}m",
            "tests": [{"interval": "1m", "input_series": series[every],
                       "alert_rule_test": checks[every]}],
        }))  # fmt: skip
    out = subprocess.run([promtool, "test", "rules", *(f"test_{e}.yml" for e in sorted(groups))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
