"""The minimal sampled-out path (``sampling.minimal_when_dropped``): MLflow sees a no-op
span for a trace the head ratio drops, as under its own sampling; the tail rules, the 100%
GenAI metrics and the accounting still see every call, and a trace a tail rule keeps is
stored complete (replayed through MLflow's span path)."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow import MlflowClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_sampled_out import Marker, _serialised_values, metric_points, traces_of
from tracing_helpers import identity_holds

from mlflow_llmops.core import keys
from mlflow_llmops.tracing import llm_call, request_context
from mlflow_llmops.tracing.processors import IO_OMITTED

_INPUTS, _OUTPUTS = "mlflow.spanInputs", "mlflow.spanOutputs"


def _three_span(i: int, *, fail: bool = False, sleep: float = 0.0, marker=None) -> None:
    @mlflow.trace(name="request")
    def request(i: int) -> int:
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": f"question {i}"}) as c:
            c.set_usage(input_tokens=1_000_000, output_tokens=10)
            c.set_output({"a": f"answer {i}"})
        with mlflow.start_span("tool", span_type="TOOL") as s:
            s.set_inputs({"m": marker if marker is not None else i})
            s.set_outputs({"r": i})
            s.set_attribute("k", "v")
        if sleep:
            time.sleep(sleep)
        if fail:
            raise RuntimeError(f"injected {i}")
        return i

    try:
        request(i)
    except RuntimeError:
        pass


def test_dropped_traces_touch_no_mlflow_span_and_metrics_count_every_call(
    tracing, shared_sqlite_uri, monkeypatch
):
    from mlflow.tracing.trace_manager import InMemoryTraceManager

    reader = InMemoryMetricReader()
    h = tracing(
        "min-drop", tracking_uri=shared_sqlite_uri, metric_readers=[reader],
        sampling={"ratio": 0.0, "minimal_when_dropped": True},
    )  # fmt: skip
    seen = _serialised_values(monkeypatch)
    marker = Marker()
    registered = []
    real_register = InMemoryTraceManager.register_span
    monkeypatch.setattr(
        InMemoryTraceManager,
        "register_span",
        lambda self, span: (registered.append(span), real_register(self, span))[1],
    )
    for i in range(5):
        _three_span(i, marker=marker)
    assert registered == [], "a head-dropped trace went through MLflow's span machinery"
    assert not any(isinstance(v, dict) and marker in v.values() for v in seen)
    assert h.flush(20)
    assert traces_of(h) == []
    st = h.stats()
    assert (st["created"], st["sampled_out"], st["kept"]) == (5, 5, 0)
    dur = metric_points(reader)["gen_ai.client.operation.duration"]
    assert sum(p.count for p in dur) == 5
    assert {p.attributes["gen_ai.request.model"] for p in dur} == {"gpt-4o"}
    assert {p.attributes["gen_ai.provider.name"] for p in dur} == {"openai"}
    tokens = metric_points(reader)["gen_ai.client.token.usage"]
    assert sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == "input") == 5_000_000


@pytest.mark.parametrize("omit_io", [False, True])
def test_tail_kept_head_dropped_traces_are_stored_complete(tracing, shared_sqlite_uri, omit_io):
    reader = InMemoryMetricReader()
    h = tracing(
        f"min-tail-{omit_io}", tracking_uri=shared_sqlite_uri, metric_readers=[reader],
        sampling={"ratio": 0.0, "minimal_when_dropped": True, "light_when_dropped": omit_io,
                  "tail": {"keep_errors": True, "slower_than_ms": 150,
                           "cost_above_usd": 1.0, "tags": ["vip"]}},
    )  # fmt: skip
    t0 = time.time_ns()
    _three_span(0, fail=True)  # tail:error
    _three_span(1, sleep=0.2)  # tail:slow

    @mlflow.trace(name="cheap")
    def cheap(expensive: bool, tag: bool) -> None:
        if tag:
            mlflow.update_current_trace(tags={"vip": "1"}, metadata={"m": "x"})
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": "x"}) as c:
            c.set_usage(input_tokens=1_000_000 if expensive else 10, output_tokens=5)

    with request_context(user="u1", route="/chat"):
        cheap(True, False)  # tail:cost
    cheap(False, True)  # tail:tag
    cheap(False, False)  # sampled out
    assert h.flush(20)
    kept = {t.info.trace_metadata[keys.SAMPLING]: t for t in traces_of(h)}
    assert set(kept) == {"tail:error", "tail:slow", "tail:cost", "tail:tag"}
    client = MlflowClient(shared_sqlite_uri)
    for reason, t in kept.items():
        full = client.get_trace(t.info.trace_id)
        assert full.info.trace_metadata[keys.SAMPLE_WEIGHT] == "1"
        roots = [s for s in full.data.spans if s.parent_id is None]
        three = reason in ("tail:error", "tail:slow")
        assert [r.name for r in roots] == (["request"] if three else ["cheap"])
        assert len(full.data.spans) == (3 if three else 2)
        ids = {s.span_id for s in full.data.spans}
        assert all(s.parent_id in ids for s in full.data.spans if s.parent_id is not None)
        for s in full.data.spans:  # the recorded times, not the replay's
            assert t0 <= s.start_time_ns <= s.end_time_ns
        llm = next(s for s in full.data.spans if s.span_type == "CHAT_MODEL")
        assert llm.attributes[keys.TOKEN_USAGE]["input_tokens"] in (10, 1_000_000)
        assert llm.attributes[keys.MODEL] == "gpt-4o"
        if omit_io:
            assert full.info.trace_metadata[IO_OMITTED] == "head_sampled_out"
            assert all(_INPUTS not in s.attributes for s in full.data.spans)
        else:
            assert IO_OMITTED not in full.info.trace_metadata
            assert llm.inputs is not None
        if three:
            tool = next(s for s in full.data.spans if s.name == "tool")
            assert tool.attributes["k"] == "v"
            n = 0 if reason == "tail:error" else 1
            expected = (None, None) if omit_io else ({"m": n}, {"r": n})
            assert (tool.inputs, tool.outputs) == expected
    err = client.get_trace(kept["tail:error"].info.trace_id)
    root = next(s for s in err.data.spans if s.parent_id is None)
    assert root.status.status_code == "ERROR"
    assert err.info.state.value == "ERROR"
    assert any(e.name == "exception" for e in root.events)
    slow = client.get_trace(kept["tail:slow"].info.trace_id)
    assert slow.info.execution_duration >= 200
    if not omit_io:
        assert next(s for s in slow.data.spans if s.parent_id is None).outputs == 1
    tag = client.get_trace(kept["tail:tag"].info.trace_id)
    assert tag.info.tags["vip"] == "1" and tag.info.trace_metadata["m"] == "x"
    cost = client.get_trace(kept["tail:cost"].info.trace_id)
    assert cost.info.trace_metadata[keys.ROUTE] == "/chat"
    assert cost.info.trace_metadata.get("mlflow.trace.user") == "u1"
    # every LLM call measured once: the replay does not count again
    dur = metric_points(reader)["gen_ai.client.operation.duration"]
    assert sum(p.count for p in dur) == 5
    assert {p.attributes.get("error.type") for p in dur} == {None}
    report = h.shutdown(20)
    assert (report["created"], report["kept"], report["sampled_out"]) == (5, 4, 1)
    assert identity_holds(report)


def test_route_ratio_at_trace_start_and_accountingidentity_holds(tracing, shared_sqlite_uri):
    h = tracing(
        "min-routes", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 1.0, "routes": {"/health": 0.0}, "tail": {"keep_errors": False},
                  "minimal_when_dropped": True},
    )  # fmt: skip
    for i in range(6):
        with request_context(route="/health" if i % 2 else "/chat"):
            _three_span(i)
    report = h.shutdown(20)
    kept = traces_of(h)
    assert len(kept) == 3
    for t in kept:
        assert t.info.trace_metadata[keys.ROUTE] == "/chat"
        assert all(s.inputs is not None for s in t.data.spans if s.name == "tool")
    assert report["sampled_out"] == 3 and report["sampled_out_by_route"] == {"/health": 3}
    assert identity_holds(report)


def test_head_ratio_keeps_its_share_recorded_in_full(tracing, shared_sqlite_uri):
    """Traces the head keeps take MLflow's normal path, with the weight of the ratio."""
    h = tracing(
        "min-ratio", tracking_uri=shared_sqlite_uri,
        sampling={"ratio": 0.5, "tail": {"keep_errors": False}, "minimal_when_dropped": True},
    )  # fmt: skip
    for i in range(200):
        _three_span(i)
    report = h.shutdown(20)
    assert report["created"] == 200 and identity_holds(report)
    assert 60 <= report["kept"] <= 140
    for t in traces_of(h)[:5]:
        assert t.info.trace_metadata[keys.SAMPLING] == "head"
        assert t.info.trace_metadata[keys.SAMPLE_WEIGHT] == "2"
        assert len(t.data.spans) == 3


def test_shutdown_puts_mlflow_back(tracing, shared_sqlite_uri):
    import mlflow.tracing.fluent as fluent
    from mlflow.entities import NoOpSpan

    real_update = mlflow.update_current_trace
    h = tracing("min-restore", tracking_uri=shared_sqlite_uri,
                sampling={"ratio": 0.0, "minimal_when_dropped": True})  # fmt: skip
    assert fluent.NoOpSpan is not NoOpSpan
    h.shutdown(10)
    assert fluent.NoOpSpan is NoOpSpan and mlflow.update_current_trace is real_update
    assert fluent.update_current_trace is real_update


def test_other_span_apis_record_into_a_kept_light_trace(tracing, shared_sqlite_uri):
    """``get_current_active_span``, ``start_span_no_context`` under a no-op parent and a
    traced generator all land in the replayed trace."""
    h = tracing("min-apis", tracking_uri=shared_sqlite_uri,
                sampling={"ratio": 0.0, "minimal_when_dropped": True})  # fmt: skip

    @mlflow.trace(name="gen")
    def gen():
        yield 1
        yield 2

    @mlflow.trace(name="root")
    def root() -> None:
        mlflow.get_current_active_span().set_attribute("seen", "yes")
        parent = mlflow.get_current_active_span()
        child = mlflow.start_span_no_context("manual", parent_span=parent, inputs={"x": 1})
        child.end(outputs={"y": 2})
        assert list(gen()) == [1, 2]
        raise ValueError("boom")

    with pytest.raises(ValueError):
        root()
    assert h.flush(20)
    (t,) = traces_of(h)
    full = MlflowClient(shared_sqlite_uri).get_trace(t.info.trace_id)
    by_name = {s.name: s for s in full.data.spans}
    assert set(by_name) == {"root", "manual", "gen"}
    assert by_name["root"].attributes["seen"] == "yes"
    assert by_name["manual"].parent_id == by_name["root"].span_id
    assert (by_name["manual"].inputs, by_name["manual"].outputs) == ({"x": 1}, {"y": 2})
    assert by_name["gen"].outputs == [1, 2]
    assert len([e for e in by_name["gen"].events if e.name.startswith("mlflow.chunk")]) == 2
    assert by_name["root"].status.status_code == "ERROR"


def test_a_failed_replay_is_counted(tracing, shared_sqlite_uri, monkeypatch):
    h = tracing("min-fail", tracking_uri=shared_sqlite_uri,
                sampling={"ratio": 0.0, "minimal_when_dropped": True})  # fmt: skip

    def broken(span, s):
        raise RuntimeError("replay broke")

    monkeypatch.setattr(h.recorder, "_end", broken)
    _three_span(0, fail=True)  # kept by keep_errors; the replay fails
    report = h.shutdown(20)
    assert (report["created"], report["failed"], report["exported"]) == (1, 1, 0)
    assert identity_holds(report)


def test_a_kept_root_with_its_own_destination_lands_there(tracing, shared_sqlite_uri):
    from mlflow.entities.trace_location import MlflowExperimentLocation

    h = tracing("min-dest", tracking_uri=shared_sqlite_uri,
                sampling={"ratio": 0.0, "minimal_when_dropped": True})  # fmt: skip
    other = MlflowClient(shared_sqlite_uri).create_experiment("min-dest-other")
    with pytest.raises(RuntimeError):
        with mlflow.start_span("r", trace_destination=MlflowExperimentLocation(other)):
            raise RuntimeError("kept by keep_errors")
    assert h.flush(20)
    assert traces_of(h) == []
    (t,) = mlflow.search_traces(locations=[other], return_type="list")
    assert t.info.trace_metadata[keys.SAMPLING] == "tail:error"
