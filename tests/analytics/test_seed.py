"""The test-data seeder: bulk-loaded traces read back exactly like API-logged ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlflow_llmops.testing.seed import (
    Incident,
    SeedSpan,
    SeedTrace,
    bulk_load,
    seed_traces,
    synthetic_traffic,
)

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)

TRACES = [
    SeedTrace(
        timestamp_ms=T0_MS,
        latency_ms=900,
        user="alice",
        session="s1",
        task_type="qa",
        route="/chat",
        tenant="acme",
        sample_weight="1",
        tags={"team": "search"},
        spans=(
            SeedSpan("gpt-4o-mini", "openai", 1200, 300, cache_read_tokens=200, latency_ms=400),
            SeedSpan("gpt-4o", "openai", 500, 50, start_offset_ms=450, latency_ms=300),
        ),
    ),
    SeedTrace(
        timestamp_ms=T0_MS + 60_000,
        latency_ms=250,
        status="ERROR",
        user="bob",
        task_type="summarization",
        spans=(SeedSpan("acme-internal-llm", "acme", 80, 0, status="ERROR"),),
    ),
    SeedTrace(timestamp_ms=T0_MS + 120_000, latency_ms=30, user="carol"),  # no LLM call
]

CONTRACT_KEYS = (
    "mlflow.trace.user",
    "mlflow.trace.session",
    "llmops.task_type",
    "llmops.route",
    "llmops.tenant",
    "llmops.environment",
    "llmops.sample_weight",
    "mlflow.trace.tokenUsage",
)


def _snapshot(client: MlflowClient, trace_id: str) -> dict:
    t = client.get_trace(trace_id)
    info = t.info
    spans = sorted(t.data.spans, key=lambda s: s.start_time_ns)
    return {
        "time": info.request_time,
        "duration": info.execution_duration,
        "state": info.state.value,
        "name": info.tags.get("mlflow.traceName"),
        "team": info.tags.get("team"),
        "metadata": {k: info.trace_metadata.get(k) for k in CONTRACT_KEYS},
        "cost": info.trace_metadata.get("mlflow.trace.cost"),
        "spans": [
            (
                s.name,
                s.span_type,
                s.status.status_code.value,
                s.start_time_ns,
                s.end_time_ns,
                s.parent_id is None,
                {k: v for k, v in s.attributes.items() if not k.startswith("mlflow.trace")},
            )
            for s in spans
        ],
    }


@pytest.fixture(scope="module")
def api_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("seed-api")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    ids = seed_traces(uri, "seeded", TRACES)
    return uri, ids


def _bulk(uri: str, art: str) -> tuple[MlflowClient, str]:
    SqlAlchemyStore(uri, art)  # MLflow creates its schema
    client = MlflowClient(uri)
    exp_id = client.create_experiment("seeded", artifact_location=art)
    assert bulk_load(sa.create_engine(uri), exp_id, TRACES, batch_size=2, seed=7) == 3
    return client, exp_id


def _compare(api_store, client: MlflowClient, exp_id: str) -> None:
    api_uri, api_ids = api_store
    api = MlflowClient(api_uri)
    bulk = sorted(client.search_traces(locations=[exp_id]), key=lambda t: t.info.request_time)
    assert len(bulk) == len(api_ids) == 3
    for api_id, b in zip(api_ids, bulk, strict=True):
        assert _snapshot(client, b.info.trace_id) == _snapshot(api, api_id)


def test_bulk_load_reads_back_like_api_logged_traces_sqlite(api_store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'bulk.db'}"
    client, exp_id = _bulk(uri, str(tmp_path / "art"))
    _compare(api_store, client, exp_id)


@pytest.mark.postgres
def test_bulk_load_reads_back_like_api_logged_traces_postgres(api_store, pg_url, tmp_path):
    client, exp_id = _bulk(pg_url, str(tmp_path / "art"))
    _compare(api_store, client, exp_id)


def test_synthetic_traffic_is_deterministic_patterned_and_has_incidents():
    start = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    a = list(synthetic_traffic(start, days=2, rate_per_min=2, seed=1))
    b = list(synthetic_traffic(start, days=2, rate_per_min=2, seed=1))
    assert a == b
    assert 0.7 * 2 * 2880 < len(a) < 1.3 * 2 * 2880  # about the asked average rate
    assert [t.timestamp_ms for t in a] == sorted(t.timestamp_ms for t in a)
    by_hour = [0] * 24
    for t in a:
        by_hour[datetime.fromtimestamp(t.timestamp_ms / 1000, UTC).hour] += 1
    assert by_hour[14] > 2 * by_hour[2]  # daily pattern
    assert len({s.model for t in a for s in t.spans}) >= 4
    assert len({t.user for t in a}) > 50 and len({t.route for t in a}) == 4
    err = sum(t.status == "ERROR" for t in a) / len(a)
    assert err < 0.06

    inc = Incident(start.replace(hour=14), start.replace(hour=15), "errors", 0.5, model="gpt-4o")
    c = list(synthetic_traffic(start, days=1, rate_per_min=2, seed=1, incidents=[inc]))
    hit = [t for t in c if inc.active(datetime.fromtimestamp(t.timestamp_ms / 1000, UTC))
           and t.spans and t.spans[0].model == "gpt-4o"]  # fmt: skip
    assert hit and sum(t.status == "ERROR" for t in hit) / len(hit) > 0.25
