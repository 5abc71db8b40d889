"""``setup_production_tracing`` reads the ``tracing:`` and ``pricing:`` sections of the
configuration file; arguments and ``MLFLOW_LLMOPS__TRACING__...`` variables win over it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import mlflow
import pytest
import yaml
from pydantic import ValidationError

from mlflow_llmops.core import keys
from mlflow_llmops.core.configfile import load_section_model, merge
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.tracing import llm_call
from mlflow_llmops.tracing.config import TracingConfig

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


# -- durations: one type, the old ``*_s`` keys as deprecated aliases ----------------------
OLD_TO_NEW = {
    "retry_backoff_s": "retry_backoff",
    "max_backoff_s": "max_backoff",
    "shutdown_timeout_s": "shutdown_timeout",
    "startup_timeout_s": "startup_timeout",
    "otlp.timeout_s": "otlp.timeout",
    "otlp.metrics_export_interval_s": "otlp.metrics_export_interval",
    "metrics.prometheus_interval_s": "metrics.prometheus_interval",
}


def _nested(dotted: str, value: object) -> dict:
    *parents, leaf = dotted.split(".")
    out: dict = {leaf: value}
    for p in reversed(parents):
        out = {p: out}
    return out


def _get(cfg: TracingConfig, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_durations_take_the_duration_grammar_and_plain_seconds():
    cfg = TracingConfig(shutdown_timeout="1m30s", retry_backoff=0.25, otlp={"timeout": "2"})
    assert cfg.shutdown_timeout == timedelta(seconds=90)
    assert cfg.retry_backoff == timedelta(milliseconds=250)
    assert cfg.otlp.timeout == timedelta(seconds=2)
    # sub-second values survive a dump and a reload (the TracingConfig + overrides path)
    again = TracingConfig.model_validate(TracingConfig().model_dump())
    assert again == TracingConfig() and again.retry_backoff == timedelta(milliseconds=500)
    with pytest.raises(ValidationError, match="longer than 0"):
        TracingConfig(shutdown_timeout=0)


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_an_old_key_in_the_file_still_works_with_a_warning(old, tmp_path):
    new = OLD_TO_NEW[old]
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump({"tracing": _nested(old, 3)}))
    with pytest.warns(
        DeprecationWarning, match=rf"tracing\.{old} is deprecated; use tracing\.{new}"
    ):
        cfg = load_section_model("tracing", TracingConfig, f, env={})
    assert _get(cfg, new) == timedelta(seconds=3)
    both = {"tracing": merge(_nested(old, 3), _nested(new, "3s"))}
    f.write_text(yaml.safe_dump(both))
    with pytest.raises(ConfigError, match=rf"old\.yaml: both tracing\.{old} and tracing\.{new}"):
        load_section_model("tracing", TracingConfig, f, env={})


def test_an_old_variable_still_works_and_overrides_the_file_s_new_key(tmp_path):
    f = tmp_path / "new.yaml"
    f.write_text("tracing:\n  shutdown_timeout: 30s\n  otlp: {timeout: 1m}\n")
    env = {"MLFLOW_LLMOPS__TRACING__SHUTDOWN_TIMEOUT_S": "4"}
    with pytest.warns(DeprecationWarning, match="use MLFLOW_LLMOPS__TRACING__SHUTDOWN_TIMEOUT "):
        cfg = load_section_model("tracing", TracingConfig, f, env=env)
    assert cfg.shutdown_timeout == timedelta(seconds=4) and cfg.otlp.timeout == timedelta(minutes=1)
    # a bad value is reported under the new key, naming the variable that set it
    with pytest.raises(ConfigError, match=r"tracing\.otlp\.timeout \(from the environment varia"
                                          r"ble MLFLOW_LLMOPS__TRACING__OTLP__TIMEOUT_S\)"):  # fmt: skip
        load_section_model(
            "tracing",
            TracingConfig,
            f,
            env={**env, "MLFLOW_LLMOPS__TRACING__OTLP__TIMEOUT_S": "soon"},
        )
    env["MLFLOW_LLMOPS__TRACING__SHUTDOWN_TIMEOUT"] = "5s"
    with pytest.raises(ConfigError, match="unset MLFLOW_LLMOPS__TRACING__SHUTDOWN_TIMEOUT_S"):
        load_section_model("tracing", TracingConfig, f, env=env)


def test_the_whole_configuration_reads_old_keys_too(tmp_path):
    from mlflow_llmops.config import load_config

    f = tmp_path / "all.yaml"
    f.write_text("tracing:\n  metrics: {prometheus_interval_s: 0.5}\n")
    with pytest.warns(DeprecationWarning, match=r"tracing\.metrics\.prometheus_interval_s"):
        cfg = load_config(f, env={"MLFLOW_LLMOPS__TRACING__STARTUP_TIMEOUT_S": "7"})
    assert cfg.tracing.metrics.prometheus_interval == timedelta(milliseconds=500)
    assert cfg.tracing.startup_timeout == timedelta(seconds=7)
    with pytest.raises(
        ConfigError, match=r"all\.yaml: both tracing\.metrics\.prometheus_interval_s"
    ):
        f.write_text("tracing:\n  metrics: {prometheus_interval_s: 1, prometheus_interval: 1s}\n")
        load_config(f, env={})


def test_old_keyword_arguments_still_work(tracing, shared_sqlite_uri, tmp_path):
    cfg = tmp_path / "new.yaml"
    cfg.write_text("tracing:\n  shutdown_timeout: 30s\n")
    with pytest.warns(DeprecationWarning, match=r"tracing\.shutdown_timeout_s is deprecated") as w:
        h = tracing("cfg-old-kw", "svc", tracking_uri=shared_sqlite_uri, config_file=cfg,
                    shutdown_timeout_s=4, otlp={"timeout_s": 2})  # fmt: skip
    # points at the caller (here the fixture), so that it shows in ``__main__``
    assert {Path(x.filename).name for x in w} == {"conftest.py"}
    assert h.config.shutdown_timeout == timedelta(seconds=4)  # the argument wins
    assert h.config.otlp.timeout == timedelta(seconds=2)
    given = TracingConfig(shutdown_timeout="30s")
    with pytest.warns(DeprecationWarning):
        h = tracing("cfg-old-kw", "svc", tracking_uri=shared_sqlite_uri, config=given,
                    startup_timeout_s=3)  # fmt: skip
    assert h.config.startup_timeout == timedelta(seconds=3)
    assert h.config.shutdown_timeout == timedelta(seconds=30)


def test_an_old_and_a_new_argument_together_are_an_error():
    from mlflow_llmops.tracing import setup_production_tracing

    with pytest.raises(ConfigError, match=r"arguments: both tracing\.shutdown_timeout_s and "
                                          r"tracing\.shutdown_timeout are set.*keep only"):  # fmt: skip
        setup_production_tracing("x", "svc", shutdown_timeout_s=3, shutdown_timeout="3s")
    with pytest.raises(
        ConfigError, match=r"both tracing\.otlp\.timeout_s and tracing\.otlp\.timeout are"
    ):
        setup_production_tracing(
            "x", "svc", config=TracingConfig(), otlp={"timeout": 1, "timeout_s": 1}
        )
