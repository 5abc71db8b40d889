"""notebooks/cost_analysis.ipynb runs top to bottom against a seeded store."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from sql_times import NOW, START

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "cost_analysis.ipynb"


def _outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            if "image/png" in data:
                parts.append("<png>")
    return "\n".join(parts)


def test_notebook_runs_top_to_bottom(sqlite_store, monkeypatch, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {
        "LLMOPS_TRACKING_URI": sqlite_store[0],
        "LLMOPS_EXPERIMENT": "sql-analyses",
        "LLMOPS_NOW": NOW.isoformat(),
        "LLMOPS_DAYS": str((NOW - START).days + 1),
        "MLFLOW_MODEL_CATALOG_URI": "",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LLMOPS_PARQUET_DIR", raising=False)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    text = _outputs(nb)
    assert "traces in 1 experiment(s)" in text
    assert text.count("<png>") >= 4  # spend by model, users, cache savings, forecast
    assert "user-whale" in text and "acme-internal-llm" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert os.environ["LLMOPS_TRACKING_URI"] == sqlite_store[0]
