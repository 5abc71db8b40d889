"""The drain: a full queue and the shutdown deadline send traces to the spool (not to the
lost counters), the next start replays them, and bursts reach SQLite and PostgreSQL by
the bulk path with every trace accounted for. Counted in the store's own tables."""

from __future__ import annotations

import sqlite3
import threading

import mlflow
import pytest
import sqlalchemy as sa
from tracing_helpers import accounted

from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available


def _burst(n: int, start: int = 0) -> None:
    @mlflow.trace(name="request")
    def request(i: int) -> int:
        with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
            s.set_inputs({"q": i})
        with mlflow.start_span("tool", span_type="TOOL"):
            pass
        return i

    for i in range(start, start + n):
        request(i)


def test_full_queue_and_deadline_go_to_the_spool_then_replay_once(tracing, tmp_path):
    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    cfg = {"spool": {"directory": str(tmp_path / "spool")}, "queue_capacity": 5, "batch_size": 5}
    h = tracing("deadline", "svc", tracking_uri=uri, **cfg)
    assert h.flush(60)  # store reachable, worker idle
    gate = threading.Event()

    def stuck(*a, **k):  # a store that hangs: the batch stays in flight past the deadline
        gate.wait(120)
        raise TimeoutError("store hung")

    h.writer.write = stuck
    _burst(30)
    mid = h.stats()
    assert mid["spooled"] >= 20 and mid["dropped"] == 0, mid  # the queue's overflow
    report = h.shutdown(1)
    gate.set()
    assert report["spooled"] == 30 and report["unsent_at_shutdown"] == 0, report
    assert accounted(report) == (30, 30)
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from trace_info").fetchone()[0] == 0

    h2 = tracing("deadline", "svc", tracking_uri=uri, **cfg)
    _burst(7, start=100)
    assert h2.flush(120)
    st = h2.stats()
    # the 30 adopted, plus the new ones that followed them through the spool (kept in order)
    assert 30 <= st["replayed"] <= 37 and st["exported"] == 7, st
    assert accounted(st) == (7, 7)
    with sqlite3.connect(db) as c:
        assert c.execute("select count(*) from trace_info").fetchone()[0] == 37
        assert c.execute("select count(distinct request_id) from trace_info").fetchone()[0] == 37
        assert c.execute("select count(*) from spans").fetchone()[0] == 37 * 3


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_burst_drains_through_the_bulk_path(tracing, tmp_path, kind):
    if kind == "postgresql":
        if not pg_available():
            pytest.skip("PostgreSQL not available on 127.0.0.1:5432")
        uri = create_database("llmops_drain")
    else:
        uri = f"sqlite:///{tmp_path / 'd.db'}"
    try:
        h = tracing("drain", "svc", tracking_uri=uri, spool={"directory": str(tmp_path / "sp")})
        _burst(300)
        assert h.flush(180)
        st = h.stats()
        assert h.writer.path == "bulk"
        assert st["exported"] == 300 and st["spooled"] == 0 and accounted(st) == (300, 300)
        eng = sa.create_engine(uri)
        with eng.connect() as c:
            assert c.execute(sa.text("select count(*) from trace_info")).scalar() == 300
            assert c.execute(sa.text("select count(*) from spans")).scalar() == 900
            orphans = c.execute(
                sa.text(
                    "select count(*) from trace_info t where not exists "
                    "(select 1 from spans s where s.trace_id = t.request_id)"
                )
            ).scalar()
            assert orphans == 0
        eng.dispose()
        h.shutdown(10)
    finally:
        if kind == "postgresql":
            drop_database(uri)
