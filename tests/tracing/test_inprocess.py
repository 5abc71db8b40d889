"""In-process end to end on a real SQLite MLflow store: metadata, redaction, the manual
helper, OpenAI autolog against the fake LLM server, sampling, GenAI metrics."""

from __future__ import annotations

import json
import time

import mlflow
import pytest
from mlflow import MlflowClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mlflow_llmops.core import keys
from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer, Fault
from mlflow_llmops.tracing import llm_call, request_context
from mlflow_llmops.tracing.metrics import DURATION_BUCKETS, TOKEN_BUCKETS

ALLOWED_LABELS = {
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "error.type",
    "gen_ai.token.type",
}


def traces_of(handle):
    return mlflow.search_traces(
        locations=[handle.experiment_id], return_type="list", max_results=1000
    )


def metric_points(reader):
    out = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


def test_metadata_redaction_and_manual_helper(tracing, shared_sqlite_uri):
    uri = shared_sqlite_uri
    h = tracing(
        "meta", "checkout-bot", tracking_uri=uri,
        metadata={"environment": "prod", "service_version": "1.4.2", "deployment": "blue",
                  "git_commit": "abc123"},
    )  # fmt: skip

    @mlflow.trace(name="handle")
    def handle(q: str) -> str:
        with llm_call(model="claude-sonnet-4", provider="anthropic", inputs={"q": q}) as call:
            time.sleep(0.002)
            call.first_token()
            call.set_usage(
                input_tokens=100, output_tokens=40, cache_read_tokens=800,
                cache_write_tokens=50, reasoning_tokens=10,
                input_excludes_cache=True, output_excludes_reasoning=True,
            )  # fmt: skip
            call.set_service_tier("priority")
            call.set_output("call me at +1 415 555 2671")
        return "ok"

    with request_context(user="u-7", session="s-9", task_type="refund", route="/r", tenant="acme"):
        handle("my card is 4111 1111 1111 1111, mail jane@example.com")
    assert h.flush(20)
    (t,) = traces_of(h)
    m = t.info.trace_metadata
    expected = {
        keys.USER: "u-7", keys.SESSION: "s-9", keys.TASK_TYPE: "refund", keys.ROUTE: "/r",
        keys.TENANT: "acme", keys.ENVIRONMENT: "prod", keys.SERVICE: "checkout-bot",
        keys.SERVICE_VERSION: "1.4.2", keys.DEPLOYMENT: "blue", keys.GIT_COMMIT: "abc123",
        keys.SAMPLE_WEIGHT: "1", keys.SAMPLING: "always",
    }  # fmt: skip
    assert {k: m.get(k) for k in expected} == expected
    assert m[keys.HOST]
    llm = next(s for s in t.data.spans if s.span_type == "CHAT_MODEL")
    a = llm.attributes
    assert a[keys.MODEL] == "claude-sonnet-4" and a[keys.PROVIDER] == "anthropic"
    assert a[keys.TOKEN_USAGE] == {
        "input_tokens": 950, "output_tokens": 50, "total_tokens": 1000,
        "cache_read_input_tokens": 800, "cache_creation_input_tokens": 50,
    }  # fmt: skip
    assert a[keys.REASONING_TOKENS] == 10 and a[keys.SERVICE_TIER] == "priority"
    assert a[keys.TTFT_MS] >= 2
    # redaction: span inputs, outputs and the trace preview
    blob = json.dumps([s.to_dict() for s in t.data.spans]) + (t.info.request_preview or "")
    assert "4111" not in blob and "jane@example.com" not in blob and "555 2671" not in blob
    assert "[REDACTED:card]" in t.info.request_preview
    assert "[REDACTED:phone]" in json.dumps(llm.outputs)
    st = h.stats()
    assert (st["created"], st["exported"], st["dropped"], st["queued"]) == (1, 1, 0, 0)


def test_manual_helper_decorator_and_errors(tracing, shared_sqlite_uri):
    h = tracing("deco", tracking_uri=shared_sqlite_uri)

    @llm_call(model="qwen-max", provider="dashscope")
    def call_model(prompt: str) -> dict:
        return {"text": "hi", "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                        "prompt_tokens_details": {"cached_tokens": 4}}}  # fmt: skip

    @llm_call(model="qwen-max", provider="dashscope")
    def broken(prompt: str) -> dict:
        raise TimeoutError("upstream timed out")

    call_model("hello")
    with pytest.raises(TimeoutError):
        broken("x")
    with pytest.raises(ValueError, match="input_tokens must be a non-negative int"):
        with llm_call(model="m", provider="p") as c:
            c.set_usage(input_tokens=-1)
    with pytest.raises(ValueError, match="model and provider are required"):
        with llm_call(model="", provider="p"):
            pass
    assert h.flush(20)
    ts = {t.data.spans[0].name: t for t in traces_of(h)}
    ok = ts["call_model"].data.spans[0]
    assert ok.attributes[keys.TOKEN_USAGE] == {
        "input_tokens": 12, "output_tokens": 3, "total_tokens": 15, "cache_read_input_tokens": 4,
    }  # fmt: skip
    assert ok.inputs == {"prompt": "hello"}
    err = ts["broken"]
    assert err.info.state.value == "ERROR"


def test_openai_autolog_reasoning_enrichment_errors_and_metrics(tracing, shared_sqlite_uri):
    import openai

    reader = InMemoryMetricReader()
    cfg = FakeLLMConfig(reasoning_tokens=9, cached_ratio=0.5)
    with FakeLLMServer(cfg) as srv:
        h = tracing(
            "autolog", tracking_uri=shared_sqlite_uri, metric_readers=[reader],
            sampling={"ratio": 0.0, "tail": {"keep_errors": True}},
        )  # fmt: skip
        mlflow.openai.autolog()
        try:
            client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)

            @mlflow.trace(name="ask")
            def ask(i: int) -> str:
                r = client.chat.completions.create(
                    model="o4-mini", messages=[{"role": "user", "content": f"q{i}"}]
                )
                return r.choices[0].message.content

            srv.script(Fault(status=500), Fault(status=429))
            outcomes = []
            for i in range(12):
                try:
                    ask(i)
                    outcomes.append("ok")
                except openai.APIError:
                    outcomes.append("error")
        finally:
            mlflow.openai.autolog(disable=True)
    assert outcomes.count("error") == 2
    assert h.flush(20)
    kept = traces_of(h)
    # ratio 0.0: only the two failed calls are kept (tail rule), the rest counted
    assert len(kept) == 2 and all(t.info.state.value == "ERROR" for t in kept)
    assert {t.info.trace_metadata[keys.SAMPLING] for t in kept} == {"tail:error"}
    st = h.stats()
    assert (st["created"], st["kept"], st["sampled_out"]) == (12, 2, 10)
    # metrics cover all 12 calls, sampled or not, with spec buckets and bounded labels
    pts = metric_points(reader)
    dur = pts["gen_ai.client.operation.duration"]
    assert sum(p.count for p in dur) == 12
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in dur)
    assert {p.attributes.get("error.type") for p in dur} >= {None}
    assert any(p.attributes.get("error.type") for p in dur)
    tok = pts["gen_ai.client.token.usage"]
    assert all(tuple(p.explicit_bounds) == TOKEN_BUCKETS for p in tok)
    assert sum(p.count for p in tok if p.attributes["gen_ai.token.type"] == "input") == 10
    for p in dur + tok:
        assert set(p.attributes) <= ALLOWED_LABELS
        assert p.attributes["gen_ai.provider.name"] == "openai"
        assert p.attributes["gen_ai.request.model"] == "o4-mini"
    counters = {p.attributes["llmops.outcome"]: p.value for p in pts["llmops.traces"]}
    assert counters["sampled_out"] == 10 and counters["kept"] == 2


def test_metrics_label_the_requested_model_on_success_and_error(tracing, shared_sqlite_uri):
    """Providers answer with a dated snapshot; a failed call has no answer. Labelled by the
    response, error rate by model would split into two series that never meet."""
    import openai

    reader = InMemoryMetricReader()
    cfg = FakeLLMConfig(response_models={"gpt-4o": "gpt-4o-2024-08-06"})
    with FakeLLMServer(cfg) as srv:
        tracing("models", tracking_uri=shared_sqlite_uri, metric_readers=[reader])
        mlflow.openai.autolog()
        try:
            client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
            srv.script(Fault(status=500))
            for _ in range(3):
                try:
                    client.chat.completions.create(
                        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                    )
                except openai.APIError:
                    pass
        finally:
            mlflow.openai.autolog(disable=True)
    dur = metric_points(reader)["gen_ai.client.operation.duration"]
    by_outcome = {p.attributes.get("error.type"): p for p in dur}
    assert sum(p.count for p in dur) == 3 and set(by_outcome) == {None, "InternalServerError"}
    assert {p.attributes["gen_ai.request.model"] for p in dur} == {"gpt-4o"}
    assert by_outcome[None].attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert "gen_ai.response.model" not in by_outcome["InternalServerError"].attributes


def test_autologged_span_gets_reasoning_tokens_and_provider(tracing, shared_sqlite_uri):
    import openai

    with FakeLLMServer(FakeLLMConfig(reasoning_tokens=9)) as srv:
        h = tracing("enrich", tracking_uri=shared_sqlite_uri)
        mlflow.openai.autolog()
        try:
            client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
            client.chat.completions.create(
                model="o4-mini", messages=[{"role": "user", "content": "hello"}]
            )
        finally:
            mlflow.openai.autolog(disable=True)
    assert h.flush(20)
    (t,) = traces_of(h)
    llm = t.data.spans[0]
    assert llm.attributes[keys.REASONING_TOKENS] == 9
    assert llm.attributes[keys.PROVIDER] == "openai"
    assert llm.attributes[keys.MODEL] == "o4-mini"
    assert llm.attributes[keys.TOKEN_USAGE]["output_tokens"] >= 9


def test_sampling_end_to_end_counts_and_weights(tracing, shared_sqlite_uri):
    h = tracing(
        "sampling", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 0.5, "routes": {"/health": 0.0},
                  "tail": {"keep_errors": True, "slower_than_ms": 150}},
    )  # fmt: skip

    @mlflow.trace(name="req")
    def req(i: int, sleep: float = 0.0, fail: bool = False) -> int:
        if sleep:
            time.sleep(sleep)
        if fail:
            raise RuntimeError("x")
        return i

    for i in range(40):
        with request_context(route="/health"):
            req(i)
    for i in range(3):
        with request_context(route="/health"):
            req(i, sleep=0.2)
    for i in range(60):
        with request_context(route="/chat"):
            req(i)
    assert h.flush(20)
    kept = traces_of(h)
    health = [t.info.trace_metadata[keys.SAMPLING] for t in kept
              if t.info.trace_metadata[keys.ROUTE] == "/health"]  # fmt: skip
    assert health == ["tail:slow"] * 3
    head = [t for t in kept if t.info.trace_metadata[keys.SAMPLING] == "head"]
    assert all(t.info.trace_metadata[keys.ROUTE] == "/chat" for t in head)
    assert {t.info.trace_metadata[keys.SAMPLE_WEIGHT] for t in head} == {"2"}
    st = h.stats()
    assert st["created"] == 103 and st["kept"] == len(kept)
    assert st["sampled_out"] == 103 - len(kept)
    assert st["sampled_out_by_route"]["/health"] == 40
    # extrapolation: sum of weights over kept traces estimates the /chat volume
    est = sum(float(t.info.trace_metadata[keys.SAMPLE_WEIGHT]) for t in head)
    assert 30 <= est <= 90


def test_shutdown_is_bounded_and_restores_mlflow(tracing, shared_sqlite_uri):
    from mlflow.tracing.config import get_config

    seen = []

    def app_processor(span):  # the application's own span processor is kept and restored
        seen.append(span.name)

    mlflow.tracing.configure(span_processors=[app_processor])
    h = tracing("restore", tracking_uri=shared_sqlite_uri)

    @mlflow.trace
    def f() -> int:
        return 1

    f()
    assert seen == ["f"]
    t0 = time.monotonic()
    report = h.shutdown(5)
    assert time.monotonic() - t0 < 6
    assert report["exported"] == 1 and report["flushed"] is True
    assert h.shutdown(5) == report  # idempotent
    client = MlflowClient(tracking_uri=shared_sqlite_uri)
    assert len(client.search_traces(locations=[h.experiment_id])) == 1
    assert get_config().span_processors == [app_processor]
    mlflow.tracing.configure(span_processors=[])


def test_tail_rule_cost_above_prices_the_llm_spans(tracing, shared_sqlite_uri):
    # MLflow 3.17 sets no trace cost on the client for SQL/HTTP stores: the rule must price
    # the spans itself (model, provider, token usage; an explicit mlflow.llm.cost wins)
    h = tracing(
        "cost-tail", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 0.0, "tail": {"keep_errors": False, "cost_above_usd": 0.01}},
    )  # fmt: skip

    @mlflow.trace(name="req")
    def req(model: str, input_tokens: int) -> None:
        with llm_call(model=model, provider="openai") as c:
            c.set_usage(input_tokens=input_tokens, output_tokens=100)

    @mlflow.trace(name="agent")
    def agent() -> None:  # its own cost (half a cent) already covers the call inside
        with mlflow.start_span("plan", span_type="AGENT") as s:
            s.set_attribute("mlflow.llm.cost", {"input_cost": 0.004, "output_cost": 0.001,
                                                "total_cost": 0.005})  # fmt: skip
            with llm_call(model="gpt-4o", provider="openai") as c:
                c.set_usage(input_tokens=10_000, output_tokens=0)  # $0.025 on its own

    req("gpt-4o", 1_000_000)  # about $2.50: kept
    req("gpt-4o", 100)  # a fraction of a cent: sampled out
    req("my-private-model", 1_000_000)  # unpriced: no cost, so not kept by this rule
    agent()
    assert h.flush(20)
    kept = traces_of(h)
    assert len(kept) == 1, [t.info.trace_metadata.get(keys.SAMPLING) for t in kept]
    meta = kept[0].info.trace_metadata
    assert (meta[keys.SAMPLING], meta[keys.SAMPLE_WEIGHT]) == ("tail:cost", "1")
    llm = next(s for s in kept[0].data.spans if s.span_type == "CHAT_MODEL")
    assert llm.attributes[keys.TOKEN_USAGE]["input_tokens"] == 1_000_000
    st = h.stats()
    assert (st["created"], st["kept"], st["sampled_out"]) == (4, 1, 3)
    assert st["by_reason"] == {"tail:cost": 1}


def test_setup_keeps_mlflow_price_lookups_offline(tracing, shared_sqlite_uri, monkeypatch):
    from mlflow.environment_variables import MLFLOW_MODEL_CATALOG_URI

    monkeypatch.delenv("MLFLOW_MODEL_CATALOG_URI", raising=False)
    assert MLFLOW_MODEL_CATALOG_URI.get().startswith("https://")  # MLflow's default: remote
    tracing("offline", tracking_uri=shared_sqlite_uri)
    assert MLFLOW_MODEL_CATALOG_URI.get() == ""
    monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "file:///srv/price-mirror")  # user's choice
    tracing("offline", tracking_uri=shared_sqlite_uri)
    assert MLFLOW_MODEL_CATALOG_URI.get() == "file:///srv/price-mirror"
