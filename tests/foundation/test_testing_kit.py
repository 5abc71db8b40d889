"""The README's test-kit example runs as written: a user's routing against the fake Slack."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_test_kit_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-kit:.*?-->\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost its test-kit example"
    script = tmp_path / "kit.py"
    script.write_text(block.group(1))
    cmd = [sys.executable, str(script)]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[FIRING:1] HighCost (critical)" in p.stdout
    assert (tmp_path / "alerts-test.db").exists()
