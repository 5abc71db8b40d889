"""The sampled-out path: a trace the head ratio drops is recorded light (no span input /
output serialisation) while the tail rules, the 100% GenAI metrics and the accounting
still see every call."""

from __future__ import annotations

import time

import mlflow
import mlflow.entities.span as mlflow_span_module
import pytest
from mlflow import MlflowClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tracing_helpers import identity_holds

from mlflow_llmops.core import keys
from mlflow_llmops.tracing import llm_call, request_context
from mlflow_llmops.tracing.processors import IO_OMITTED


def traces_of(handle):
    return mlflow.search_traces(
        locations=[handle.experiment_id], return_type="list", max_results=1000
    )


def metric_points(reader):
    out = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


_INPUTS, _OUTPUTS = "mlflow.spanInputs", "mlflow.spanOutputs"


def _serialised_values(monkeypatch) -> list:
    """Every value MLflow's span attribute serialiser is asked to JSON-encode."""
    seen: list = []
    real = mlflow_span_module.dump_span_attribute_value

    def counting(value):
        seen.append(value)
        return real(value)

    monkeypatch.setattr(mlflow_span_module, "dump_span_attribute_value", counting)
    return seen


class Marker:
    """An input value whose serialisation would show in the serialiser's calls."""


def _three_span(i: int, marker: Marker, *, fail: bool = False, sleep: float = 0.0) -> None:
    @mlflow.trace(name="request")
    def request(i: int, marker: Marker) -> int:
        with llm_call(model="gpt-4o", provider="openai", inputs={"m": marker}) as c:
            c.set_usage(input_tokens=1_000_000, output_tokens=10)
            c.set_output({"m": marker})
        with mlflow.start_span("tool", span_type="TOOL") as s:
            s.set_inputs({"m": marker})
            s.set_outputs(marker)
        if sleep:
            time.sleep(sleep)
        if fail:
            raise RuntimeError("injected")
        return i

    try:
        request(i, marker)
    except RuntimeError:
        pass


def test_head_dropped_trace_is_not_serialised_and_metrics_count_it(
    tracing, shared_sqlite_uri, monkeypatch
):
    reader = InMemoryMetricReader()
    h = tracing(
        "so-light", tracking_uri=shared_sqlite_uri, metric_readers=[reader],
        sampling={"ratio": 0.0, "tail": {"keep_errors": False}, "light_when_dropped": True},
    )  # fmt: skip
    seen = _serialised_values(monkeypatch)
    marker = Marker()
    for i in range(5):
        _three_span(i, marker)
    assert not any(v is marker or (isinstance(v, dict) and marker in v.values()) for v in seen), (
        "a head-dropped trace serialised span inputs/outputs"
    )
    assert h.flush(20)
    assert traces_of(h) == []
    st = h.stats()
    assert (st["created"], st["sampled_out"], st["kept"]) == (5, 5, 0)
    # the 100% metrics still count every LLM call, with tokens and the requested model
    dur = metric_points(reader)["gen_ai.client.operation.duration"]
    assert sum(p.count for p in dur) == 5
    assert {p.attributes["gen_ai.request.model"] for p in dur} == {"gpt-4o"}
    tokens = metric_points(reader)["gen_ai.client.token.usage"]
    assert sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == "input") == 5_000_000


def test_head_kept_traces_are_still_serialised(tracing, shared_sqlite_uri, monkeypatch):
    h = tracing("so-full", tracking_uri=shared_sqlite_uri, sampling={"ratio": 1.0})
    seen = _serialised_values(monkeypatch)
    _three_span(0, Marker())
    assert any(isinstance(v, dict) and "m" in v for v in seen)
    assert h.flush(20)
    (t,) = traces_of(h)
    assert IO_OMITTED not in t.info.trace_metadata
    tool = next(s for s in t.data.spans if s.name == "tool")
    assert tool.inputs is not None


def test_tail_rules_keep_head_dropped_traces_with_their_spans(tracing, shared_sqlite_uri):
    h = tracing(
        "so-tail", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 0.0, "light_when_dropped": True,
                  "tail": {"keep_errors": True, "slower_than_ms": 150,
                                          "cost_above_usd": 1.0, "tags": ["vip"]}},
    )  # fmt: skip
    _three_span(0, Marker(), fail=True)  # tail:error
    _three_span(1, Marker(), sleep=0.2)  # tail:slow (and expensive: error/slow come first)

    @mlflow.trace(name="cheap")
    def cheap(expensive: bool, tag: bool) -> None:
        if tag:
            mlflow.update_current_trace(tags={"vip": "1"})
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": "x"}) as c:
            c.set_usage(input_tokens=1_000_000 if expensive else 10, output_tokens=5)

    cheap(True, False)  # tail:cost
    cheap(False, True)  # tail:tag
    cheap(False, False)  # sampled out
    assert h.flush(20)
    kept = {t.info.trace_metadata[keys.SAMPLING]: t for t in traces_of(h)}
    assert set(kept) == {"tail:error", "tail:slow", "tail:cost", "tail:tag"}
    client = MlflowClient(shared_sqlite_uri)
    for reason, t in kept.items():
        full = client.get_trace(t.info.trace_id)
        roots = [s.name for s in full.data.spans if s.parent_id is None]
        three = reason in ("tail:error", "tail:slow")
        assert roots == (["request"] if three else ["cheap"])
        assert len(full.data.spans) == (3 if three else 2)
        # what a head-dropped, tail-kept trace contains: everything but span inputs/outputs
        assert full.info.trace_metadata[IO_OMITTED] == "head_sampled_out"
        for s in full.data.spans:
            assert _INPUTS not in s.attributes and _OUTPUTS not in s.attributes
        llm = next(s for s in full.data.spans if s.span_type == "CHAT_MODEL")
        assert llm.attributes[keys.TOKEN_USAGE]["input_tokens"] in (10, 1_000_000)
        assert llm.attributes[keys.MODEL] == "gpt-4o"
    err = client.get_trace(kept["tail:error"].info.trace_id)
    root = next(s for s in err.data.spans if s.parent_id is None)
    assert root.status.status_code == "ERROR"
    assert any(e.name == "exception" for e in root.events)
    st = h.stats()
    assert (st["created"], st["kept"], st["sampled_out"]) == (5, 4, 1)


def test_by_default_a_tail_kept_error_trace_keeps_its_inputs_and_outputs(
    tracing, shared_sqlite_uri
):
    """Light recording is opt-in: an error kept by a tail rule is what on-call debugs."""
    h = tracing("so-default", tracking_uri=shared_sqlite_uri,
                sampling={"ratio": 0.0, "tail": {"keep_errors": True}})  # fmt: skip
    _three_span(0, Marker(), fail=True)
    _three_span(1, Marker())  # sampled out
    assert h.flush(20)
    (t,) = traces_of(h)
    full = MlflowClient(shared_sqlite_uri).get_trace(t.info.trace_id)
    assert IO_OMITTED not in full.info.trace_metadata
    assert next(s for s in full.data.spans if s.name == "tool").inputs is not None
    assert (h.stats()["kept"], h.stats()["sampled_out"]) == (1, 1)


def test_route_ratio_at_trace_start_and_accounting_identity(tracing, shared_sqlite_uri):
    h = tracing(
        "so-routes", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 1.0, "routes": {"/health": 0.0}, "tail": {"keep_errors": False},
                  "light_when_dropped": True},
    )  # fmt: skip
    for i in range(6):
        with request_context(route="/health" if i % 2 else "/chat"):
            _three_span(i, Marker())
    report = h.shutdown(20)
    kept = traces_of(h)
    assert len(kept) == 3
    for t in kept:  # routes with ratio 1 are recorded in full
        assert IO_OMITTED not in t.info.trace_metadata
        assert all(s.inputs is not None for s in t.data.spans if s.name == "tool")
    assert report["sampled_out"] == 3 and report["sampled_out_by_route"] == {"/health": 3}
    assert identity_holds(report)


@pytest.mark.parametrize("mode", ["light_when_dropped", "minimal_when_dropped"])
def test_autologged_calls_in_head_dropped_traces_are_measured_and_tail_kept(
    tracing, shared_sqlite_uri, mode
):
    """OpenAI autolog records light (and minimal) too: metrics label the requested model
    from the raw inputs (no serialised inputs exist), and a failed call is kept by
    ``keep_errors``; the minimal record keeps the inputs of a trace the tail keeps."""
    import openai

    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer, Fault

    reader = InMemoryMetricReader()
    cfg = FakeLLMConfig(response_models={"gpt-4o": "gpt-4o-2024-08-06"})
    with FakeLLMServer(cfg) as srv:
        h = tracing(
            f"so-autolog-{mode}", tracking_uri=shared_sqlite_uri, metric_readers=[reader],
            sampling={"ratio": 0.0, mode: True},
        )  # fmt: skip
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
    assert sum(p.count for p in dur) == 3
    assert {p.attributes["gen_ai.request.model"] for p in dur} == {"gpt-4o"}
    assert h.flush(20)
    (t,) = traces_of(h)
    assert t.info.trace_metadata[keys.SAMPLING] == "tail:error"
    (span,) = t.data.spans
    assert span.status.status_code == "ERROR"
    if mode == "light_when_dropped":
        assert t.info.trace_metadata[IO_OMITTED] == "head_sampled_out" and span.inputs is None
    else:
        assert span.inputs is not None
        assert sorted(p.attributes.get("error.type") or "" for p in dur)[0] == ""
    assert (h.stats()["created"], h.stats()["sampled_out"]) == (3, 2)
