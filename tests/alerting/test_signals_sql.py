"""SQL signals over the llmops_* views agree with an independent in-memory computation."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from seeded import NOON, as_events

from mlflow_llmops.alerting.catalog import PERCENTILES, SIGNALS
from mlflow_llmops.alerting.rules import SignalSpec
from mlflow_llmops.alerting.signals import (
    MemorySignalSource,
    SqlSignalSource,
    TraceEvent,
    weighted_percentile,
)
from mlflow_llmops.core.clock import to_ms

WINDOWS = [
    (NOON - timedelta(minutes=95), timedelta(minutes=5)),  # latency incident
    (NOON - timedelta(minutes=50), timedelta(minutes=10)),  # error incident
    (NOON - timedelta(hours=2), timedelta(hours=2)),  # everything today
]


@contextmanager
def trace_queries(engine):  # noqa: ANN001 - a SQLAlchemy engine
    """The statements on ``llmops_traces`` run while the block runs."""
    import sqlalchemy as sa

    seen: list[str] = []

    def count(conn, cursor, statement, *args):  # noqa: ANN001
        if "llmops_traces" in statement:
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def by_labels(values):
    return {v.key: (v.value, v.samples) for v in values}


@pytest.mark.parametrize(
    "signal",
    ["request_count", "error_rate", "latency_p50", "latency_p95", "latency_p99", "tokens",
     "input_tokens", "output_tokens"],
)  # fmt: skip
@pytest.mark.parametrize("group_by", [(), ("model",), ("route", "task_type")])
@pytest.mark.parametrize("cache", [False, True], ids=["direct", "cached-rows"])
def test_sql_matches_memory(seeded_sqlite, signal, group_by, cache):
    sql = SqlSignalSource(seeded_sqlite.engine, bucket_cache=cache)
    mem = MemorySignalSource(as_events(seeded_sqlite.traces))
    for end, window in WINDOWS:
        spec = SignalSpec(signal=signal, window=window, group_by=group_by)
        a, b = to_ms(end - window), to_ms(end)
        got, want = by_labels(sql.query(spec, a, b)), by_labels(mem.query(spec, a, b))
        assert got.keys() == want.keys()
        for k in want:
            assert got[k][0] == pytest.approx(want[k][0], rel=1e-9), (signal, k)
            assert got[k][1] == want[k][1]


def test_filters_and_experiment_scope(seeded_sqlite):
    end = NOON
    a, b = to_ms(end - timedelta(hours=1)), to_ms(end)
    spec = SignalSpec(signal="request_count", window="1h", where={"route": "/chat"})
    mem = MemorySignalSource(as_events(seeded_sqlite.traces))
    assert by_labels(SqlSignalSource(seeded_sqlite.engine).query(spec, a, b)) == by_labels(
        mem.query(spec, a, b)
    )
    other = SqlSignalSource(seeded_sqlite.engine, experiment_ids=["999"])
    assert other.query(spec, a, b) == []
    mine = SqlSignalSource(seeded_sqlite.engine, experiment_ids=[seeded_sqlite.exp_id])
    assert mine.query(spec, a, b) == mem.query(spec, a, b)


def test_cost_and_unpriced_share(seeded_sqlite):
    src = SqlSignalSource(seeded_sqlite.engine)
    a, b = to_ms(NOON - timedelta(hours=2)), to_ms(NOON)
    cost = by_labels(src.query(SignalSpec(signal="cost_usd", window="2h", group_by="model"),
                               a, b))  # fmt: skip
    assert cost[(("model", "gpt-4o"),)][0] > 0
    assert cost[(("model", "acme-internal-llm"),)][0] is None  # never counted as $0
    spiked = src.query(SignalSpec(signal="cost_usd", window="15m"), to_ms(NOON) - 900_000, b)
    calm = src.query(SignalSpec(signal="cost_usd", window="15m"), a, a + 900_000)
    assert spiked[0].value > 2 * calm[0].value  # the 4x token incident


def test_weighted_extrapolation_and_percentile():
    """Head-sampled traffic at 10% (weight 10) next to tail-kept slow traces (weight 1)."""
    fast = [TraceEvent(i, latency_ms=100.0, sample_weight=10.0) for i in range(9)]
    slow = [TraceEvent(100 + i, latency_ms=9000.0, status="ERROR") for i in range(9)]
    src = MemorySignalSource(fast + slow)
    q = lambda s: src.query(SignalSpec(signal=s, window="1m"), 0, 60_000)[0].value  # noqa: E731
    assert q("request_count") == 99
    assert q("error_rate") == pytest.approx(9 / 99)
    assert q("latency_p50") == 100.0  # unweighted it would be 9000
    assert weighted_percentile([(1, 1), (2, 1), (3, 1), (4, 1)], 0.5) == 2


def test_weighted_sql(seeded_sqlite):
    """The SQL percentile is weighted too: same answer as the in-memory definition."""
    src = SqlSignalSource(seeded_sqlite.engine)
    a, b = to_ms(NOON - timedelta(hours=2)), to_ms(NOON)
    stmt, params = src.build(SignalSpec(signal="latency_p95", window="2h"), a, b)
    assert "SUM(wt) OVER" in stmt.text and params["q"] == 0.95


def test_ttft_percentile(seeded_sqlite):
    src = SqlSignalSource(seeded_sqlite.engine)
    a, b = to_ms(NOON - timedelta(hours=1)), to_ms(NOON)
    got = src.query(SignalSpec(signal="ttft_p90", window="1h"), a, b)
    pairs = [(s.ttft_ms, 1.0) for t in seeded_sqlite.traces if a <= t.timestamp_ms < b
             for s in t.spans]  # fmt: skip
    assert got[0].samples == len(pairs)
    assert got[0].value == pytest.approx(weighted_percentile(pairs, 0.9))


def test_quality_and_feedback_signals(seeded_sqlite):
    src = SqlSignalSource(seeded_sqlite.engine)
    good = (to_ms(NOON - timedelta(minutes=40)), to_ms(NOON - timedelta(minutes=20)))
    bad = (to_ms(NOON - timedelta(minutes=20)), to_ms(NOON))
    mean = SignalSpec(signal="mean_score", window="20m", group_by="scorer")
    [g] = src.query(mean, *good)
    [b] = src.query(mean, *bad)
    assert g.labels == {"scorer": "correctness"} and g.value == pytest.approx(0.9)
    assert b.value == pytest.approx(0.3) and b.samples > 10
    rate = SignalSpec(signal="scorer_pass_rate", window="20m", scorer="correctness")
    assert src.query(rate, *good)[0].value == 1.0 and src.query(rate, *bad)[0].value == 0.0
    fail = SignalSpec(signal="scorer_fail_rate", window="20m", group_by="model")
    assert {v.value for v in src.query(fail, *bad)} == {1.0}
    human = src.query(SignalSpec(signal="feedback_score", window="40m"), good[0], bad[1])
    assert human[0].value == 0.0  # thumbs down only; scorer scores are not user feedback


#: every trace signal the catalog declares: a new declaration is checked here too
ADDITIVE = [s.name for s in SIGNALS if s.kind == "trace"]


@pytest.mark.parametrize("group_by", [(), ("model",), ("route", "task_type")])
def test_long_windows_from_cached_hourly_buckets_equal_the_direct_query(seeded_sqlite, group_by):
    """Burn-rate windows (6h, 3d) are summed from cached hourly buckets plus the live edges:
    the same numbers as one query over the whole window, tick after tick."""
    cached = SqlSignalSource(seeded_sqlite.engine, settle_ms=0)
    direct = SqlSignalSource(seeded_sqlite.engine, bucket_cache=False)
    for end in (NOON, NOON + timedelta(minutes=7), NOON + timedelta(minutes=8, seconds=30)):
        for window in ("6h", "26h", "3d"):
            for signal in ADDITIVE:
                spec = SignalSpec(
                    signal=signal,
                    window=window,
                    group_by=group_by,
                    latency_threshold_ms=3000 if signal == "latency_over" else None,
                )
                a, b = to_ms(end) - int(spec.window.total_seconds() * 1000), to_ms(end)
                got, want = by_labels(cached.query(spec, a, b)), by_labels(direct.query(spec, a, b))
                assert got.keys() == want.keys() and want, (signal, window)
                for k in want:
                    if want[k][0] is None:
                        assert got[k][0] is None
                    else:
                        assert got[k][0] == pytest.approx(want[k][0], rel=1e-9), (signal, k)
                    assert got[k][1] == want[k][1]
    assert cached._buckets  # the settled hours were cached, not re-read


def test_bucket_cache_sees_late_traces_after_its_ttl(seeded_sqlite, tmp_path):
    import shutil

    import sqlalchemy as sa

    from mlflow_llmops.testing.seed import SeedTrace, bulk_load

    db = tmp_path / "copy.db"
    shutil.copy(seeded_sqlite.url.removeprefix("sqlite:///"), db)
    engine = sa.create_engine(f"sqlite:///{db}")
    spec = SignalSpec(signal="request_count", window="6h")
    a, b = to_ms(NOON) - 6 * 3_600_000, to_ms(NOON)
    src = SqlSignalSource(engine, settle_ms=0, cache_ttl_s=3600)
    before = src.query(spec, a, b)[0].samples
    late = SeedTrace(timestamp_ms=to_ms(NOON - timedelta(hours=1, minutes=30)), latency_ms=50)
    bulk_load(engine, seeded_sqlite.exp_id, [late])  # lands in an hour already cached
    assert src.query(spec, a, b)[0].samples == before  # cached: not seen yet
    src.cache_ttl_s = 0  # the TTL has passed
    assert src.query(spec, a, b)[0].samples == before + 1
    engine.dispose()


def test_rules_of_one_tick_share_identical_queries(seeded_sqlite):

    from mlflow_llmops.alerting.engine import AlertEngine
    from mlflow_llmops.alerting.rules import parse_rules

    rules = parse_rules(
        [{"name": f"r{i}", "query": {"signal": "error_rate", "window": "5m"}, "threshold": t}
         for i, t in enumerate((0.05, 0.1, 0.2))],
        source="test",
    )  # fmt: skip
    src = SqlSignalSource(seeded_sqlite.engine)
    engine = AlertEngine(rules, src)
    with trace_queries(seeded_sqlite.engine) as seen:
        engine.evaluate(NOON)
        assert len(seen) == 1  # three rules, one query
        engine.evaluate(NOON)
        assert len(seen) == 2  # a new tick reads again (data may have changed)
    assert src.query(SignalSpec(signal="error_rate", window="5m"), to_ms(NOON) - 300_000,
                     to_ms(NOON))  # fmt: skip


ROW_SIGNALS = [*ADDITIVE, *(f"{p.name}_p{q}" for p in PERCENTILES for q in (50, 95, 99))]


@pytest.mark.parametrize("group_by", [(), ("model",), ("route", "task_type")])
def test_short_windows_from_cached_rows_equal_the_direct_query(seeded_sqlite, group_by):
    """Windows under two hours are computed from per-minute cached trace (for TTFT: span)
    rows plus the live minutes: the same numbers as the SQL query over the window, tick after tick,
    with ticks that do not fall on a whole minute."""
    cached = SqlSignalSource(seeded_sqlite.engine, row_settle_ms=0)
    direct = SqlSignalSource(seeded_sqlite.engine, bucket_cache=False)
    ends = (NOON - timedelta(minutes=50), NOON, NOON + timedelta(minutes=1, seconds=17))
    for end in ends:
        cached.new_tick()
        for window in ("5m", "10m", "1h", "90m"):
            for signal in ROW_SIGNALS:
                for where in ({}, {"route": "/chat"}):
                    spec = SignalSpec(
                        signal=signal, window=window, group_by=group_by, where=where,
                        latency_threshold_ms=3000 if signal == "latency_over" else None,
                    )  # fmt: skip
                    a, b = to_ms(end) - int(spec.window.total_seconds() * 1000), to_ms(end)
                    got = by_labels(cached.query(spec, a, b))
                    want = by_labels(direct.query(spec, a, b))
                    assert got.keys() == want.keys(), (signal, window, where)
                    for k in want:
                        if want[k][0] is None:
                            assert got[k][0] is None
                        else:
                            assert got[k][0] == pytest.approx(want[k][0], rel=1e-9), (signal, k)
                        assert got[k][1] == want[k][1], (signal, window, k)
    assert cached._rows  # settled minutes were cached, not re-read


def test_one_tick_of_short_windows_reads_the_traces_once_per_label_set(seeded_sqlite):

    from mlflow_llmops.alerting.engine import AlertEngine
    from mlflow_llmops.alerting.rules import parse_rules

    rules = parse_rules(
        [{"name": f"{sig}_{w}_{'_'.join(g) or 'all'}", "threshold": 1e12,
          "query": {"signal": sig, "window": w, "group_by": list(g)}}
         for sig in ("error_rate", "latency_p95", "tokens", "cost_usd", "request_count")
         for w in ("5m", "1h") for g in ((), ("model",))],
        source="test",
    )  # fmt: skip
    src = SqlSignalSource(seeded_sqlite.engine)
    engine = AlertEngine(rules, src)
    with trace_queries(seeded_sqlite.engine) as seen:
        engine.evaluate(NOON)
        first = len(seen)  # per label set: the settled minutes, then the live ones
        assert first == 4, seen
        engine.evaluate(NOON + timedelta(minutes=1))
        # next tick: the minute that just settled, and the live minutes
        assert len(seen) - first == 4, seen[first:]


def test_cached_rows_see_late_traces_after_their_ttl(seeded_sqlite, tmp_path):
    import shutil

    import sqlalchemy as sa

    from mlflow_llmops.testing.seed import SeedTrace, bulk_load

    db = tmp_path / "copy.db"
    shutil.copy(seeded_sqlite.url.removeprefix("sqlite:///"), db)
    engine = sa.create_engine(f"sqlite:///{db}")
    spec = SignalSpec(signal="request_count", window="1h")
    a, b = to_ms(NOON) - 3_600_000, to_ms(NOON)
    src = SqlSignalSource(engine, cache_ttl_s=3600)
    before = src.query(spec, a, b)[0].samples
    late = SeedTrace(timestamp_ms=to_ms(NOON - timedelta(minutes=30)), latency_ms=50)
    bulk_load(engine, seeded_sqlite.exp_id, [late])  # lands in a minute already cached
    assert src.query(spec, a, b)[0].samples == before  # cached: not seen yet
    recent = SeedTrace(timestamp_ms=to_ms(NOON - timedelta(minutes=2)), latency_ms=50)
    bulk_load(engine, seeded_sqlite.exp_id, [recent])  # a live minute: seen at once
    assert src.query(spec, a, b)[0].samples == before + 1
    src.cache_ttl_s = 0  # the TTL has passed
    assert src.query(spec, a, b)[0].samples == before + 2
    engine.dispose()


def test_pack_baselines_give_the_same_verdicts_from_sql_as_from_rows(seeded_sqlite, tmp_path):
    """The three-layer pack's short windows against the median of the same window over
    past days: the SQL source (trace rows cached per minute, past days' minutes included)
    gives the in-memory answer at every minute of a latency and an error incident. On a
    copy of the seeded database (MLflow's schema takes long to create), in an experiment
    of its own, ten days after the seeded traffic."""
    import shutil

    import sqlalchemy as sa
    from seeded import init_mlflow_db

    from mlflow_llmops.alerting.engine import evaluate_rule
    from mlflow_llmops.alerting.rules import load_pack
    from mlflow_llmops.testing.seed import Incident, bulk_load, synthetic_traffic

    m = timedelta(minutes=1)
    now = NOON + timedelta(days=10)
    shutil.copy(seeded_sqlite.engine.url.database, tmp_path / "mlflow.db")
    url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = init_mlflow_db(url, str(tmp_path / "artifacts"), experiment="pack")
    traces = []
    for day in (3, 2, 1):  # the same half hour on the three days before: the baselines
        start = now - timedelta(days=day) - 30 * m
        traces += synthetic_traffic(start, 30 / 1440, 20, seed=day)
    incidents = [Incident(now - 15 * m, now, "latency", 4.0),
                 Incident(now - 8 * m, now, "errors", 0.4)]  # fmt: skip
    traces += synthetic_traffic(now - 30 * m, 30 / 1440, 20, seed=9, incidents=incidents)
    engine = sa.create_engine(url)
    try:
        bulk_load(engine, exp_id, traces, seed=99)  # trace ids unlike the seeded ones
        sql = SqlSignalSource(engine, experiment_ids=[exp_id])
        mem = MemorySignalSource(as_events(traces))
        names = ("llm_error_rate_high", "llm_latency_p95_high", "llm_token_usage_spike")
        rules = [r for r in load_pack("three-layer") if r.name in names]
        verdicts = set()
        for k in range(20):
            end = to_ms(now - 19 * m + k * m)
            sql.new_tick()
            for rule in rules:
                got = {tuple(sorted(s.labels.items())): s for s in
                       evaluate_rule(rule, sql, end).samples}  # fmt: skip
                want = {tuple(sorted(s.labels.items())): s for s in
                        evaluate_rule(rule, mem, end).samples}  # fmt: skip
                assert got.keys() == want.keys(), (rule.name, k)
                for key, s in want.items():
                    g = got[key]
                    assert (g.active, g.note) == (s.active, s.note), (rule.name, k, key)
                    assert g.value == pytest.approx(s.value, rel=1e-9)
                    if s.baseline is None:
                        assert g.baseline is None
                    else:
                        assert g.baseline == pytest.approx(s.baseline, rel=1e-9)
                    verdicts.add((rule.name, s.active))
        # both sources saw breaches, calm minutes and the baselines they compare with
        assert {("llm_latency_p95_high", True), ("llm_error_rate_high", True),
                ("llm_token_usage_spike", False), ("llm_latency_p95_high", False)} <= verdicts  # fmt: skip
    finally:
        engine.dispose()
