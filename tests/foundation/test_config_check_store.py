"""``config check`` rejects a SQLite store it could not write, with the fix: otherwise
tracing starts and only says "experiment not resolved yet"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _check(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mlflow_llmops.cli", "--config", str(config), "config", "check"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_config_check_rejects_an_unwritable_sqlite_store(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "not-a-dir").write_text("x")
        db = tmp_path / "not-a-dir" / "mlflow.db"
    else:  # not writable even for root
        db = Path("/proc/llmops-check/mlflow.db")
    p = tmp_path / "c.yaml"
    p.write_text(f"tracking:\n  uri: sqlite:///{db}\n")
    r = _check(p, tmp_path)
    assert r.returncode == 2, r.stdout
    assert f"tracking.uri: sqlite:///{db}" in r.stderr
    assert "point tracking.uri at a file in a writable directory" in r.stderr


def test_config_check_accepts_a_store_in_a_directory_still_to_create(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(f"tracking:\n  uri: sqlite:///{tmp_path / 'new' / 'dir' / 'mlflow.db'}\n"
                 "state_store:\n  url: sqlite:///state/state.db\n")  # fmt: skip
    ok = _check(p, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "state").exists()
    assert list(tmp_path.iterdir()) == [p]  # the probe file is gone
