import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from mlflow_llmops.errors import StoreError
from mlflow_llmops.statestore.state import Migration, StateStore, create_tables

things = sa.Table(
    "llmops_test_things", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
)


def _add_column(conn):
    conn.execute(sa.text("ALTER TABLE llmops_test_things ADD COLUMN label VARCHAR(20)"))


MIGRATIONS = (
    Migration("things", 1, "table", create_tables(things)),
    Migration("things", 2, "label column", _add_column),
)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, state_url):
    if request.param == "sqlite":
        return state_url
    return request.getfixturevalue("pg_url")


def test_migrations_apply_once_and_are_versioned(store_url):
    s = StateStore(store_url)
    s.ensure_schema(MIGRATIONS[:1])
    assert s.schema_version("things") == 1
    s2 = StateStore(store_url)  # a second process, later release
    s2.ensure_schema(MIGRATIONS)
    s2.ensure_schema(MIGRATIONS)
    assert s2.schema_version("things") == 2
    with s2.engine.begin() as c:
        c.execute(sa.text("INSERT INTO llmops_test_things (id, label) VALUES (1, 'x')"))


def test_concurrent_migration_runs_once(store_url):
    errors = []

    def go():
        try:
            StateStore(store_url).ensure_schema(MIGRATIONS)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=go) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors
    assert StateStore(store_url).schema_version("things") == 2


def test_newer_schema_is_refused(store_url):
    s = StateStore(store_url)
    s.ensure_schema(MIGRATIONS)
    fresh = StateStore(store_url)
    with pytest.raises(StoreError, match="upgrade mlflow-llmops"):
        fresh.ensure_schema(MIGRATIONS[:1])


def test_watermarks(store_url):
    s = StateStore(store_url)
    assert s.get_watermark("w") is None
    s.set_watermark("w", "10")
    s.set_watermark("w", "20")
    assert s.get_watermark("w") == "20"


def test_lease_is_exclusive_until_expiry(store_url):
    s = StateStore(store_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert s.acquire_lease("leader", "a", 30, t0)
    assert not s.acquire_lease("leader", "b", 30, t0 + timedelta(seconds=10))
    assert s.acquire_lease("leader", "a", 30, t0 + timedelta(seconds=20))  # renew
    assert s.lease_holder("leader", t0 + timedelta(seconds=40)) == "a"
    assert s.acquire_lease("leader", "b", 30, t0 + timedelta(seconds=51))  # a's expired
    assert s.lease_holder("leader", t0 + timedelta(seconds=52)) == "b"
    s.release_lease("leader", "b")
    assert s.lease_holder("leader", t0 + timedelta(seconds=52)) is None


def test_bad_url_is_explained():
    with pytest.raises(StoreError, match="not a database URL"):
        StateStore("not a url")


def test_unreachable_postgres_is_explained():
    with pytest.raises(StoreError, match="state_store.url"):
        StateStore("postgresql://postgres@127.0.0.1:1/nope")
