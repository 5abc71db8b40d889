"""Atomic batches and our bulk SQL path: the rows equal MLflow's own ``start_trace`` +
``log_spans`` rows, MLflow reads them back, and a SIGKILL never leaves a trace without
all its spans. Real SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from tracing_helpers import ROOT

from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available
from mlflow_llmops.tracing import llm_call, request_context
from mlflow_llmops.tracing.bulk import SqlBulkWriter, bulk_supported
from mlflow_llmops.tracing.export import StoreWriter

TABLES = {
    "trace_info": "request_id",
    "trace_tags": "request_id, key",
    "trace_request_metadata": "request_id, key",
    "spans": "trace_id, span_id",
}


def _make_traces() -> None:
    """Shapes that exercise every derived column: usage and cost from spans, session and
    user, tags, an error trace, a trace name, previews from inputs/outputs."""

    @mlflow.trace(name="handle")
    def handle(q: str) -> str:
        with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
            s.set_inputs({"messages": [{"role": "user", "content": q}]})
            s.set_attributes({
                "mlflow.llm.model": "gpt-4o-mini", "mlflow.llm.provider": "openai",
                "mlflow.chat.tokenUsage": {"input_tokens": 120, "output_tokens": 30,
                                           "total_tokens": 150},
            })  # fmt: skip
            s.set_outputs({"content": "answer é"})
        with mlflow.start_span("tool", span_type="TOOL") as s:
            s.set_inputs({"q": q})
        mlflow.update_current_trace(tags={"team": "pay"})
        return "ok"

    @mlflow.trace(name="fails")
    def fails() -> None:
        with llm_call(model="claude-sonnet-4", provider="anthropic", inputs={"q": 1}) as call:
            call.set_usage(input_tokens=10, output_tokens=4)
            raise RuntimeError("boom")

    with request_context(user="u-1", session="s-1", route="/chat", tenant="acme"):
        handle("hello")
    handle("second")
    with pytest.raises(RuntimeError):
        fails()


def _rows(engine: sa.Engine, ids: list[str]) -> dict[str, list[tuple]]:
    out = {}
    with engine.connect() as c:
        for table, order in TABLES.items():
            col = "trace_id" if table == "spans" else "request_id"
            rows = c.execute(
                sa.text(f"select * from {table} where {col} in :ids order by {order}").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": ids},
            ).mappings()
            out[table] = [tuple(sorted(dict(r).items())) for r in rows]
    return out


def _stores(kind: str, tmp_path: Path):
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ours.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}", []
    if not pg_available():
        pytest.skip("PostgreSQL not available on 127.0.0.1:5432")
    a, b = create_database("llmops_bulk"), create_database("llmops_ref")
    return a, b, [a, b]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_bulk_rows_equal_mlflows_own_path_and_read_back(tracing, tmp_path, kind):
    ours_uri, ref_uri, dbs = _stores(kind, tmp_path)
    try:
        art = (tmp_path / "artifacts").as_uri()
        for uri in (ours_uri, ref_uri):
            MlflowClient(uri).create_experiment("atomic", artifact_location=art)
        captured: list = []
        h = tracing("atomic", "svc", tracking_uri=ours_uri, spool={"enabled": False})
        real = h.writer.write

        def capture(traces, *a, **k):
            captured.extend(traces)
            return real(traces, *a, **k)

        h.writer.write = capture
        _make_traces()
        assert h.flush(60)
        assert h.writer.path == "bulk"
        assert len(captured) == 3
        # the same Trace objects through MLflow's own path, into the reference store
        from mlflow.tracing.client import TracingClient

        ref = TracingClient(ref_uri)
        for t in captured:
            ref.start_trace(t.info)
            ref.log_spans(t.info.experiment_id, list(t.data.spans))
        ids = [t.info.trace_id for t in captured]
        ours_rows = _rows(MlflowClient(ours_uri)._tracking_client.store.engine, ids)
        ref_rows = _rows(MlflowClient(ref_uri)._tracking_client.store.engine, ids)
        for table in TABLES:
            assert ours_rows[table] == ref_rows[table], table
        assert len(ours_rows["spans"]) == 8

        # MLflow reads our rows back exactly as its own
        mine, theirs = MlflowClient(ours_uri), MlflowClient(ref_uri)
        for tid in ids:
            assert mine.get_trace(tid).to_dict() == theirs.get_trace(tid).to_dict()
        exp = mine.get_experiment_by_name("atomic").experiment_id
        found = mine.search_traces(locations=[exp], max_results=10)
        ref_found = theirs.search_traces(locations=[exp], max_results=10)
        assert [t.to_dict() for t in found] == [t.to_dict() for t in ref_found]
        assert len(found) == 3
        hits = mine.search_traces(
            locations=[exp], filter_string="metadata.`mlflow.trace.user` = 'u-1'"
        )
        assert [t.info.trace_id for t in hits] == [
            t.info.trace_id for t in captured if t.info.trace_metadata.get("mlflow.trace.user")
        ]
        assert h.stats()["exported"] == 3
    finally:
        for url in dbs:
            drop_database(url)


def test_bulk_write_is_idempotent_and_all_or_nothing(tmp_path):
    """A batch retried after its commit skips the traces already stored; a failure in the
    middle of a batch leaves none of its traces."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("idem")
    mlflow.set_tracking_uri(uri)
    try:
        traces = []
        for i in range(4):
            with mlflow.start_span(f"r{i}") as root:
                with mlflow.start_span("child"):
                    pass
            mlflow.flush_trace_async_logging()
            traces.append(client.get_trace(root.trace_id))
        # traces already in MLflow's store: the bulk writer must recognise every one
        store = client._tracking_client.store
        assert bulk_supported(store)
        writer = SqlBulkWriter(store)
        seen: list = []
        assert writer.write(traces, lambda t, e: None, seen.append) == []
        assert len(seen) == 4

        # a failing INSERT in the middle rolls the whole batch back
        fresh_uri = f"sqlite:///{tmp_path / 'n.db'}"
        fresh = MlflowClient(fresh_uri)
        fresh.create_experiment("idem")
        w = StoreWriter(fresh_uri, lambda: None)
        _ = w.client
        for t in traces:
            t.info.trace_location.mlflow_experiment.experiment_id = exp
        bad = traces[2]
        bad.data.spans[0]._span._start_time = None  # spans.start_time_unix_nano NOT NULL
        with pytest.raises(Exception):  # noqa: B017 - any database error
            w.write(traces, lambda t, e: None)
        db = tmp_path / "n.db"
        with sqlite3.connect(db) as c:
            assert c.execute("select count(*) from trace_info").fetchone()[0] == 0
            assert c.execute("select count(*) from spans").fetchone()[0] == 0
        good = [t for t in traces if t is not bad]
        assert w.write(good, lambda t, e: None) == 3
        assert w.write(good, lambda t, e: None) == 3  # again: found, not duplicated
        with sqlite3.connect(db) as c:
            assert c.execute("select count(*) from trace_info").fetchone()[0] == 3
            assert c.execute("select count(*) from spans").fetchone()[0] == 6
    finally:
        mlflow.set_tracking_uri(None)


_BURST = """
import sys, time, mlflow
from mlflow_llmops.tracing import setup_production_tracing
h = setup_production_tracing("kill", "svc", tracking_uri=sys.argv[1], batch_size=50,
                             spool={"enabled": False})
@mlflow.trace(name="request")
def request(i):
    with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
        s.set_inputs({"q": i}); s.set_outputs({"a": i})
    with mlflow.start_span("tool", span_type="TOOL"):
        pass
i = 0
while True:
    request(i); i += 1
    if i % 200 == 0:
        print(i, h.stats()["exported"], flush=True)
"""


@pytest.mark.slow
def test_sigkill_never_leaves_a_trace_without_all_its_spans(tmp_path):
    """SIGKILL while batches are being written, three times (the code before atomic
    batches left 7 of 17 traces without spans): every trace row in the store
    has its three spans, and MLflow's get_trace reads each of them."""
    db = tmp_path / "kill.db"
    uri = f"sqlite:///{db}"
    MlflowClient(uri).create_experiment("kill")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_MODEL_CATALOG_URI": ""}
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", _BURST, uri], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        try:
            exported = 0
            deadline = time.monotonic() + 120
            while exported == 0 and time.monotonic() < deadline:  # writes are under way
                line = p.stdout.readline()
                assert line, "burst process ended early"
                exported = int(line.split()[1])
            time.sleep(0.01 * round_)
            p.send_signal(signal.SIGKILL)
        finally:
            p.kill()
            p.wait(30)
    with sqlite3.connect(db) as c:
        n = c.execute("select count(*) from trace_info").fetchone()[0]
        incomplete = c.execute(
            "select count(*) from trace_info t where "
            "(select count(*) from spans s where s.trace_id = t.request_id) != 3"
        ).fetchone()[0]
        ids = [r[0] for r in c.execute("select request_id from trace_info limit 20")]
    assert n > 0
    assert incomplete == 0
    client = MlflowClient(uri)
    for tid in ids:
        assert len(client.get_trace(tid).data.spans) == 3
    assert json.dumps(n)  # keeps n in the failure message
