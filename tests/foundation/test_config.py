import os

import pytest

from mlflow_llmops.config import load_config
from mlflow_llmops.errors import ConfigError


def test_defaults_load_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.tracking.sql_url() == "sqlite:///mlflow.db"
    assert cfg.state_store.url.startswith("sqlite:///")


def test_yaml_with_env_interpolation_and_default(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tracking:\n  uri: ${TRACKING}\n  experiment_name: ${EXP:-fallback}\n")
    cfg = load_config(p, env={"TRACKING": "http://127.0.0.1:5000"})
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    assert cfg.tracking.experiment_name == "fallback"
    assert cfg.tracking.sql_url() is None


def test_missing_env_var_names_variable_and_fix(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tracking:\n  uri: ${NOPE_NOT_SET}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert "NOPE_NOT_SET" in str(e.value) and "tracking.uri" in str(e.value)


def test_env_override_double_underscore(tmp_path):
    cfg = load_config(env={"MLFLOW_LLMOPS__TRACKING__EXPERIMENT_NAME": "prod"})
    assert cfg.tracking.experiment_name == "prod"


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tracking:\n  urii: sqlite:///x.db\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    msg = str(e.value)
    assert str(p) in msg and "tracking.urii" in msg and "unknown key" in msg


def test_malformed_yaml_and_wrong_top_level(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tracking: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p, env={})
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p, env={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", env={})


def test_cli_config_check_reports_bad_file(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "c.yaml"
    p.write_text("tracking:\n  uri: ''\n")
    r = subprocess.run(
        [sys.executable, "-m", "mlflow_llmops.cli", "--config", str(p), "config", "check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "tracking.uri" in r.stderr and "must not be empty" in r.stderr


def test_cli_config_check_loads_the_rule_files(tmp_path):
    import subprocess
    import sys

    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: slow\n    query: {signal: latency_p95, window: 5m}\n"
        "    op: '>'\n    threshold: not-a-number\n")  # fmt: skip
    p = tmp_path / "c.yaml"
    p.write_text("alerting:\n  rule_files: [rules.yaml]\n")
    cmd = [sys.executable, "-m", "mlflow_llmops.cli", "--config", str(p), "config", "check"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2, r.stdout
    assert "rules.yaml" in r.stderr and "threshold" in r.stderr
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: slow\n    query: {signal: latency_p95, window: 5m}\n"
        "    op: '>'\n    threshold: 5000\n")  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 alert rules" in ok.stdout, ok.stderr


def test_cli_config_check_lists_the_deprecated_keys_in_use(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "c.yaml"
    p.write_text("tracing:\n  shutdown_timeout_s: 5\n  otlp: {timeout: 2s}\n")
    cmd = [sys.executable, "-m", "mlflow_llmops.cli", "--config", str(p), "config", "check"]
    env = {**os.environ, "MLFLOW_LLMOPS__TRACING__METRICS__PROMETHEUS_INTERVAL_S": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert (
        "deprecated: tracing.shutdown_timeout_s is deprecated; use tracing.shutdown_timeout"
        in r.stdout
    )
    assert (
        "deprecated: MLFLOW_LLMOPS__TRACING__METRICS__PROMETHEUS_INTERVAL_S is deprecated; "
        "use MLFLOW_LLMOPS__TRACING__METRICS__PROMETHEUS_INTERVAL " in r.stdout
    )
    assert "otlp" not in r.stdout  # the new spelling: nothing to say
    show = subprocess.run([*cmd[:-1], "show"], capture_output=True, text=True, env=env)
    assert "shutdown_timeout: 5s" in show.stdout and "prometheus_interval: 1s" in show.stdout
    assert "shutdown_timeout_s" not in show.stdout


def test_a_bad_variable_is_named_in_the_error():
    env = {"MLFLOW_LLMOPS__TRACING__QUEUE_CAPACITY": "0"}
    with pytest.raises(ConfigError) as e:
        load_config(env=env)
    assert "tracing.queue_capacity (from the environment variable " \
           "MLFLOW_LLMOPS__TRACING__QUEUE_CAPACITY)" in str(e.value)  # fmt: skip


def test_an_otlp_url_without_its_path_is_rejected_with_the_fix():
    env = {"MLFLOW_LLMOPS__TRACING__OTLP__TRACES_ENDPOINT": "http://collector:4318"}
    with pytest.raises(ConfigError) as e:
        load_config(env=env)
    assert "write http://collector:4318/v1/traces" in str(e.value)
    env = {"MLFLOW_LLMOPS__TRACING__OTLP__METRICS_ENDPOINT": "https://otel.example/"}
    with pytest.raises(ConfigError, match=r"write https://otel\.example/v1/metrics"):
        load_config(env=env)
    ok = load_config(env={"MLFLOW_LLMOPS__TRACING__OTLP__TRACES_ENDPOINT":
                          "http://collector:4318/v1/traces"})  # fmt: skip
    assert ok.tracing.otlp.traces_endpoint == "http://collector:4318/v1/traces"


def test_old_duration_keys_of_pricing_and_receivers_still_work(tmp_path):
    """``pricing.lookback_s`` and a receiver's ``timeout_s`` became durations; the old
    spellings are read with a DeprecationWarning, both together are an error."""
    from datetime import timedelta

    p = tmp_path / "c.yaml"
    p.write_text(
        "pricing: {lookback_s: 60}\n"
        "alerting:\n  notifications:\n    receivers:\n"
        "      - {name: hook, type: webhook, url: 'http://127.0.0.1:9/x', timeout_s: 2.5}\n"
        "      - {name: am, type: alertmanager, url: 'http://127.0.0.1:9', timeout: 3s}\n"
    )
    with pytest.warns(DeprecationWarning) as caught:
        cfg = load_config(p, env={})
    messages = " ".join(str(w.message) for w in caught)
    assert "pricing.lookback_s is deprecated; use pricing.lookback" in messages
    assert "timeout_s is deprecated; use timeout" in messages
    assert cfg.pricing.lookback == timedelta(minutes=1)
    hook, am = cfg.alerting.notifications.receivers
    assert hook.timeout == timedelta(seconds=2.5) and am.timeout == timedelta(seconds=3)
    p.write_text(
        "alerting:\n  notifications:\n    receivers:\n"
        "      - {name: hook, type: webhook, url: 'http://x/y', timeout_s: 2, timeout: 2s}\n"
    )
    with pytest.raises(ConfigError, match="both timeout_s and timeout are set"):
        load_config(p, env={})
