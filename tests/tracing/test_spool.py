"""The durable spool: files, adoption of an ended process's spool, and the store down for
a whole run then back (a real ``mlflow server`` not started yet, a PostgreSQL database
that does not exist yet). Counted in the store's own tables."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from tracing_helpers import identity_holds

from mlflow_llmops.testing.mlflow_server import MlflowServer
from mlflow_llmops.testing.ports import free_port
from mlflow_llmops.testing.postgres import ADMIN_URL, drop_database, pg_available
from mlflow_llmops.tracing.spool import Spool, store_key


class _FakeTrace:
    """Just enough of an MLflow Trace for the file layer (``to_dict`` and spans)."""

    def __init__(self, i: int) -> None:
        self.i = i
        self.data = type("D", (), {"spans": []})()

    def to_dict(self) -> dict:
        return {"i": self.i}


def _ids(spool: Spool) -> list[list[int]]:
    import json

    return [[r["trace"]["i"] for r in json.loads(f.path.read_bytes())["traces"]]
            for f in spool.files()]  # fmt: skip


def test_spool_files_order_bound_and_adoption(tmp_path):
    s = Spool(tmp_path, "k", max_bytes=4096)
    assert s.put([_FakeTrace(1), _FakeTrace(2)]) and s.put([_FakeTrace(3)])
    assert _ids(s) == [[1, 2], [3]] and s.pending() == 3
    assert not s.put([_FakeTrace(i) for i in range(400)])  # over max_bytes: refused whole
    assert s.pending() == 3
    # a live owner's directory is never adopted (its flock is held)
    other = Spool(tmp_path, "k", max_bytes=4096)
    assert other.pending() == 0
    other.close()
    # a crash leaves a half-written .tmp: it is discarded, finished files are adopted
    (s.dir / "000000000099-5.tmp").write_bytes(b'{"v": 1, "tr')
    s.close()  # the process ends (its lock is released with it)
    t = Spool(tmp_path, "k", max_bytes=4096)
    assert _ids(t) == [[1, 2], [3]]
    assert not any(f.own for f in t.files())
    assert not list(tmp_path.glob("k/proc-*/*.tmp"))
    for f in list(t.files()):
        t.remove(f)
    assert t.pending() == 0
    t.close()
    assert not (tmp_path / "k").exists()  # all its directories removed


def _burst(n: int) -> None:
    @mlflow.trace(name="request")
    def request(i: int) -> int:
        with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
            s.set_inputs({"q": i})
            s.set_attributes({"mlflow.llm.model": "gpt-4o-mini", "mlflow.llm.provider": "openai",
                              "mlflow.chat.tokenUsage": {"input_tokens": 5, "output_tokens": 2,
                                                         "total_tokens": 7}})  # fmt: skip
        with mlflow.start_span("tool", span_type="TOOL"):
            pass
        return i

    for i in range(n):
        request(i)


def _sqlite_counts(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as c:
        return (
            c.execute("select count(*) from trace_info").fetchone()[0],
            c.execute("select count(*) from spans").fetchone()[0],
            c.execute(
                "select count(*) from trace_info t where "
                "(select count(*) from spans s where s.trace_id = t.request_id) != 3"
            ).fetchone()[0],
        )


def _wait(pred, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _cfg(spool_dir: Path) -> dict:
    return {
        "spool": {"directory": str(spool_dir), "fsync": True},
        "startup_timeout": "2s",
        "retry_backoff": "200ms",
        "max_backoff": "1s",
    }


@pytest.mark.slow
def test_server_down_for_the_whole_run_then_back(tracing, tmp_path):
    """No server for the whole first run: every trace goes to the spool; the next start
    (server up) replays them, exactly once, with all their spans."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    spool_dir = tmp_path / "spool"
    h = tracing("outage", "svc", tracking_uri=uri, **_cfg(spool_dir))
    _burst(40)
    report = h.shutdown(10)
    assert report["spooled"] == 40, report
    assert report["exported"] == 0 and report["dropped"] == 0
    assert identity_holds(report), report
    files = list(spool_dir.glob("*/proc-*/*.json"))
    assert files

    db = tmp_path / "server.db"
    with MlflowServer(f"sqlite:///{db}", port=port):
        h2 = tracing("outage", "svc", tracking_uri=uri, **_cfg(spool_dir))
        assert h2.flush(120)
        st = h2.stats()
        assert st["replayed"] == 40 and st["spool_pending"] == 0, st
        assert st["created"] == 0 and identity_holds(st)
        assert _sqlite_counts(db) == (40, 120, 0)
        h2.shutdown(10)
    assert not list(spool_dir.glob("*/proc-*/*.json"))


@pytest.mark.slow
def test_server_returns_while_the_process_runs(tracing, tmp_path):
    """The server comes up during the run: the worker's retry replays the spool in
    place, then writes new traces directly."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    h = tracing("returns", "svc", tracking_uri=uri, **_cfg(tmp_path / "spool"))
    _burst(30)
    assert _wait(lambda: h.stats()["spooled"] == 30), h.stats()
    db = tmp_path / "server.db"
    with MlflowServer(f"sqlite:///{db}", port=port):
        assert _wait(lambda: h.stats()["exported"] == 30), h.stats()
        _burst(10)
        assert h.flush(60)
        st = h.stats()
        assert st["exported"] == 40 and st["spooled"] == 0 and st["replayed"] == 30, st
        assert identity_holds(st)
        assert _sqlite_counts(db) == (40, 120, 0)
        h.shutdown(10)


@pytest.mark.postgres
def test_postgres_database_missing_for_the_whole_run_then_back(tracing, tmp_path):
    if not pg_available():
        pytest.skip("PostgreSQL not available on 127.0.0.1:5432")
    name = f"llmops_spool_{os.getpid()}_{int(time.time())}"
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    spool_dir = tmp_path / "spool"
    h = tracing("pg-outage", "svc", tracking_uri=url, **_cfg(spool_dir))
    _burst(25)
    report = h.shutdown(10)
    assert report["spooled"] == 25 and identity_holds(report), report

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    try:
        h2 = tracing("pg-outage", "svc", tracking_uri=url, **_cfg(spool_dir))
        assert h2.flush(180)
        assert h2.stats()["replayed"] == 25, h2.stats()
        h2.shutdown(10)
        eng = sa.create_engine(url)
        with eng.connect() as c:
            assert c.execute(sa.text("select count(*) from trace_info")).scalar() == 25
            assert c.execute(sa.text("select count(*) from spans")).scalar() == 75
        eng.dispose()
    finally:
        drop_database(url)
    assert not list(spool_dir.glob("*/proc-*/*.json"))


def test_store_key_separates_stores_and_experiments():
    keys = {store_key(u, e) for u in ("sqlite:///a.db", "sqlite:///b.db") for e in ("x", "y")}
    assert len(keys) == 4


_KILLED_BURST = """
import sys, mlflow
from mlflow_llmops.tracing import setup_production_tracing
h = setup_production_tracing("pg-kill", "svc", tracking_uri=sys.argv[1], queue_capacity=20,
                             batch_size=10, startup_timeout=1, retry_backoff="200ms",
                             spool={"directory": sys.argv[2]})
@mlflow.trace(name="request")
def request(i):
    with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
        s.set_inputs({"q": i})
    with mlflow.start_span("tool", span_type="TOOL"):
        pass
i = 0
while True:
    request(i); i += 1
    if i % 50 == 0:
        print(i, h.stats()["spooled"], flush=True)
"""


@pytest.mark.postgres
def test_sigkill_mid_burst_then_restart_replays_every_spooled_trace_once(tracing, tmp_path):
    """The database is missing while a process bursts into the spool; SIGKILL mid-burst;
    once the database exists a restart replays every trace that reached the spool,
    each exactly once with its three spans."""
    import json
    import signal
    import subprocess
    import sys

    from tracing_helpers import ROOT

    if not pg_available():
        pytest.skip("PostgreSQL not available on 127.0.0.1:5432")
    name = f"llmops_spkill_{os.getpid()}_{int(time.time())}"
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    spool_dir = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_MODEL_CATALOG_URI": ""}
    p = subprocess.Popen([sys.executable, "-c", _KILLED_BURST, url, str(spool_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    try:
        spooled = 0
        deadline = time.monotonic() + 180
        while spooled < 100 and time.monotonic() < deadline:
            line = p.stdout.readline()
            assert line, "burst process ended early"
            spooled = int(line.split()[1])
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait(30)
    assert spooled >= 100
    reached: list[str] = []
    for f in sorted(spool_dir.glob("*/proc-*/*.json")):
        reached += [r["trace"]["info"]["trace_id"] for r in json.loads(f.read_bytes())["traces"]]
    assert len(reached) >= spooled and len(set(reached)) == len(reached)

    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    try:
        h = tracing("pg-kill", "svc", tracking_uri=url, **_cfg(spool_dir))
        assert h.flush(180)
        assert h.stats()["replayed"] == len(reached), h.stats()
        h.shutdown(10)
        eng = sa.create_engine(url)
        with eng.connect() as c:
            rows = c.execute(
                sa.text(
                    "select t.request_id, (select count(*) from spans s "
                    "where s.trace_id = t.request_id) from trace_info t"
                )
            ).all()
        eng.dispose()
    finally:
        drop_database(url)
    assert sorted(r[0] for r in rows) == sorted(reached)
    assert {r[1] for r in rows} == {3}
    assert not list(spool_dir.glob("*/proc-*/*.json"))
