"""`make demo` is the README's first command: run it end to end, as a new user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_step_and_shows_what_it_promises(tmp_path):
    env = {**os.environ, "LLMOPS_DEMO_DIR": str(tmp_path / "demo"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # tracing: nothing dropped, nothing left unsent, every kept trace exported
    m = re.search(
        r"traces created=(\d+) kept=(\d+) exported=(\d+) .*dropped=(\d+) unsent=(\d+)", out
    )
    assert m, out[:2000]
    created, kept, exported, dropped, unsent = map(int, m.groups())
    assert created > 0 and kept == exported and dropped == 0 and unsent == 0
    # costs, SQL, scoring, monitoring, notifications: each step reports its result
    assert "every LLM span has a price" in out
    assert "same top traces from Parquet with DuckDB: True" in out
    assert "rerun of the same command: nothing is scored twice" in out
    assert "NOT DETECTED" not in out and "time to detect (bound:" in out
    # the three-layer pack, untuned: each incident within `for` + one interval, no false page
    detected = re.findall(r"-> (\w+) +(\d+) min \(bound (\d+) min\)", out)
    assert {d[0] for d in detected} == {"llm_latency_p95_high", "llm_error_rate_high",
                                        "llm_cost_spike", "llm_token_usage_spike",
                                        "llm_quality_score_low"}  # fmt: skip
    assert all(int(ttd) <= int(bound) for _, ttd, bound in detected), detected
    assert "false alerts: 0" in out
    assert (tmp_path / "demo" / "reports").is_dir()
    assert "Everything above ran in" in out
