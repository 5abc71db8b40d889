"""``setup_production_tracing`` reads the ``tracing:`` and ``pricing:`` sections of the
configuration file; arguments and ``MLFLOW_LLMOPS__TRACING__...`` variables win over it."""

from __future__ import annotations

import mlflow
import pytest

from mlflow_llmops.core import keys
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.tracing import llm_call

FILE = """
tracking: {uri: "sqlite:///ignored-by-tracing.db"}
tracing:
  service_name: svc-from-file
  sampling: {ratio: 0.0, tail: {keep_errors: true, cost_above_usd: 0.0}}
  metadata: {environment: from-file}
  queue_capacity: 123
pricing:
  catalog_files: []
alerting:
  rules: "this section is the monitor's: a service never validates it"
"""


def _one_llm_call() -> None:
    with mlflow.start_span("req"):
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": "hi"}) as call:
            call.set_usage(input_tokens=1000, output_tokens=100)


def test_the_tracing_section_of_the_file_is_read(tracing, shared_sqlite_uri, tmp_path,
                                                 monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_LLMOPS_CONFIG", raising=False)
    (tmp_path / "mlflow-llmops.yaml").write_text(FILE)
    monkeypatch.setenv("MLFLOW_LLMOPS__TRACING__METADATA__DEPLOYMENT", "blue")
    h = tracing("cfg-file", None, tracking_uri=shared_sqlite_uri)
    assert h.service_name == "svc-from-file" and h.config.queue_capacity == 123
    _one_llm_call()
    assert h.flush(30)
    (t,) = mlflow.search_traces(locations=[h.experiment_id], return_type="list")
    meta = t.info.trace_metadata
    assert meta[keys.SERVICE] == "svc-from-file"
    assert meta[keys.ENVIRONMENT] == "from-file" and meta[keys.DEPLOYMENT] == "blue"
    assert meta[keys.SAMPLING] == "tail:cost"  # ratio 0 from the file, cost rule kept it


def test_arguments_win_over_the_file(tracing, shared_sqlite_uri, tmp_path, monkeypatch):
    cfg = tmp_path / "elsewhere.yaml"
    cfg.write_text(FILE)
    h = tracing("cfg-args", "svc-arg", tracking_uri=shared_sqlite_uri, config_file=cfg,
                config={"sampling": {"ratio": 1.0}}, queue_capacity=77)  # fmt: skip
    assert h.service_name == "svc-arg" and h.config.queue_capacity == 77
    assert h.config.sampling.ratio == 1.0
    assert h.config.metadata.environment == "from-file"  # merged, not replaced


def test_a_bad_tracing_section_names_the_file_and_the_key(tmp_path):
    from mlflow_llmops.tracing import setup_production_tracing

    bad = tmp_path / "bad.yaml"
    bad.write_text("tracing:\n  sampling: {ratio: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n  - tracing\.sampling\.ratio"):
        setup_production_tracing("x", "svc", config_file=bad)
