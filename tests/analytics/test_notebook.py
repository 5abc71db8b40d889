"""notebooks/cost_analysis.ipynb runs top to bottom on each set-up the README describes:
a tracking database, an MLflow server (``http://``, through a Parquet export made with
MLflow's REST API) and a Parquet export alone."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from sql_times import NOW, START

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "cost_analysis.ipynb"
ENV = ("LLMOPS_TRACKING_URI", "LLMOPS_PARQUET_DIR", "LLMOPS_EXPERIMENT", "LLMOPS_EXPERIMENT_ID",
       "LLMOPS_EXPORT_DIR")  # fmt: skip


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


def _run(monkeypatch, cwd: Path, **env: str) -> str:
    """Execute the notebook with ``env`` (the other LLMOPS_* variables unset) in ``cwd``."""
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    env = {"LLMOPS_NOW": NOW.isoformat(), "LLMOPS_DAYS": str((NOW - START).days + 1),
           "MLFLOW_MODEL_CATALOG_URI": "", **env}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name="python3", resources={
        "metadata": {"path": str(cwd)}})  # fmt: skip
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = _outputs(nb)
    assert text.count("<png>") >= 4  # spend by model, users, cache savings, forecast
    assert "user-whale" in text and "acme-internal-llm" in text
    assert not (cwd / "mlflow.db").exists()  # no store created by accident
    return text


def test_notebook_runs_top_to_bottom(sqlite_store, monkeypatch, tmp_path):
    text = _run(monkeypatch, tmp_path, LLMOPS_TRACKING_URI=sqlite_store[0],
                LLMOPS_EXPERIMENT="sql-analyses")  # fmt: skip
    assert "traces in 1 experiment(s)" in text
    assert "estimates:" not in text  # unsampled traffic
    assert os.environ["LLMOPS_TRACKING_URI"] == sqlite_store[0]


def test_notebook_on_a_parquet_export_alone(duck, monkeypatch, tmp_path):
    text = _run(monkeypatch, tmp_path, LLMOPS_PARQUET_DIR=str(duck[0]))
    assert "traces in 1 experiment(s)" in text and "Parquet export" in text


def test_notebook_on_an_mlflow_server_with_sampled_traffic(mlflow_server_sqlite, monkeypatch,
                                                           tmp_path):  # fmt: skip
    """The production set-up: an http:// server (no database URL); a third of the traces
    were kept by a head ratio of 0.1 (weight 10), so the figures are estimates."""
    from sql_dataset import dataset

    from mlflow_llmops.testing.seed import seed_traces

    traces = [replace(t, sample_weight="10") if i % 3 == 0 and t.user != "user-whale" else t
              for i, t in enumerate(dataset())]  # fmt: skip
    seed_traces(mlflow_server_sqlite.url, "nb-http", traces)
    export = tmp_path / "export"
    text = _run(monkeypatch, tmp_path, LLMOPS_TRACKING_URI=mlflow_server_sqlite.url,
                LLMOPS_EXPERIMENT="nb-http", LLMOPS_EXPORT_DIR=str(export))  # fmt: skip
    assert "traces in 1 experiment(s)" in text and "(sampled)" in text
    assert "estimates: sampled traffic" in text
    assert (export / "_manifest.json").exists()
    weighted = sum(10 if t.sample_weight == "10" else 1 for t in traces)
    assert f"over {weighted:,} requests" in text
