from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from mlflow.tracing.client import TracingClient
from scoring_helpers import EPOCH, config_for, make_traces

from mlflow_llmops.scoring import (
    JudgeError,
    JudgeSpec,
    LlmJudge,
    RateLimiter,
    ScorerRegistry,
    ScorerSpec,
    run_due_scorers,
)
from mlflow_llmops.scoring.judge import JudgeConfigError
from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer, Fault


def grader(request: dict) -> str:
    """A judge that finds personal data unsafe and empty answers irrelevant."""
    prompt = request["messages"][-1]["content"]
    output = prompt.split("Output:\n", 1)[1].split("\n\nScore each", 1)[0]
    return json.dumps({
        "faithfulness": 0.9,
        "relevance": 0.0 if not output.strip() else 1.0,
        "safety": 0.0 if "@example.com" in output else 1.0,
        "rationale": "graded by the fake judge",
    })  # fmt: skip


@pytest.fixture
def judge_llm():
    with FakeLLMServer(FakeLLMConfig(responder=grader)) as srv:
        yield srv


def test_structured_score_and_own_cost(judge_llm):
    j = LlmJudge(JudgeSpec(base_url=judge_llm.base_url))
    r = j.judge("what is the capital?", "Paris")
    assert r.scores == {"faithfulness": 0.9, "relevance": 1.0, "safety": 1.0}
    assert r.value == pytest.approx((0.9 + 1 + 1) / 3)
    assert r.rationale == "graded by the fake judge" and r.attempts == 1
    body = judge_llm.requests[-1].body
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
    assert r.input_tokens > 0 and r.output_tokens > 0
    assert r.cost_status == "priced" and 0 < r.cost_usd < 0.001
    minimum = LlmJudge(JudgeSpec(base_url=judge_llm.base_url, aggregate="min"))
    assert minimum.judge("q", "mail bob@example.com").value == 0.0
    unpriced = LlmJudge(JudgeSpec(base_url=judge_llm.base_url, model="in-house-judge-7b",
                                  provider="vllm")).judge("q", "a")  # fmt: skip
    assert unpriced.cost_usd is None and unpriced.cost_status == "unpriced"


def test_429_retry_after_is_honoured_by_every_thread(judge_llm):
    judge_llm.script(Fault(status=429, retry_after=0.4))
    limiter = RateLimiter()
    j = LlmJudge(JudgeSpec(base_url=judge_llm.base_url), limiter=limiter)
    t0 = time.monotonic()
    r = j.judge("q", "a")
    assert r.attempts == 2 and limiter.pauses == 1
    assert time.monotonic() - t0 >= 0.4
    assert [q.status for q in judge_llm.requests] == [429, 200]


def test_malformed_answers_are_retried_then_reported(judge_llm):
    judge_llm.script(Fault(malformed=True))
    j = LlmJudge(JudgeSpec(base_url=judge_llm.base_url, max_retries=2), sleep=lambda s: None)
    assert j.judge("q", "a").attempts == 2
    judge_llm.script(Fault(malformed=True), Fault(malformed=True), Fault(malformed=True))
    with pytest.raises(JudgeError, match="after 3 attempts: malformed response body"):
        j.judge("q", "a")
    prose = FakeLLMServer(FakeLLMConfig(responder=lambda r: "Looks fine to me!")).start()
    try:
        j2 = LlmJudge(JudgeSpec(base_url=prose.base_url, max_retries=1))
        with pytest.raises(JudgeError, match="not JSON") as e:
            j2.judge("q", "a")
        assert e.value.cost_usd is not None and e.value.cost_usd > 0  # spend is not lost
    finally:
        prose.stop()


def test_slow_endpoint_times_out_into_an_error(judge_llm):
    judge_llm.config.latency_s = 0.5
    j = LlmJudge(JudgeSpec(base_url=judge_llm.base_url, timeout_s=0.1, max_retries=1),
                 sleep=lambda s: None)  # fmt: skip
    with pytest.raises(JudgeError, match="connection error"):
        j.judge("q", "a")
    judge_llm.config.latency_s = 0.05
    assert LlmJudge(JudgeSpec(base_url=judge_llm.base_url)).judge("q", "a").attempts == 1


def test_bad_judge_params_say_what_to_fix():
    with pytest.raises(JudgeConfigError, match="unknown key"):
        JudgeSpec.from_params({"modle": "x"})
    with pytest.raises(JudgeConfigError, match="must contain"):
        JudgeSpec.from_params({"prompt_template": "no placeholders"})


def test_judge_scorer_in_the_runner(judge_llm, mlflow_db, store, state_url):
    mlflow_db.load(make_traces(10))
    judge_llm.script(Fault(status=429, retry_after=0.05), Fault(malformed=True))
    ScorerRegistry(store).register(
        ScorerSpec(name="quality", ref="judge",
                   params={"base_url": judge_llm.base_url, "aggregate": "min"}),
        now=EPOCH,
    )  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, concurrency=4)
    s = run_due_scorers(cfg, store, EPOCH + timedelta(days=1)).scorers[0]
    assert (s.scored, s.errors) == (10, 0) and s.cost_usd > 0
    rows = mlflow_db.assessments()
    assert len(rows) == 10 and {r[2] for r in rows} == {"quality@v1"}
    infos = [TracingClient(mlflow_db.uri).get_trace_info(r[0]) for r in rows]
    values = []
    for info in infos:
        a = next(a for a in info.assessments if a.name == "quality")
        assert a.source.source_type == "LLM_JUDGE"
        assert float(a.metadata["mlflow.assessment.judgeCost"]) > 0
        assert a.metadata["llmops.judge.safety"] in ("0", "1")
        values.append(a.value)
    assert sorted(values).count(0.0) == 4  # 2 empty answers, 2 with an e-mail address


def test_judge_cost_uses_the_price_overrides_of_the_config(
    judge_llm, mlflow_db, store, state_url, tmp_path
):
    """The runner and the backfill price the judge with ``pricing:``, not the bare catalog."""
    import sqlalchemy as sa
    from scoring_helpers import EPOCH_MS

    from mlflow_llmops.pricing import CostCalculator
    from mlflow_llmops.scoring import BackfillError, backfill
    from mlflow_llmops.scoring.registry import ledger_table

    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "models:\n"
        "  - {model: gpt-4o-mini, provider: openai, input_per_million_tokens: 1000,\n"
        "     output_per_million_tokens: 4000}\n"
        "  - {model: in-house-judge-7b, provider: vllm, input_per_million_tokens: 500,\n"
        "     output_per_million_tokens: 500}\n"
    )  # fmt: skip
    mlflow_db.load(make_traces(4))
    reg = ScorerRegistry(store)
    reg.register(ScorerSpec(name="quality", ref="judge", params={"base_url": judge_llm.base_url}),
                 now=EPOCH)  # fmt: skip
    reg.register(ScorerSpec(name="own", ref="judge", params={
        "base_url": judge_llm.base_url, "model": "in-house-judge-7b", "provider": "vllm"}),
        now=EPOCH)  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, pricing={"overrides_file": str(prices)})
    s = run_due_scorers(cfg, store, EPOCH + timedelta(days=1), names=["quality"]).scorers[0]
    assert (s.scored, s.errors) == (4, 0)
    catalog = CostCalculator.default()
    with store.engine.connect() as c:
        costs = dict(c.execute(sa.select(ledger_table.c.trace_id, ledger_table.c.cost_usd)
                               .where(ledger_table.c.scorer == "quality")).all())  # fmt: skip
    client = TracingClient(mlflow_db.uri)
    for tid, cost in costs.items():
        a = next(a for a in client.get_trace_info(tid).assessments if a.name == "quality")
        tin = int(a.metadata["mlflow.assessment.judgeInputTokens"])
        tout = int(a.metadata["mlflow.assessment.judgeOutputTokens"])
        assert cost == pytest.approx((tin * 1000 + tout * 4000) / 1e6)
        assert float(a.metadata["mlflow.assessment.judgeCost"]) == pytest.approx(cost)
        usage = {"input_tokens": tin, "output_tokens": tout}
        default = float(catalog.cost(model="gpt-4o-mini", provider="openai", usage=usage).total)
        assert cost > 100 * default  # the override, not the bundled price
    assert s.cost_usd == pytest.approx(sum(costs.values()))

    # a model only the overrides know: the backfill can estimate it and keep to a budget
    bare = config_for(mlflow_db.uri, state_url)
    with pytest.raises(BackfillError, match="has no price"):
        backfill(bare, store, scorer="own", max_cost_usd=1.0, progress=False)
    r = backfill(cfg, store, scorer="own", since_ms=EPOCH_MS, max_cost_usd=1.0, progress=False)
    assert (r.status, r.scored) == ("done", 4) and r.estimate_usd > 0
    with store.engine.connect() as c:
        own = c.execute(sa.select(sa.func.sum(ledger_table.c.cost_usd))
                        .where(ledger_table.c.scorer == "own")).scalar_one()  # fmt: skip
    assert own > 0 and r.spent_usd == pytest.approx(own)
