from __future__ import annotations

from datetime import timedelta

from mlflow.tracing.client import TracingClient
from scoring_helpers import EPOCH, EPOCH_MS, config_for, make_traces

from mlflow_llmops.scoring import (
    ScorerRegistry,
    ScorerSpec,
    quality_aggregates,
    run_due_scorers,
    sampled,
)
from mlflow_llmops.testing.seed import SeedTrace, seed_traces

NOW = EPOCH + timedelta(days=1)


def _register(store, *specs: ScorerSpec) -> ScorerRegistry:
    reg = ScorerRegistry(store)
    for s in specs:
        reg.register(s, now=EPOCH)
    return reg


def test_scores_new_traces_as_mlflow_assessments(mlflow_db, store, state_url):
    mlflow_db.load(make_traces(10))
    _register(
        store,
        ScorerSpec(name="empty", ref="builtin:empty_answer"),
        ScorerSpec(name="lat", ref="builtin:latency_budget", params={"max_ms": 700}),
        ScorerSpec(name="paris", ref="scoring_helpers:mentions_paris"),
        ScorerSpec(name="longish", ref="scoring_helpers:min_length", params={"n": 10}),
        ScorerSpec(name="broken", ref="scoring_helpers:exploding"),
    )
    cfg = config_for(mlflow_db.uri, state_url)
    report = run_due_scorers(cfg, store, NOW)
    by = {s.scorer: s for s in report.scorers}
    assert {n: by[n].scored for n in by} == {
        "empty": 10, "lat": 10, "paris": 10, "longish": 10, "broken": 0}  # fmt: skip
    assert by["broken"].errors == 10 and "boom" in by["broken"].error_samples[0]

    rows = mlflow_db.assessments()
    assert len(rows) == 40
    assert {r[2] for r in rows} == {"empty@v1", "lat@v1", "paris@v1", "longish@v1"}
    # one trace in detail: source, version metadata, rationale
    tid = rows[0][0]
    info = TracingClient(mlflow_db.uri).get_trace_info(tid)
    lat = next(a for a in info.assessments if a.name == "lat")
    assert lat.source.source_type == "CODE" and lat.source.source_id == "lat@v1"
    assert lat.metadata["llmops.scorer"] == "lat"
    assert lat.metadata["llmops.scorer_version"] == "1"
    assert "budget 700 ms" in lat.rationale

    aggs = {a.scorer: a for a in quality_aggregates(store, EPOCH_MS, EPOCH_MS + 86_400_000)}
    assert aggs["empty"].pass_rate == 0.8  # answers 1 and 6 are empty
    assert aggs["lat"].pass_rate == 0.6  # latencies 200/600 pass (i % 4 < 2), 1000/1400 fail
    assert aggs["paris"].scored == 10 and aggs["paris"].pass_rate == 0.2
    assert aggs["broken"].errors == 10 and aggs["broken"].pass_rate is None
    buckets = quality_aggregates(store, EPOCH_MS, EPOCH_MS + 10_000, "empty", bucket_ms=5_000)
    assert [(b.window_start_ms - EPOCH_MS, b.scored) for b in buckets] == [(0, 5), (5000, 5)]

    # incremental: the next cycle scores only what is new
    again = run_due_scorers(cfg, store, NOW + timedelta(minutes=5))
    assert again.scored == 0 and again.errors == 0
    now_ms = EPOCH_MS + 86_400_000
    mlflow_db.load(make_traces(3, start_ms=now_ms + 60_000))  # new traffic
    mlflow_db.load(make_traces(1, start_ms=now_ms - 100_000))  # arrived late, behind the mark
    third = run_due_scorers(cfg, store, NOW + timedelta(minutes=10), names=["empty", "lat"])
    assert [s.scored for s in third.scorers] == [4, 4]
    assert len(mlflow_db.assessments()) == 48
    rest = run_due_scorers(cfg, store, NOW + timedelta(minutes=20))
    assert {s.scorer: s.scored for s in rest.scorers if s.scored} == {"paris": 4, "longish": 4}
    assert run_due_scorers(cfg, store, NOW + timedelta(minutes=30)).scored == 0


def test_schedule_completion_buffer_and_sampling(mlflow_db, store, state_url):
    base = EPOCH_MS
    mlflow_db.load(make_traces(40, start_ms=base, step_ms=60_000))  # one a minute for 40 min
    _register(store, ScorerSpec(name="half", ref="builtin:refusal", sample_rate=0.5,
                                schedule_s=600))  # fmt: skip
    cfg = config_for(mlflow_db.uri, state_url, completion_buffer=600)
    t = EPOCH + timedelta(minutes=30)  # traces of the last 10 minutes are still "open"
    first = run_due_scorers(cfg, store, t).scorers[0]
    assert first.considered == 20  # minutes 0..19
    assert first.watermark_ms == base + 20 * 60_000
    assert run_due_scorers(cfg, store, t + timedelta(minutes=5)).not_due == ["half"]
    second = run_due_scorers(cfg, store, t + timedelta(minutes=20)).scorers[0]
    assert second.considered == 20  # minutes 20..39
    expected = [tid for tid, _ in _trace_ids(mlflow_db) if sampled(tid, "half", 0.5)]
    scored = {r[0] for r in mlflow_db.assessments()}
    assert scored == set(expected)
    assert first.scored + second.scored == len(expected)
    assert first.sampled_out + second.sampled_out == 40 - len(expected)


def _trace_ids(db):
    import sqlalchemy as sa

    e = sa.create_engine(db.uri)
    with e.connect() as c:
        rows = list(c.execute(sa.text("SELECT request_id, timestamp_ms FROM trace_info")))
    e.dispose()
    return rows


def test_sampling_is_deterministic_and_proportional():
    ids = [f"tr-{i:032x}" for i in range(4000)]
    a = [sampled(t, "judge", 0.25) for t in ids]
    assert a == [sampled(t, "judge", 0.25) for t in ids]
    assert 0.22 < sum(a) / len(a) < 0.28
    b = [sampled(t, "other", 0.25) for t in ids]
    assert a != b  # independent per scorer
    # a higher rate keeps a superset of traces: raising the rate never drops scored ones
    assert all(sampled(t, "judge", 0.5) for t, keep in zip(ids, a, strict=True) if keep)


def test_filter_that_matches_nothing(mlflow_db, store, state_url):
    mlflow_db.load(make_traces(5))
    _register(store, ScorerSpec(name="e", ref="builtin:empty_answer",
                                filter_string="tags.team = 'nobody'"))  # fmt: skip
    s = run_due_scorers(config_for(mlflow_db.uri, state_url), store, NOW).scorers[0]
    assert (s.considered, s.scored, s.errors, s.problem) == (0, 0, 0, None)
    assert mlflow_db.assessments() == []


def test_new_version_rescores_and_broken_ref_is_reported(mlflow_db, store, state_url):
    mlflow_db.load(make_traces(5))
    reg = _register(store, ScorerSpec(name="tok", ref="builtin:token_budget",
                                      params={"max_tokens": 150}))  # fmt: skip
    reg.register(ScorerSpec(name="missing", ref="no_such_module:fn"), now=EPOCH)
    cfg = config_for(mlflow_db.uri, state_url)
    r = run_due_scorers(cfg, store, NOW)
    by = {s.scorer: s for s in r.scorers}
    assert by["tok"].scored == 5
    assert "cannot import module 'no_such_module'" in by["missing"].problem
    reg.update("tok", now=NOW, params={"max_tokens": 1000})
    r2 = run_due_scorers(cfg, store, NOW + timedelta(seconds=1), names=["tok"])
    assert (r2.scorers[0].version, r2.scorers[0].scored) == (2, 5)
    sources = sorted(r[2] for r in mlflow_db.assessments())
    assert sources == ["tok@v1"] * 5 + ["tok@v2"] * 5
    v = {a.version: a for a in quality_aggregates(store, 0, EPOCH_MS + 10**9, "tok")}
    assert v[2].pass_rate == 1.0 and v[1].pass_rate < 1.0


def test_traces_logged_through_mlflow_api(mlflow_db, store, state_url):
    seed_traces(mlflow_db.uri, "exp", [
        SeedTrace(timestamp_ms=EPOCH_MS + i, request="q", response=resp)
        for i, resp in enumerate(["fine answer", "", "call 555-123-4567 now"])
    ])  # fmt: skip
    _register(store, ScorerSpec(name="pii", ref="builtin:pii_leak"),
              ScorerSpec(name="empty", ref="builtin:empty_answer"))  # fmt: skip
    r = run_due_scorers(config_for(mlflow_db.uri, state_url), store, NOW)
    assert [s.scored for s in r.scorers] == [3, 3]
    aggs = {a.scorer: a for a in quality_aggregates(store, EPOCH_MS, EPOCH_MS + 1000)}
    assert aggs["pii"].passed == 2 and aggs["empty"].passed == 2
