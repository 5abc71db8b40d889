"""Scoring speed, side by side in one run, on a SQLite MLflow store:

1. A code scorer over 10,000 bulk-loaded traces: our ``backfill`` against
   ``mlflow.genai.evaluate(data=<search_traces frame>, scorers=[same scorer])``,
   which also logs the feedback onto the original traces. Both score all the same
   traces (each on its own copy of the store), so evaluate's fixed start-up cost
   weighs as it does in real use. Goal: >= 5x.
2. The same code-scorer backfill on PostgreSQL (tracking and state store). Goal for
   both stores: >= 1,000 traces/s.
3. An LLM judge with 200 ms latency and concurrency 16 (fake OpenAI-compatible
   server): traces/s against the ideal 16 / 0.2 s = 80 traces/s. Goal: >= 80%.
4. A judge backfill SIGKILLed three times then finished: extra judge calls (answered
   by the judge, for traces whose result the killed process had not written) and the
   job's spend against the ledger's.

``--skip-evaluate`` leaves out ``mlflow.genai.evaluate`` (ten minutes at 10k traces).

``--traces N`` (or ``BENCH_SCORING_TRACES``) scores fewer traces for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_k, None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

TRACES = int(os.environ.get("BENCH_SCORING_TRACES", "10000"))
JUDGE_TRACES = int(os.environ.get("BENCH_SCORING_JUDGE_TRACES", "800"))
JUDGE_LATENCY_S = 0.2
JUDGE_CONCURRENCY = 16
START = datetime(2026, 3, 1, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
ANSWERS = ["Paris is the capital of France.", "", "Mail bob@example.com", "Sure: 42."]


def make_db(path: Path | None, n: int) -> tuple[str, str]:
    """A tracking store of ``n`` traces: SQLite at ``path``, or a new PostgreSQL database."""
    from mlflow import MlflowClient

    from mlflow_llmops.testing.postgres import create_database
    from mlflow_llmops.testing.seed import SeedSpan, SeedTrace, bulk_load

    uri = f"sqlite:///{path}" if path is not None else create_database("bench_scoring_code")
    exp_id = MlflowClient(uri).create_experiment("bench")
    engine = sa.create_engine(uri)
    bulk_load(
        engine,
        exp_id,
        (
            SeedTrace(
                timestamp_ms=START_MS + i * 100,
                latency_ms=200 + i % 900,
                request=f"question {i}",
                response=ANSWERS[i % len(ANSWERS)],
                spans=(SeedSpan(model="gpt-4o-mini"),),
            )
            for i in range(n)
        ),
        seed=1,
    )
    engine.dispose()
    return uri, exp_id


def config(uri: str, state_url: str, concurrency: int):  # noqa: ANN201
    from mlflow_llmops.config import load_config

    return load_config(None, env={}, overrides={
        "tracking": {"uri": uri, "experiment_name": "bench"},
        "state_store": {"url": state_url},
        "scoring": {"concurrency": concurrency, "completion_buffer": 0},
    })  # fmt: skip


def count_assessments(uri: str) -> int:
    e = sa.create_engine(uri)
    with e.connect() as c:
        n = c.execute(sa.text("SELECT COUNT(*) FROM assessments")).scalar_one()
    e.dispose()
    return int(n)


def ours_code(uri: str, work: Path, state_url: str | None = None) -> tuple[float, int]:
    from mlflow_llmops.scoring import ScorerRegistry, ScorerSpec, backfill
    from mlflow_llmops.statestore.state import StateStore

    store = StateStore(state_url or f"sqlite:///{work / 'state-code.db'}")
    ScorerRegistry(store).register(ScorerSpec(name="pii", ref="builtin:pii_leak"), now=START)
    t0 = time.perf_counter()
    r = backfill(config(uri, store.url, 4), store, scorer="pii", progress=False)
    took = time.perf_counter() - t0
    assert r.status == "done" and r.errors == 0, r.summary()
    return took, r.scored


def kill_storm(work: Path, n: int = 300, kills: int = 3) -> None:
    """A judge backfill (50 ms judge, concurrency 8) through the CLI, SIGKILLed at 1/4, 2/4
    and 3/4 of the work, then run to the end: judge calls beyond one per trace."""
    import signal
    import subprocess

    import yaml

    from mlflow_llmops.scoring import ScorerRegistry, ScorerSpec
    from mlflow_llmops.scoring.registry import backfill_jobs_table, ledger_table
    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer

    uri, _ = make_db(work / "kill.db", n)
    store = StateStore(f"sqlite:///{work / 'state-kill.db'}")
    verdict = json.dumps({"faithfulness": 1, "relevance": 1, "safety": 1, "rationale": "ok"})
    cfg = work / "kill.yaml"
    cfg.write_text(yaml.safe_dump({"tracking": {"uri": uri, "experiment_name": "bench"},
                                   "state_store": {"url": store.url},
                                   "scoring": {"concurrency": 8, "completion_buffer": 0}}))  # fmt: skip
    env = {**os.environ, "MLFLOW_LLMOPS_CONFIG": str(cfg)}
    cmd = [sys.executable, "-m", "mlflow_llmops.cli", "scorers", "backfill", "--scorer",
           "judge", "--no-progress"]  # fmt: skip
    t = ledger_table.c

    def done() -> int:
        with store.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).where(t.state == "done")).scalar_one()

    with FakeLLMServer(FakeLLMConfig(responder=lambda r: verdict, latency_s=0.05)) as llm:
        ScorerRegistry(store).register(
            ScorerSpec(name="judge", ref="judge", params={"base_url": llm.base_url}), now=START
        )
        for k in range(1, kills + 1):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            deadline = time.monotonic() + 120
            while done() < n * k // (kills + 1) and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
        calls = sum(r.path.endswith("/chat/completions") for r in llm.requests)
    with store.engine.connect() as c:
        ledger = c.execute(sa.select(sa.func.sum(t.cost_usd))).scalar_one()
        spent = c.execute(sa.select(backfill_jobs_table.c.spent_usd)).scalar_one()
    store.dispose()
    print(f"RESULT kill_storm_extra_judge_calls={calls - n} of calls={calls} traces={n} "
          f"kills={kills} concurrency=8 job_spend_usd={spent:.6f} "
          f"ledger_spend_usd={ledger:.6f} equal={abs(spent - ledger) < 1e-12}", flush=True)  # fmt: skip


def pg_code_backfill(work: Path, n: int) -> None:
    """The code-scorer backfill with both stores on PostgreSQL."""
    from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available

    if not pg_available():
        print("RESULT code_scorer_backfill_postgres=skipped (no PostgreSQL on 127.0.0.1:5432)")
        return
    uri, _ = make_db(None, n)
    state = create_database("bench_scoring_code_state")
    try:
        took, scored = ours_code(uri, work, state_url=state)
        assert count_assessments(uri) == n
        print(f"RESULT code_scorer_backfill_postgres_traces_per_s={scored / took:.0f} "
              f"goal>=1000 traces={scored} seconds={took:.1f}", flush=True)  # fmt: skip
    finally:
        drop_database(uri)
        drop_database(state)


def mlflow_evaluate(uri: str, exp_id: str, n: int) -> tuple[float, int]:
    import mlflow

    from mlflow_llmops.scoring.builtin import pii_leak

    mlflow.set_tracking_uri(uri)
    # the traces' own experiment: evaluate then logs onto them instead of cloning each one
    # into the default experiment first (a read-after-write flush per trace)
    mlflow.set_experiment(experiment_id=exp_id)
    t0 = time.perf_counter()
    df = mlflow.search_traces(locations=[exp_id], max_results=n, order_by=["timestamp_ms ASC"])
    mlflow.genai.evaluate(data=df, scorers=[pii_leak()])
    took = time.perf_counter() - t0
    return took, len(df)


def log_assessment_ceiling(uri: str, n: int = 60) -> float:
    """Assessments/s that MLflow's own ``log_assessment`` reaches on this store, one thread:
    the ceiling of any scorer that logs one assessment per trace."""
    from mlflow.entities import AssessmentSource, Feedback
    from mlflow.tracing.client import TracingClient

    client = TracingClient(uri)
    ids = [t.info.trace_id for t in client.search_traces(
        locations=["1"], include_spans=False, max_results=n, order_by=["timestamp_ms DESC"])]  # fmt: skip
    t0 = time.perf_counter()
    for tid in ids:
        client.log_assessment(tid, Feedback(name="probe", value=True,
                                            source=AssessmentSource("CODE", "probe")))  # fmt: skip
    return len(ids) / (time.perf_counter() - t0)


def pg_judge_db(n: int) -> tuple[str, str] | None:
    from mlflow import MlflowClient

    from mlflow_llmops.testing.postgres import create_database, pg_available
    from mlflow_llmops.testing.seed import SeedTrace, bulk_load

    if not pg_available():
        return None
    url = create_database("bench_scoring")
    exp_id = MlflowClient(url).create_experiment("bench")
    engine = sa.create_engine(url)
    bulk_load(engine, exp_id, (SeedTrace(timestamp_ms=START_MS + i * 100, request=f"q {i}",
                                         response=ANSWERS[i % 4]) for i in range(n)), seed=2)  # fmt: skip
    engine.dispose()
    return url, exp_id


def ours_judge(uri: str, work: Path, n: int, state_url: str | None = None
               ) -> tuple[float, int, float]:  # fmt: skip
    from mlflow_llmops.scoring import ScorerRegistry, ScorerSpec, backfill
    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer

    verdict = json.dumps({"faithfulness": 1, "relevance": 1, "safety": 1, "rationale": "ok"})
    store = StateStore(state_url or f"sqlite:///{work / 'state-judge.db'}")
    with FakeLLMServer(FakeLLMConfig(responder=lambda r: verdict,
                                     latency_s=JUDGE_LATENCY_S)) as llm:  # fmt: skip
        ScorerRegistry(store).register(
            ScorerSpec(name="judge", ref="judge", params={"base_url": llm.base_url}), now=START
        )
        cfg = config(uri, store.url, JUDGE_CONCURRENCY)
        until = START_MS + n * 100
        t0 = time.perf_counter()
        r = backfill(cfg, store, scorer="judge", since_ms=START_MS, until_ms=until,
                     progress=False)  # fmt: skip
        took = time.perf_counter() - t0
    assert r.status == "done" and r.errors == 0 and r.scored == n, r.summary()
    return took, r.scored, r.spent_usd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--traces",
        type=int,
        default=TRACES,
        help="traces for the code-scorer comparison (default %(default)s)",
    )
    parser.add_argument(
        "--judge-traces",
        type=int,
        default=JUDGE_TRACES,
        help="traces for the judge throughput run (default %(default)s)",
    )
    parser.add_argument(
        "--skip-evaluate", action="store_true", help="leave out the mlflow.genai.evaluate baseline"
    )
    args = parser.parse_args()
    n = args.traces
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        t0 = time.perf_counter()
        base = work / "base.db"
        make_db(base, n)
        print(f"seeded {n} traces (bulk loader) in {time.perf_counter() - t0:.1f}s", flush=True)
        ours_db, eval_db, judge_db = (work / f"{k}.db" for k in ("ours", "eval", "judge"))
        for p in (ours_db, eval_db, judge_db):
            shutil.copy(base, p)
        exp_id = "1"

        took, scored = ours_code(f"sqlite:///{ours_db}", work)
        assert count_assessments(f"sqlite:///{ours_db}") == n
        print(f"ours: backfill of a code scorer over {scored} traces: {took:.1f}s "
              f"({scored / took:.0f} traces/s)", flush=True)  # fmt: skip
        pg_code_backfill(work, n)

        if args.skip_evaluate:
            print(f"RESULT code_scorer_backfill_s={took:.1f} sqlite_traces_per_s="
                  f"{scored / took:.0f} goal>=1000 traces={scored} (evaluate skipped)")  # fmt: skip
        else:
            eval_took, eval_n = mlflow_evaluate(f"sqlite:///{eval_db}", exp_id, n)
            logged = count_assessments(f"sqlite:///{eval_db}")
            assert eval_n == n and logged >= n, (eval_n, logged)  # the same work as ours
            print(f"baseline: mlflow.genai.evaluate over {eval_n} traces: {eval_took:.1f}s "
                  f"({eval_n / eval_took:.0f} traces/s)", flush=True)  # fmt: skip
            print(f"RESULT code_scorer_backfill_s={took:.1f} evaluate_s={eval_took:.1f} "
                  f"speedup={eval_took / took:.1f}x goal>=5x sqlite_traces_per_s="
                  f"{scored / took:.0f} goal>=1000 traces={scored} "
                  f"evaluate_traces={eval_n} (same traces, each on its own copy of the store)")  # fmt: skip

        jn = min(args.judge_traces, n)
        ideal = JUDGE_CONCURRENCY / JUDGE_LATENCY_S
        ceiling = log_assessment_ceiling(f"sqlite:///{ours_db}")
        jt, jscored, spent = ours_judge(f"sqlite:///{judge_db}", work, jn)
        rate = jscored / jt
        print(f"RESULT judge_throughput_sqlite_traces_per_s={rate:.1f} ideal={ideal:.0f} "
              f"ratio={rate / ideal:.0%} goal>=80% mlflow_log_assessment_ceiling_per_s="
              f"{ceiling:.0f} latency_ms={JUDGE_LATENCY_S * 1000:.0f} "
              f"concurrency={JUDGE_CONCURRENCY} traces={jn} judge_cost_usd={spent:.4f}")  # fmt: skip
        pg = pg_judge_db(jn)
        if pg is None:
            print("RESULT judge_throughput_postgres=skipped (no PostgreSQL on 127.0.0.1:5432)")
        else:
            from mlflow_llmops.testing.postgres import create_database, drop_database

            state_pg = create_database("bench_scoring_state")
            try:
                jt, jscored, spent = ours_judge(pg[0], work, jn, state_url=state_pg)
                rate = jscored / jt
                print(f"RESULT judge_throughput_postgres_traces_per_s={rate:.1f} "
                      f"ideal={ideal:.0f} ratio={rate / ideal:.0%} goal>=80% "
                      f"concurrency={JUDGE_CONCURRENCY} traces={jn}")  # fmt: skip
            finally:
                drop_database(pg[0])
                drop_database(state_pg)
        kill_storm(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
