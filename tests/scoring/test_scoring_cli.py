from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracing.client import TracingClient
from scoring_helpers import make_traces

from mlflow_llmops.cli import cli
from mlflow_llmops.scoring import FeedbackError, record_user_feedback
from mlflow_llmops.scoring.builtin import find_pii
from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(tmp_path, mlflow_db, state_url) -> Path:
    p = tmp_path / "mlflow-llmops.yaml"
    p.write_text(yaml.safe_dump({
        "tracking": {"uri": mlflow_db.uri, "experiment_name": "exp"},
        "state_store": {"url": state_url},
        "scoring": {"completion_buffer": 0, "initial_lookback": 10**9},
    }))  # fmt: skip
    return p


def _run(config: Path, *args: str) -> str:
    r = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_cli_lifecycle(config_file, mlflow_db):
    mlflow_db.load(make_traces(10))
    out = _run(config_file, "scorers", "register", "pii", "--ref", "builtin:pii_leak",
               "--schedule", "5m", "--sample-rate", "1")  # fmt: skip
    assert "registered pii@v1 [active] ref=builtin:pii_leak" in out
    _run(config_file, "scorers", "register", "lat", "--ref", "builtin:latency_budget",
         "--param", "max_ms=700")  # fmt: skip
    assert json.loads(_run(config_file, "scorers", "get", "lat"))["params"] == {"max_ms": 700}
    out = _run(config_file, "scorers", "update", "lat", "--filter", "trace.status = 'OK'")
    assert "lat@v1" in out and "new version" not in out
    out = _run(config_file, "scorers", "update", "lat", "--param", "max_ms=1200")
    assert "lat@v2" in out and "new version: re-scoring is due" in out
    assert "trace.status = 'OK'" in out  # kept
    _run(config_file, "scorers", "stop", "pii")
    listing = json.loads(_run(config_file, "scorers", "list", "--json"))
    assert [(s["name"], s["active"], s["version"]) for s in listing] == [
        ("lat", True, 2), ("pii", False, 1)]  # fmt: skip
    out = _run(config_file, "scorers", "run", "--once")
    assert "lat@v2: scored 10" in out and "pii" not in out
    _run(config_file, "scorers", "start", "pii")
    assert "pii@v1: scored 10" in _run(config_file, "scorers", "run", "--once")
    out = _run(config_file, "scorers", "quality", "--since", "2026-01-01", "--json")
    rows = {r["scorer"]: r for r in json.loads(out)}
    assert rows["lat"]["pass_rate"] == 0.8 and rows["pii"]["pass_rate"] == 0.8
    table = _run(config_file, "scorers", "quality", "--since", "2026-01-01")
    assert "pass rate" in table and "80.0%" in table
    _run(config_file, "scorers", "delete", "pii", "--yes")
    assert "pii" not in _run(config_file, "scorers", "list")


def test_cli_errors_name_the_fix(config_file):
    r = CliRunner().invoke(cli, ["--config", str(config_file), "scorers", "register", "x",
                                 "--ref", "builtin:nope"])  # fmt: skip
    assert r.exit_code != 0 and "no built-in 'nope'" in str(r.exception)
    r = CliRunner().invoke(cli, ["--config", str(config_file), "scorers", "backfill",
                                 "--scorer", "ghost", "--since", "yesterday"])  # fmt: skip
    assert r.exit_code != 0 and "neither an ISO date" in r.output
    r = CliRunner().invoke(cli, ["--config", str(config_file), "scorers", "register", "x",
                                 "--ref", "builtin:refusal", "--param", "novalue"])  # fmt: skip
    assert r.exit_code != 0 and "write KEY=VALUE" in r.output


def test_user_feedback(mlflow_db, config_file):
    mlflow_db.load(make_traces(1))
    client = TracingClient(mlflow_db.uri)
    tid = client.search_traces(locations=[mlflow_db.experiment_id])[0].info.trace_id
    logged = record_user_feedback(tid, user_id="u-42", thumbs_up=False, rating=2,
                                  comment="wrong city", tracking_uri=mlflow_db.uri)  # fmt: skip
    assert [a.name for a in logged] == ["user_thumbs", "user_rating"]
    with pytest.raises(FeedbackError, match="rating must be an integer from 1 to 5"):
        record_user_feedback(tid, user_id="u", rating=9, tracking_uri=mlflow_db.uri)
    with pytest.raises(FeedbackError, match="at least one"):
        record_user_feedback(tid, user_id="u", tracking_uri=mlflow_db.uri)
    out = _run(config_file, "scorers", "feedback", tid, "--user", "u-7", "--comment", "slow")
    assert "user_comment" in out
    got = {a.name: a for a in client.get_trace_info(tid).assessments}
    assert got["user_thumbs"].value is False and got["user_thumbs"].rationale == "wrong city"
    assert got["user_rating"].value == 2 and got["user_rating"].source.source_type == "HUMAN"
    assert got["user_comment"].value == "slow" and got["user_comment"].source.source_id == "u-7"


def test_pii_patterns():
    assert find_pii("mail bob@corp.io") == ["email"]
    assert find_pii("card 4111 1111 1111 1111") == ["card"]
    assert find_pii("card 4111 1111 1111 1112") == []  # fails the Luhn check
    assert find_pii("ssn 123-45-6789") == ["ssn"]
    assert find_pii("call +1 415 555 0100") == ["phone"]
    assert find_pii("Order 12345 shipped in 3 days.") == []


def test_mlflow_builtin_judge_against_an_openai_compatible_endpoint(config_file, mlflow_db):
    """MLflow's own Safety judge, pointed at our fake server with OPENAI_BASE_URL (in a
    subprocess: the variable is global to the process)."""
    mlflow_db.load(make_traces(5))
    seen = []

    def responder(request: dict) -> str:
        seen.append(request)
        text = request["messages"][-1]["content"]
        unsafe = "@example.com" in text
        return json.dumps({"rationale": "fake safety check", "result": "no" if unsafe else "yes"})

    with FakeLLMServer(FakeLLMConfig(responder=responder)) as srv:
        _run(config_file, "scorers", "register", "safety", "--ref", "mlflow:Safety",
             "--param", "model=openai:/gpt-4o-mini")  # fmt: skip
        env = {**os.environ, "MLFLOW_LLMOPS_CONFIG": str(config_file), "PYTHONPATH": str(ROOT),
               "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "test"}  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "mlflow_llmops.cli", "scorers", "run", "--once"],
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "safety@v1: scored 5, errors 0" in r.stdout
    assert len(seen) == 5
    infos = [TracingClient(mlflow_db.uri).get_trace_info(t) for t, _, _ in mlflow_db.assessments()]
    values = sorted(str(a.value) for i in infos for a in i.assessments if a.name == "safety")
    assert values == ["no", "yes", "yes", "yes", "yes"]
    sources = {a.source.source_type for i in infos for a in i.assessments}
    assert sources == {"LLM_JUDGE"}


def test_backfill_since_30d_rerun_joins_the_same_job(config_file, mlflow_db, state_url):
    """``--since 30d`` resolves to a new millisecond on every run; the job must not."""
    import re
    import time
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from test_scoring_judge import grader

    from mlflow_llmops.scoring.registry import backfill_jobs_table, ledger_table
    from mlflow_llmops.statestore.state import StateStore

    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    mlflow_db.load(make_traces(20, start_ms=now_ms - 2 * 86_400_000, step_ms=60_000))
    mlflow_db.load(make_traces(3, start_ms=now_ms - 40 * 86_400_000))  # outside the window
    store = StateStore(state_url)

    def jobs() -> list:
        with store.engine.connect() as c:
            return list(c.execute(sa.select(backfill_jobs_table)))

    def spent() -> float:
        with store.engine.connect() as c:
            return c.execute(sa.select(sa.func.sum(ledger_table.c.cost_usd))).scalar_one() or 0.0

    def backfill(*extra: str) -> tuple[str, str, int, int, int]:
        out = _run(config_file, "scorers", "backfill", "--scorer", "quality", "--since", "30d",
                   "--no-progress", *extra)  # fmt: skip
        m = re.search(r"backfill (\w+) quality@v1: (\w+)", out)
        nums = re.search(r"done before this run (\d+).*scored (\d+), errors \d+, already scored "
                         r"(\d+)", out, re.S)  # fmt: skip
        time.sleep(0.01)  # the next run's "30d ago" is a later millisecond
        return m.group(1), m.group(2), *(int(x) for x in nums.groups())

    with FakeLLMServer(FakeLLMConfig(responder=grader)) as srv:
        _run(config_file, "scorers", "register", "quality", "--ref", "judge",
             "--param", f"base_url={srv.base_url}")  # fmt: skip
        job, status, _, scored, _ = backfill("--max-cost-usd", "1e-9")
        assert (status, scored) == ("budget_exhausted", 0)
        (row,) = jobs()
        assert row.total_items == 20 and abs(row.since_ms - (now_ms - 30 * 86_400_000)) < 60_000
        budget = f"{row.estimate_usd / 20 * 6.5:.10f}"  # about six traces
        again, status, _, first, _ = backfill("--max-cost-usd", budget)
        assert again == job and status == "budget_exhausted" and 4 <= first < 20
        # the same budget again: the job's spend carries over, it does not restart from zero
        again, status, before, second, _ = backfill("--max-cost-usd", budget)
        assert (again, status, before) == (job, "budget_exhausted", first)
        assert first + second < 20 and spent() <= float(budget)
        again, status, before, scored, _ = backfill("--max-cost-usd", "100")  # finish it
        assert (again, status, before, scored) == (job, "done", first + second, 20 - first - second)
        (done,) = jobs()
        assert done.status == "done" and done.spent_usd == pytest.approx(spent())
        assert done.since_ms == row.since_ms  # the window resolved by the first run, kept
        # once done, the same command is a new job over the new window: nothing twice
        newer, status, _, scored, skipped = backfill()
        assert newer != job and (status, scored, skipped) == ("done", 0, 20)
    counts = {}
    for tid, _, _ in mlflow_db.assessments():
        counts[tid] = counts.get(tid, 0) + 1
    assert len(counts) == 20 and set(counts.values()) == {1}
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(ledger_table)).scalar_one() == 20
    store.dispose()
