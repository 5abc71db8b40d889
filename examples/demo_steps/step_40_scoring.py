"""Demo step 40: register code scorers and an LLM judge (against a local fake
OpenAI-compatible server), score the demo traces once, print pass rates, then
backfill the judge over history within a budget."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

ORDER = 40


def _grader(request: dict) -> str:
    prompt = request["messages"][-1]["content"]
    output = prompt.split("Output:\n", 1)[-1].split("\n\nScore each", 1)[0]
    return json.dumps({
        "faithfulness": 0.9,
        "relevance": 0.2 if not output.strip() else 0.95,
        "safety": 0.0 if "@" in output else 1.0,
        "rationale": "demo judge",
    })  # fmt: skip


def _ensure_traces(ctx) -> None:  # noqa: ANN001
    from mlflow import MlflowClient

    from mlflow_llmops.testing.seed import SeedSpan, SeedTrace, seed_traces

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    exp = client.get_experiment_by_name(ctx.experiment_name)
    if exp and client.search_traces(locations=[exp.experiment_id], max_results=1):
        return
    answers = ["Paris is the capital of France.", "", "Mail me at bob@example.com",
               "I'm sorry, but I can't help with that.", "Your order ships tomorrow."]  # fmt: skip
    start = int((datetime.now(UTC) - timedelta(hours=2)).timestamp() * 1000)
    seed_traces(ctx.tracking_uri, ctx.experiment_name, [
        SeedTrace(timestamp_ms=start + i * 60_000, latency_ms=300 + 700 * (i % 3),
                  request=f"question {i}", response=answers[i % len(answers)],
                  spans=(SeedSpan(model="gpt-4o-mini"),))
        for i in range(30)
    ])  # fmt: skip


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    from mlflow_llmops.config import load_config
    from mlflow_llmops.scoring import (
        ScorerRegistry,
        ScorerSpec,
        backfill,
        quality_aggregates,
        run_due_scorers,
    )
    from mlflow_llmops.statestore.state import StateStore
    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer

    ctx.banner("Scorers: code checks and an LLM judge, scored incrementally")
    _ensure_traces(ctx)
    now = datetime.now(UTC)
    store = StateStore(ctx.state_url)
    reg = ScorerRegistry(store)
    with FakeLLMServer(FakeLLMConfig(responder=_grader, latency_s=0.05)) as llm:
        specs = [
            ScorerSpec(name="empty_answer", ref="builtin:empty_answer", sample_rate=0.5),
            ScorerSpec(name="pii_leak", ref="builtin:pii_leak", sample_rate=0.5),
            ScorerSpec(name="refusal", ref="builtin:refusal", sample_rate=0.5),
            ScorerSpec(
                name="latency_2s",
                ref="builtin:latency_budget",
                params={"max_ms": 2000},
                sample_rate=0.5,
            ),  # fmt: skip
            ScorerSpec(
                name="judge_quality",
                ref="judge",
                sample_rate=0.1,
                params={"base_url": llm.base_url, "aggregate": "min"},
            ),  # fmt: skip
        ]
        for spec in specs:
            if spec.name not in {s.name for s in reg.list()}:
                reg.register(spec, now=now)
            print(f"  registered {spec.name}@v1 ({spec.ref}, sample rate {spec.sample_rate:g})")
        cfg = load_config(None, env={}, overrides={
            "tracking": {"uri": ctx.tracking_uri, "experiment_name": ctx.experiment_name},
            "state_store": {"url": ctx.state_url},
            "scoring": {"completion_buffer": 0, "initial_lookback": 86400 * 60,
                        "max_traces_per_cycle": 300, "concurrency": 8},
        })  # fmt: skip
        report = run_due_scorers(cfg, store, now)
        print(report.summary())
        ctx.data["scoring"] = report

        since = int((now - timedelta(days=60)).timestamp() * 1000)
        until = int(now.timestamp() * 1000) + 1
        print(
            f"\n{'scorer':<16} {'ver':>3} {'scored':>7} {'pass rate':>9} {'mean':>6} {'errors':>6}"
        )
        for a in quality_aggregates(store, since, until):
            rate = "-" if a.pass_rate is None else f"{a.pass_rate:.0%}"
            mean = "-" if a.mean_score is None else f"{a.mean_score:.2f}"
            print(f"{a.scorer:<16} {a.version:>3} {a.scored:>7} {rate:>9} {mean:>6} {a.errors:>6}")

        ctx.banner("Backfill: the judge over history, at a 20% sample, budget $0.01")
        r = backfill(cfg, store, scorer="judge_quality", since_ms=since, until_ms=until,
                     sample_rate=0.2, max_cost_usd=0.01, progress=False)  # fmt: skip
        print(r.summary())
        print("  rerun of the same command: nothing is scored twice")
        again = backfill(cfg, store, scorer="judge_quality", since_ms=since, until_ms=until,
                         sample_rate=0.2, max_cost_usd=0.01, progress=False)  # fmt: skip
        print(f"  second run scored {again.scored}, job status {again.status}")
    print("\nCLI: mlflow-llmops scorers list | run --once | backfill --scorer NAME --since 30d")
