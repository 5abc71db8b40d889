from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from mlflow.entities import AssessmentSource, Feedback
from mlflow.tracing.client import TracingClient
from scoring_helpers import EPOCH, EPOCH_MS, config_for, make_traces

from mlflow_llmops.scoring import (
    BackfillError,
    BackfillParams,
    ScorerRegistry,
    ScorerSpec,
    backfill,
    quality_aggregates,
)
from mlflow_llmops.scoring.registry import (
    backfill_items_table,
    backfill_jobs_table,
    ledger_table,
)
from mlflow_llmops.testing.fake_llm import Fault

ROOT = Path(__file__).resolve().parents[2]


def _judge(store, base_url: str, name: str = "quality") -> None:
    ScorerRegistry(store).register(
        ScorerSpec(name=name, ref="judge", params={"base_url": base_url}), now=EPOCH
    )


def test_budget_estimate_rerun_and_429(judge_llm, mlflow_db, store, state_url):
    mlflow_db.load(make_traces(30))
    _judge(store, judge_llm.base_url)
    cfg = config_for(mlflow_db.uri, state_url, concurrency=4)
    judge_llm.script(Fault(status=429, retry_after=0.05), Fault(status=503))
    first = backfill(cfg, store, scorer="quality", since_ms=EPOCH_MS, until_ms=EPOCH_MS + 10**8,
                     max_cost_usd=1e-9, progress=False)  # fmt: skip
    # the estimate comes first; a budget below one trace's estimate scores nothing
    assert first.status == "budget_exhausted" and first.scored == 0
    assert first.total == 30 and first.estimate_usd > 0
    per_trace = first.estimate_usd / 30
    budget = per_trace * 10.5
    second = backfill(cfg, store, scorer="quality", since_ms=EPOCH_MS,
                      until_ms=EPOCH_MS + 10**8, max_cost_usd=budget, progress=False)  # fmt: skip
    assert second.job_id == first.job_id and second.status == "budget_exhausted"
    assert 8 <= second.scored < 30 and second.spent_usd <= budget
    third = backfill(cfg, store, scorer="quality", since_ms=EPOCH_MS,
                     until_ms=EPOCH_MS + 10**8, max_cost_usd=1.0, progress=False)  # fmt: skip
    assert third.status == "done" and third.scored == 30 - second.scored
    assert third.already_done == second.scored
    fourth = backfill(cfg, store, scorer="quality", since_ms=EPOCH_MS,
                      until_ms=EPOCH_MS + 10**8, progress=False)  # fmt: skip
    assert fourth.scored == 0 and fourth.status == "done"
    per_trace_count = Counter(r[0] for r in mlflow_db.assessments())
    assert len(per_trace_count) == 30 and set(per_trace_count.values()) == {1}
    agg = quality_aggregates(store, EPOCH_MS, EPOCH_MS + 10**8, "quality")[0]
    assert agg.scored == 30 and agg.errors == 0


def test_backfill_skips_what_the_runner_scored_and_records_errors(mlflow_db, store, state_url):
    from mlflow_llmops.scoring import run_due_scorers

    mlflow_db.load(make_traces(12))
    reg = ScorerRegistry(store)
    reg.register(ScorerSpec(name="empty", ref="builtin:empty_answer", sample_rate=0.5), now=EPOCH)
    reg.register(ScorerSpec(name="broken", ref="scoring_helpers:exploding"), now=EPOCH)
    cfg = config_for(mlflow_db.uri, state_url)
    run = run_due_scorers(cfg, store, EPOCH.replace(day=2), names=["empty"]).scorers[0]
    r = backfill(cfg, store, scorer="empty", sample_rate=1.0, progress=False)
    assert r.scored == 12 - run.scored and r.skipped == run.scored
    assert len(mlflow_db.assessments()) == 12
    b = backfill(cfg, store, scorer="broken", progress=False)
    assert (b.scored, b.errors, b.status) == (0, 12, "done")
    assert "ValueError: boom" in b.error_samples[0]
    import scoring_helpers

    reg.register(ScorerSpec(name="flaky", ref="scoring_helpers:flaky"), now=EPOCH)
    scoring_helpers.FLAKY["fail"] = True
    assert backfill(cfg, store, scorer="flaky", progress=False).errors == 12
    scoring_helpers.FLAKY["fail"] = False
    assert backfill(cfg, store, scorer="flaky", progress=False).scored == 0  # errors are kept
    retry = backfill(cfg, store, scorer="flaky", retry_errors=True, progress=False)
    assert (retry.scored, retry.errors, retry.status) == (12, 0, "done")
    with pytest.raises(BackfillError, match="--until must be after --since"):
        backfill(cfg, store, scorer="empty", since_ms=10, until_ms=5, progress=False)
    nothing = backfill(cfg, store, scorer="empty", filter_string="tags.team = 'nobody'",
                       progress=False)  # fmt: skip
    assert (nothing.total, nothing.status) == (0, "done")


def test_backfill_params_are_checked_when_built():
    """Bad input fails as ``backfill`` did, before any store or MLflow is touched."""
    import dataclasses

    with pytest.raises(BackfillError, match=r"--sample-rate must be in \(0, 1\], got 0"):
        BackfillParams(scorer="s", sample_rate=0)
    with pytest.raises(BackfillError, match="--until must be after --since"):
        BackfillParams(scorer="s", since_ms=10, until_ms=10)
    with pytest.raises(BackfillError, match="--max-cost-usd must be positive, got -1"):
        BackfillParams(scorer="s", max_cost_usd=-1)
    p = BackfillParams(scorer="s", experiment_ids=["1", "2"])
    assert p.experiment_ids == ("1", "2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scorer = "t"  # type: ignore[misc]
    with pytest.raises(TypeError, match="not both"):
        backfill(None, None, params=p, scorer="s")


def test_takeover_adopts_an_assessment_logged_before_a_crash(mlflow_db, store, state_url):
    """A worker died after log_feedback but before confirming: no second assessment."""
    mlflow_db.load(make_traces(3))
    ScorerRegistry(store).register(ScorerSpec(name="empty", ref="builtin:empty_answer"),
                                   now=EPOCH)  # fmt: skip
    tids = [r.info.trace_id for r in TracingClient(mlflow_db.uri).search_traces(
        locations=[mlflow_db.experiment_id], include_spans=False)]  # fmt: skip
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    import socket

    with store.engine.begin() as c:
        c.execute(ledger_table.insert().values(
            trace_id=tids[0], scorer="empty", version=1, state="claimed",
            holder=f"{socket.gethostname()}:{dead}:dead", claimed_ms=EPOCH_MS,
            trace_timestamp_ms=EPOCH_MS))  # fmt: skip
    TracingClient(mlflow_db.uri).log_assessment(tids[0], Feedback(
        name="empty", value=True, source=AssessmentSource("CODE", "empty@v1"),
        metadata={"llmops.scorer": "empty", "llmops.scorer_version": "1"}))  # fmt: skip
    r = backfill(config_for(mlflow_db.uri, state_url), store, scorer="empty", progress=False)
    assert r.scored == 3
    assert Counter(x[0] for x in mlflow_db.assessments()) == {t: 1 for t in tids}


def _write_config(path: Path, tracking_uri: str, state_url: str, experiment: str = "exp") -> Path:
    path.write_text(yaml.safe_dump({
        "tracking": {"uri": tracking_uri, "experiment_name": experiment},
        "state_store": {"url": state_url},
        "scoring": {"concurrency": 4, "completion_buffer": 0},
    }))  # fmt: skip
    return path


def _cli(config: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_LLMOPS_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mlflow_llmops.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT), **kw)  # fmt: skip


def _done(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(ledger_table)
                         .where(ledger_table.c.state == "done")).scalar_one()  # fmt: skip


#: a backfill of the quality judge over 2026-03-01, through the CLI
JUDGE_BACKFILL = ("scorers", "backfill", "--scorer", "quality", "--since", "2026-03-01",
                  "--until", "2026-03-02", "--no-progress")  # fmt: skip


def judge_backfill_setup(judge_llm, mlflow_db, store, state_url, tmp_path, traces) -> Path:  # noqa: ANN001
    """Load ``traces``, register the judge (30 ms a call) and write the CLI's config."""
    mlflow_db.load(traces)
    judge_llm.config.latency_s = 0.03
    _judge(store, judge_llm.base_url)
    return _write_config(tmp_path / "c.yaml", mlflow_db.uri, state_url)


def kill_when_done(store, cfg: Path, args: tuple[str, ...], at_least: int) -> None:
    """Run the CLI with ``args`` and SIGKILL it once the ledger has ``at_least`` done rows."""
    proc = _cli(cfg, *args)
    deadline = time.monotonic() + 90
    while _done(store.engine) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backfill made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_backfill_killed_with_sigkill_then_rerun_scores_each_trace_once(
    judge_llm, mlflow_db, store, state_url, tmp_path
):
    n = 120
    cfg = judge_backfill_setup(judge_llm, mlflow_db, store, state_url, tmp_path, make_traces(n))
    args = JUDGE_BACKFILL
    kill_when_done(store, cfg, args, n // 3)
    killed_at = _done(store.engine)
    assert killed_at < n
    rerun = _cli(cfg, *args)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert ": done" in out
    before = int(re.search(r"done before this run (\d+)", out).group(1))
    scored = int(re.search(r"this worker: scored (\d+)", out).group(1))
    adopted = int(re.search(r"already scored (\d+)", out).group(1))
    assert before <= killed_at and before + scored + adopted == n  # resumed, not restarted
    counts = Counter(r[0] for r in mlflow_db.assessments())
    assert len(counts) == n and set(counts.values()) == {1}, "every trace scored exactly once"
    assert _done(store.engine) == n


def _numbers(out: str) -> dict[str, int]:
    m = re.search(r"this worker: scored (\d+), errors (\d+), already scored (\d+), "
                  r"not applicable (\d+)", out)  # fmt: skip
    assert m, out
    return dict(zip(("scored", "errors", "skipped", "not_applicable"), map(int, m.groups()),
                    strict=True))  # fmt: skip


def test_two_workers_split_a_backfill_on_postgres(judge_llm, mlflow_server_pg, pg_url, tmp_path):
    """Two worker processes, one command: disjoint shares that cover the job. A trace leased
    to both would be "already scored" for one of them (the ledger stops the second
    assessment), so that count must be zero, not just the assessments unique."""
    from mlflow import MlflowClient

    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.seed import bulk_load

    n = 80
    exp = f"split-{os.getpid()}-{time.time_ns()}"
    exp_id = MlflowClient(mlflow_server_pg.url).create_experiment(exp)
    engine = sa.create_engine(mlflow_server_pg.database_url)
    bulk_load(engine, exp_id, make_traces(n), seed=7)
    with engine.connect() as c:
        all_ids = {r[0] for r in c.execute(sa.text(
            "SELECT request_id FROM trace_info WHERE experiment_id = :e"), {"e": int(exp_id)})}  # fmt: skip
    # about 12 s of judge time for one worker alone: room for both to start, even under load
    judge_llm.config.latency_s = 0.3
    store = StateStore(pg_url)
    _judge(store, judge_llm.base_url)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "tracking": {"uri": mlflow_server_pg.url, "experiment_name": exp},
        "state_store": {"url": pg_url},
        "scoring": {"concurrency": 2},
    }))  # fmt: skip
    args = ("scorers", "backfill", "--scorer", "quality", "--no-progress", "--worker-id")
    procs = {w: _cli(cfg, *args, w) for w in ("w1", "w2")}
    outs = {}
    for w, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        outs[w] = _numbers(out)
    for w, o in outs.items():
        assert (o["skipped"], o["errors"]) == (0, 0), f"{w} was handed traces of the other: {o}"
    assert sum(o["scored"] for o in outs.values()) == n
    assert min(o["scored"] for o in outs.values()) >= n // 8  # both did a real share
    with store.engine.connect() as c:
        assert c.execute(sa.select(backfill_jobs_table.c.status)).scalar_one() == "done"
        leased = {w: {r[0] for r in c.execute(sa.select(backfill_items_table.c.trace_id).where(
            backfill_items_table.c.holder == w, backfill_items_table.c.state == "done"))}
            for w in outs}  # fmt: skip
        scored = {w: {r[0] for r in c.execute(sa.select(ledger_table.c.trace_id).where(
            ledger_table.c.holder == w, ledger_table.c.state == "done"))} for w in outs}  # fmt: skip
    assert scored["w1"].isdisjoint(scored["w2"]) and scored["w1"] | scored["w2"] == all_ids
    assert scored == leased  # each worker scored exactly the traces it leased
    assert {w: len(v) for w, v in scored.items()} == {w: o["scored"] for w, o in outs.items()}
    with engine.connect() as c:
        per_trace = Counter(r[0] for r in c.execute(sa.text(
            "SELECT a.trace_id FROM assessments a JOIN trace_info t ON t.request_id = a.trace_id "
            "WHERE t.experiment_id = :e"), {"e": int(exp_id)}))  # fmt: skip
    assert set(per_trace) == all_ids and set(per_trace.values()) == {1}
    engine.dispose()
    store.dispose()
