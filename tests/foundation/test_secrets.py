"""No secret leaves in clear: config show, logs at DEBUG, errors, the state store's tables,
alert payloads. Distinct secrets are planted in every secret-bearing setting; the real
monitor runs against PostgreSQL (MLflow and state store, passwords in both URLs) and
fails to deliver to receivers whose URLs carry credentials; every output and every table
is then scanned for each secret."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from mlflow_llmops.secrets import (
    mask_config,
    mask_secrets_in_writes,
    mask_text,
    mask_url,
    register_secret,
)
from mlflow_llmops.testing.fake_slack import FakeHttpServer, FakeSlackServer, SlackFault
from mlflow_llmops.testing.ports import free_port


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://llmops:dbpa55@db/llmops", "postgresql://llmops:***@db/llmops"),
        ("postgresql+psycopg://u:p%40ss@h:5432/d?sslmode=require",
         "postgresql+psycopg://u:***@h:5432/d?sslmode=require"),
        ("http://user:pa55word@am:9093", "http://user:***@am:9093"),
        ("https://hooks.internal/x?token=abc123&team=a", "https://hooks.internal/x?token=***&team=a"),
        ("https://h/x?X-Amz-Signature=f00d&api_key=k1&sig=s2",
         "https://h/x?X-Amz-Signature=***&api_key=***&sig=***"),
        ("https://h/cb#access_token=qqq", "https://h/cb#access_token=***"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://127.0.0.1:5000/path?page=2", "http://127.0.0.1:5000/path?page=2"),
    ],
)  # fmt: skip
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_finds_credentials_in_free_text():
    line = ('"POST /x?token=abc123 HTTP/1.1" 500; retry http://u:pw1234@h/a, '
            "Authorization: Bearer sk-live-123456; basic checks passed")  # fmt: skip
    out = mask_text(line)
    for s in ("abc123", "pw1234", "sk-live-123456"):
        assert s not in out
    assert "basic checks passed" in out and "token=***" in out


def test_registered_values_are_masked_in_logs_and_stored_rows(tmp_path, caplog):
    register_secret("https://hooks.slack.test/services/T1/B2/unit-hook-secret-1")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug(
        '%s "POST %s HTTP/1.1" 500', "hooks.slack.test", "/services/T1/B2/unit-hook-secret-1"
    )
    try:
        raise RuntimeError("sending to /services/T1/B2/unit-hook-secret-1 failed")
    except RuntimeError:
        logging.getLogger("x").exception("boom")
    text = caplog.text
    assert "unit-hook-secret-1" not in text and "POST *** HTTP/1.1" in text
    eng = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    mask_secrets_in_writes(eng)
    with eng.begin() as c:
        c.execute(sa.text("CREATE TABLE t (v TEXT)"))
        c.execute(sa.text("INSERT INTO t VALUES (:v)"),
                  [{"v": "error at http://a:b0b0b0@h/?token=zz99 /services/T1/B2/unit-hook-secret-1"}])  # fmt: skip
        stored = c.execute(sa.text("SELECT v FROM t")).scalar()
    assert stored == "error at http://a:***@h/?token=*** ***"


def test_secrets_named_by_the_config_and_of_a_section_are_masked(monkeypatch, caplog):
    """The judge's key (read from the variable the config names) and a service's OTLP
    headers (``load_section("tracing")`` alone) are masked in every log line."""
    from mlflow_llmops.config import load_config, load_section

    monkeypatch.setenv("JUDGE_KEY_VAR", "sk-judge-0f9e8d7c")
    load_config(env={}, overrides={"scoring": {"judge": {"api_key_env": "JUDGE_KEY_VAR"}}})
    load_section("tracing", env={"MLFLOW_LLMOPS__TRACING__OTLP__HEADERS":
                                 "{x-honeycomb-team: hny-7c6b5a4f3e}"})  # fmt: skip
    caplog.set_level(logging.DEBUG)
    logging.getLogger("openai").debug("request with key=%s", "sk-judge-0f9e8d7c")
    logging.getLogger("otel").warning("export failed; headers %s", {"x": "hny-7c6b5a4f3e"})
    assert "sk-judge-0f9e8d7c" not in caplog.text and "hny-7c6b5a4f3e" not in caplog.text
    assert caplog.text.count("***") == 2


def test_config_show_masks_by_field_and_by_form():
    data = {
        "tracking": {"uri": "postgresql://llmops:dbpa55@db/llmops"},
        "tracing": {"otlp": {"headers": {"authorization": "Bearer x"}}},
        "receivers": [{"webhook_url": "https://hooks.slack.com/services/T/B/C", "name": "s"},
                      {"url": "https://hooks.internal/x?token=abc123"}],
        "scoring": {"judge": {"api_key_env": "OPENAI_API_KEY"}},
    }  # fmt: skip
    out = mask_config(data)
    assert out["tracking"]["uri"] == "postgresql://llmops:***@db/llmops"
    assert out["tracing"]["otlp"]["headers"] == "***"
    assert out["receivers"][0] == {"webhook_url": "***", "name": "s"}
    assert out["receivers"][1]["url"] == "https://hooks.internal/x?token=***"
    assert out["scoring"]["judge"]["api_key_env"] == "OPENAI_API_KEY"  # a name, not a key


# -- end to end -------------------------------------------------------------------------

#: one distinct secret per secret-bearing setting
SECRETS = {
    "tracking_pw": "trkPw-7f3a91c2",
    "tracking_db_pw": "trkDbPw-5e8b0d44",
    "analytics_db_pw": "anaDbPw-c1d2e3f4",
    "state_pw": "statePw-0a9b8c7d",
    "otlp_header": "otlpHdr-9d8c7b6a5f",
    "otlp_metrics_header": "otlpMetHdr-1b2c3d4e",
    "otlp_query": "otlpQ-44aa55bb",
    "slack_hook": "slackHook-2f4e6a8c",
    "slack_token": "xoxb-slackTok-93ab17ce",
    "pd_key": "pdRoutingKey0123456789abcdef0123",
    "am_pw": "amPw-6c5d4e3f",
    "webhook_query": "hookQ-8e7f6a5b",
    "webhook_secret": "hookSecret-3c2b1a0f",
    "webhook_header": "hookHdr-7a6b5c4d",
    "ui_pw": "uiPw-1f2e3d4c",
    "runbook_sig": "runbookSig-5a4b3c2d",
}


class _Always500(FakeHttpServer):
    def handle(self, rec):  # noqa: ANN001, ANN201
        return 500, {"Content-Type": "text/plain"}, "internal error"


def _with_password(url: str, password: str) -> str:
    return sa.engine.make_url(url).set(password=password).render_as_string(hide_password=False)


def _scan_tables(url: str) -> dict[str, list[str]]:
    """Every row of every table, as text: ``{table: [row, ...]}``."""
    eng = sa.create_engine(url)
    out: dict[str, list[str]] = {}
    try:
        insp = sa.inspect(eng)
        with eng.connect() as c:
            for name in insp.get_table_names():
                rows = c.execute(sa.text(f'SELECT * FROM "{name}"')).all()
                out[name] = [repr(tuple(r)) for r in rows]
    finally:
        eng.dispose()
    return out


def _cli(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "mlflow_llmops.cli", "-vv", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=240)  # fmt: skip


def _leaks(text: str) -> list[str]:
    return [k for k, s in SECRETS.items() if s in text]


def test_no_planted_secret_leaves_in_clear(tmp_path, pg_url):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_llmops.testing.postgres import create_database, drop_database

    s = SECRETS
    mlflow_store = SqlAlchemyStore(pg_url, str(tmp_path / "artifacts"))  # the MLflow schema
    mlflow_store.engine.dispose()
    state_db = create_database("llmops_sec")
    refused = free_port()
    try:
        with FakeSlackServer() as slack, _Always500() as failing:
            slack.script(*[SlackFault(status=500)] * 50)
            cfg = {
                "tracking": {"uri": _with_password(pg_url, s["tracking_pw"]),
                             "database_url": _with_password(pg_url, s["tracking_db_pw"]),
                             "experiment_name": "secrets"},
                "state_store": {"url": _with_password(state_db, s["state_pw"])},
                "analytics": {"database_url": _with_password(pg_url, s["analytics_db_pw"])},
                "tracing": {"otlp": {
                    "traces_endpoint": f"http://127.0.0.1:{refused}/v1/traces?api_key={s['otlp_query']}",
                    "headers": {"Authorization": f"Bearer {s['otlp_header']}"},
                    "metrics_headers": {"x-api-key": s["otlp_metrics_header"]}}},
                "alerting": {
                    "evaluation_interval": "10s",
                    "rules": [{"name": "no_traffic", "query": {"signal": "request_count"},
                               "op": "<", "threshold": 1, "no_data": "alerting",
                               "runbook_url": f"https://wiki.test/rb?sig={s['runbook_sig']}"}],
                    "notifications": {
                        "mlflow_ui_url": f"http://ui:{s['ui_pw']}@127.0.0.1:{refused}",
                        "group_wait": "1s",
                        "retry": {"max_attempts": 2, "initial_backoff": "1s"},
                        "receivers": [
                            {"name": "hook", "type": "slack",
                             "webhook_url": f"{slack.url}/services/T0/B0/{s['slack_hook']}"},
                            {"name": "api", "type": "slack", "token": s["slack_token"],
                             "channel": "#alerts", "base_url": slack.api_url},
                            {"name": "pd", "type": "pagerduty", "routing_key": s["pd_key"],
                             "base_url": f"https://127.0.0.1:{refused}"},
                            {"name": "am", "type": "alertmanager",
                             "url": f"http://am:{s['am_pw']}@127.0.0.1:{failing.port}"},
                            {"name": "wh", "type": "webhook",
                             "url": f"{failing.url}/hook?token={s['webhook_query']}",
                             "secret": s["webhook_secret"],
                             "headers": {"X-Api-Key": s["webhook_header"]}},
                        ],
                        "route": {"receiver": "hook", "routes": [
                            {"receiver": r, "continue": True} for r in ("hook", "api", "pd", "am", "wh")]},
                    },
                },
            }  # fmt: skip
            path = tmp_path / "mlflow-llmops.yaml"
            path.write_text(yaml.safe_dump(cfg))
            env = {**os.environ, "MLFLOW_LLMOPS_CONFIG": str(path), "PYTHONUNBUFFERED": "1"}
            runs = [
                _cli(["monitor", "--once", "--no-score"], env, tmp_path),
                _cli(["config", "show"], env, tmp_path),
                _cli(["config", "check"], env, tmp_path),
                _cli(["alerts", "outbox"], env, tmp_path),
                _cli(["alerts", "status"], env, tmp_path),
                _cli(["alerts", "test-notify", "am"], env, tmp_path),
            ]
            # error messages: an invalid secret-bearing value, an unreachable state store
            bad = tmp_path / "bad.yaml"
            bad.write_text(yaml.safe_dump({"tracing": {"otlp": {
                "traces_endpoint": f"http://otel:{s['otlp_query']}@collector:4318"}}}))  # fmt: skip
            runs.append(_cli(["--config", str(bad), "config", "check"], env, tmp_path))
            down = tmp_path / "down.yaml"
            down_url = f"postgresql://postgres:{s['state_pw']}@127.0.0.1:{refused}/x"
            down.write_text(yaml.safe_dump({"state_store": {"url": down_url}}))
            runs.append(_cli(["--config", str(down), "alerts", "status"], env, tmp_path))
            received = [repr(r.body) for srv in (slack, failing) for r in srv.requests]

        tables = _scan_tables(state_db)
        leaks: dict[str, Any] = {}
        for i, r in enumerate(runs):
            if found := _leaks(r.stdout + r.stderr):
                leaks[f"run {i} output"] = found
        for name, table in {**tables, **{f"mlflow.{k}": v
                                         for k, v in _scan_tables(pg_url).items()}}.items():  # fmt: skip
            if found := _leaks("\n".join(table)):
                leaks[f"table {name}"] = found
        if found := _leaks("\n".join(received)):
            leaks["bodies received by the receivers"] = found
        assert not leaks, leaks
        monitor, show = runs[0], runs[1]
        assert monitor.returncode == 0, monitor.stderr[-3000:]
        assert "DEBUG" in monitor.stderr  # the scan covers debug lines
        assert runs[-2].returncode == 2 and "write http://otel:***@collector" in runs[-2].stderr
        assert runs[-1].returncode == 2 and "postgres:***@127.0.0.1" in runs[-1].stderr
        outbox = tables["llmops_notify_outbox"]
        assert len(outbox) >= 6 and all("failed" in r or "pending" in r for r in outbox), outbox
        assert any("500" in r for r in outbox)  # the failures were recorded
        assert any("http://ui:***@127.0.0.1" in r for r in outbox)  # links in payloads
        assert "***" in show.stdout and "statePw" not in show.stdout

        assert received  # the receivers were really called
    finally:
        drop_database(state_db)


def test_an_unexpected_error_of_the_cli_prints_a_masked_traceback(tmp_path, monkeypatch, capsys):
    from mlflow_llmops.cli import config_cmd, main

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("POST https://hooks.internal/x?token=tb-secret-42 failed")

    monkeypatch.setattr(config_cmd, "yaml", type("Y", (), {"safe_dump": boom}))
    (tmp_path / "c.yaml").write_text("tracking: {experiment_name: x}\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "c.yaml"), "config", "show"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "RuntimeError: POST https://hooks.internal/x?token=***" in err
    assert "tb-secret-42" not in err


def flag_with_token(**kw):  # noqa: ANN003, ANN201
    """A rollback function (``module:function``) whose answer carries a credential."""
    return "flag flipped at https://flags.internal/api?token=ff-secret-77"


def test_rollback_audit_records_are_masked(tmp_path):
    from datetime import UTC, datetime, timedelta

    from mlflow_llmops.alerting.model import Alert, AlertState, Severity
    from mlflow_llmops.rollback import RollbackManager
    from mlflow_llmops.rollback.config import RollbackConfig
    from mlflow_llmops.statestore.state import StateStore

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    hook = {"name": "f", "target": "function", "function": "test_secrets:flag_with_token",
            "rules": ["QualityDrop"], "mode": "auto", "min_firing": "0s"}  # fmt: skip
    mgr = RollbackManager(RollbackConfig.model_validate({"hooks": [hook]}), store,
                          f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    alert = Alert(labels={"alertname": "QualityDrop", "severity": "critical"}, annotations={},
                  state=AlertState.FIRING, severity=Severity.CRITICAL, starts_at=t0,
                  ends_at=None, value=1.0, threshold=0.5, baseline=None, window_s=300,
                  episode=1, rule="QualityDrop")  # fmt: skip
    [rec] = mgr.process([alert], t0 + timedelta(minutes=1))
    assert rec.outcome == "executed"
    rows = [r for rows in _scan_tables(str(store.engine.url)).values() for r in rows]
    audit = [r for r in rows if "flag flipped" in r]
    assert audit and all("token=***" in r for r in audit)
    assert not any("ff-secret-77" in r for r in rows)
    store.dispose()


def test_formatters_that_read_the_exception_itself_see_it_masked():
    """PySpark's JSON formatter prints ``str(exc_value)``, not the record's text: the
    exception's own arguments are masked too (CI leaked through it once)."""
    import io

    pytest.importorskip("pyspark")
    from pyspark.logger.logger import JSONFormatter

    register_secret("https://hooks.slack.test/services/T1/B2/json-hook-secret-2")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JSONFormatter())
    log = logging.getLogger("llmops.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError("sending to /services/T1/B2/json-hook-secret-2 failed")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    assert "json-hook-secret-2" not in buf.getvalue()
    assert '"msg": "sending to *** failed"' in buf.getvalue()
