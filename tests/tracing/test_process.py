"""Real processes: bursts and SIGTERM in subprocesses that are really killed, a real
``mlflow server`` that goes down and comes back, PostgreSQL, and OTLP dual export."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from tracing_helpers import ROOT, count_spans, count_traces, memory_dir, run_loadgen

from mlflow_llmops.core import keys
from mlflow_llmops.testing.mlflow_server import MlflowServer
from mlflow_llmops.testing.otlp_receiver import OtlpReceiver
from mlflow_llmops.testing.ports import free_port
from mlflow_llmops.tracing import llm_call, request_context
from mlflow_llmops.tracing.metrics import DURATION_BUCKETS, TOKEN_BUCKETS


@mlflow.trace(name="req")
def req(i: int) -> int:
    """One small request with one LLM call (the store-outage and OTLP tests)."""
    with llm_call(model="gpt-4o-mini", provider="openai") as c:
        c.set_usage(input_tokens=10, output_tokens=2)
    return i


def start_app(script: Path, source: str, db: Path, *args: str) -> subprocess.Popen:
    """Run ``source`` as a small service script on the SQLite store ``db``."""
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": "", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), f"sqlite:///{db}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def requests_while_store_is_down(h, ids: range) -> dict:  # noqa: ANN001 - tracing handle
    """Serve ``req(i)`` for ``ids`` with the store down: none may block the request path;
    returns the stats once the exporter has seen the outage."""
    worst = 0.0
    for i in ids:
        t0 = time.perf_counter()
        req(i)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.25, f"request path blocked for {worst:.3f}s while the store was down"
    deadline = time.monotonic() + 20
    while h.stats()["export_errors"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return h.stats()


def events(stdout: str) -> dict[str, dict]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            out[e["event"]] = e
    return out


def test_burst_of_500_is_persisted_whole(fast_dir):
    db = fast_dir / "burst.db"
    r = run_loadgen("--tracking-uri", f"sqlite:///{db}", "--traces", "500")
    assert r.returncode == 0, r.stderr[-2000:]
    ev = events(r.stdout)
    st = ev["drained"]["stats"]
    assert (st["created"], st["exported"], st["dropped"], st["unsent_at_shutdown"]) == (
        500, 500, 0, 0,
    )  # fmt: skip
    assert count_traces(db) == 500 and count_spans(db) == 1500


def test_drops_beyond_capacity_are_counted_exactly(fast_dir):
    """Without the spool, a full queue drops, and every drop is counted."""
    db = fast_dir / "small.db"
    r = run_loadgen(
        "--tracking-uri", f"sqlite:///{db}", "--traces", "200", "--queue-capacity", "20",
        env={"MLFLOW_LLMOPS__TRACING__SPOOL__ENABLED": "false"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    st = events(r.stdout)["drained"]["stats"]
    assert st["dropped"] > 0
    assert st["created"] == 200 == st["exported"] + st["dropped"]
    assert count_traces(db) == st["exported"]
    assert "trace export queue full (capacity 20)" in r.stderr


def test_a_full_queue_overflows_to_the_spool_and_loses_nothing(fast_dir):
    db = fast_dir / "overflow.db"
    r = run_loadgen(
        "--tracking-uri", f"sqlite:///{db}", "--traces", "200", "--queue-capacity", "20",
        env={"MLFLOW_LLMOPS__TRACING__SPOOL__DIRECTORY": str(fast_dir / "spool")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    st = events(r.stdout)["drained"]["stats"]
    assert st["dropped"] == 0 and st["spooled"] == 0 and st["replayed"] > 0
    assert st["created"] == 200 == st["exported"] == count_traces(db)


def test_sigterm_with_200_queued_loses_nothing(fast_dir):
    db = fast_dir / "term.db"
    env = {**os.environ, "MLFLOW_MODEL_CATALOG_URI": ""}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--tracking-uri",
         f"sqlite:///{db}", "--traces", "200", "--wait-signal"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )  # fmt: skip
    line = proc.stdout.readline()
    created = json.loads(line)
    assert created["stats"]["created"] == 200
    assert created["stats"]["queued"] > 0, "nothing was queued at SIGTERM time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the default action still ran (chained)
    assert "tracing shut down: created=200 kept=200 exported=200" in err, err[-3000:]
    assert count_traces(db) == 200 and count_spans(db) == 600


APP_WITH_HANDLER = """
import json, signal, sys, mlflow
from mlflow_llmops.tracing import setup_production_tracing
calls = []
def app_handler(signum, frame):
    calls.append(signum)
    print(json.dumps({"app_handler": signum}), flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, app_handler)
h = setup_production_tracing("chain", "svc", tracking_uri=sys.argv[1])
@mlflow.trace
def f(i): return i
for i in range(50): f(i)
print(json.dumps({"ready": h.stats()["created"]}), flush=True)
signal.pause()
"""


def test_sigterm_chains_the_application_handler(tmp_path, fast_dir):
    db = fast_dir / "chain.db"
    proc = start_app(tmp_path / "app.py", APP_WITH_HANDLER, db)
    assert json.loads(proc.stdout.readline()) == {"ready": 50}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"app_handler": signal.SIGTERM}
    assert count_traces(db) == 50


BUSY_APP = """
import json, logging, sys, mlflow
from mlflow_llmops.tracing import llm_call, setup_production_tracing
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("mlflow_llmops").setLevel(logging.INFO)
h = setup_production_tracing("busy", "svc", tracking_uri=sys.argv[1],
                             shutdown_timeout=float(sys.argv[2]))
@mlflow.trace(name="req")
def req(i):
    with llm_call(model="gpt-4o-mini", provider="openai") as c:
        c.set_usage(input_tokens=10, output_tokens=2)
    return i
i = 0
while True:
    req(i)
    h.stats()  # like a health endpoint polling the counters
    i += 1
    if i == 100:
        print(json.dumps({"ready": i}), flush=True)
"""

SHUT_DOWN = re.compile(
    r"shut down: created=(\d+) kept=(\d+) exported=(\d+) sampled_out=0 dropped=0 failed=0 "
    r"unsent=0"
)


def test_sigterm_during_a_busy_loop_flushes_everything_within_the_deadline(tmp_path, fast_dir):
    db = fast_dir / "busy.db"
    deadline_s = 60.0  # generous: a loaded CI machine writes slowly; typical exit is ~5 s
    proc = start_app(tmp_path / "busy.py", BUSY_APP, db, str(deadline_s))
    assert json.loads(proc.stdout.readline()) == {"ready": 100}
    time.sleep(0.5)  # the loop keeps creating traces; the worker is writing
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=deadline_s + 30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert elapsed < deadline_s + 5, f"exit took {elapsed:.1f}s"
    m = SHUT_DOWN.search(err)
    assert m, err[-2000:]
    created, kept, exported = map(int, m.groups())
    assert created > 100 and created == kept == exported
    assert count_traces(db) == created and count_spans(db) == 2 * created


LOCK_HELD_APP = """
import json, logging, signal, sys, threading, time, mlflow
from mlflow_llmops.tracing import setup_production_tracing
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("mlflow_llmops").setLevel(logging.INFO)
h = setup_production_tracing("locked", "svc", tracking_uri=sys.argv[1], shutdown_timeout="10s")
# "ours": the counters' lock, as when the signal interrupts the exporter in its critical
# section. "foreign": a lock inside some library that both the request code and the
# store writer take (Python 3.11's class-wide cached_property lock on MLflow's spans is
# one): the writer waits for it, and a flush on the signal would wait until its deadline
library_lock = threading.Lock()
if sys.argv[2] == "foreign":
    write = h.writer.write
    def write_under_library_lock(*args):
        with library_lock:
            return write(*args)
    h.writer.write = write_under_library_lock
    library_lock.acquire()
lock = h._lock if sys.argv[2] == "ours" else library_lock
@mlflow.trace
def f(i): return i
for i in range(50): f(i)
print(json.dumps({"ready": h.stats()["created"]}), flush=True)
if sys.argv[2] == "ours":
    lock.acquire()
signal.raise_signal(signal.SIGTERM)
held = lock.locked()
lock.release()
print(json.dumps({"released": held}), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("lock", ["ours", "foreign"])
def test_sigterm_inside_a_critical_section_does_not_deadlock(tmp_path, fast_dir, lock):
    db = fast_dir / "locked.db"
    proc = start_app(tmp_path / "locked.py", LOCK_HELD_APP, db, lock)
    try:
        out, err = proc.communicate(timeout=40)  # it signals itself
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"deadlocked in the signal handler: {err[-2000:]}")
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert [json.loads(line) for line in out.splitlines()] == [{"ready": 50}, {"released": True}]
    assert "shut down: created=50 kept=50 exported=50" in err, err[-2000:]
    assert "unsent=0" in err and "did not finish in time" not in err
    assert count_traces(db) == 50


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """An MLflow server of our own: this module stops and restarts it."""
    d = memory_dir(tmp_path_factory.mktemp("tracing-srv"))
    srv = MlflowServer(f"sqlite:///{d / 'mlflow.db'}", artifact_root=str(d / "art"))
    srv.start()
    yield srv
    srv.stop()


def test_store_down_never_blocks_and_everything_arrives_when_back(tracing, own_server):
    h = tracing(
        "outage", tracking_uri=own_server.url, retry_backoff="200ms", max_backoff="1s",
    )  # fmt: skip

    for i in range(5):
        req(i)
    assert h.flush(30)
    own_server.stop()
    st = requests_while_store_is_down(h, range(100, 120))
    assert st["export_errors"] > 0 and st["dropped"] == 0
    assert st["queued"] + st["spooled"] == 20  # in memory, or on disk once a write failed
    assert st["last_export_error"]
    own_server.start()
    assert h.flush(60), h.stats()
    deadline = time.monotonic() + 90  # the spool replays at the worker's next retry
    while h.stats()["exported"] < 25 and time.monotonic() < deadline:
        time.sleep(0.2)
    st = h.stats()
    assert (st["exported"], st["dropped"], st["queued"], st["spooled"]) == (25, 0, 0, 0)
    client = MlflowClient(tracking_uri=own_server.url)
    found = client.search_traces(locations=[h.experiment_id], max_results=200)
    assert len(found) == 25


def test_store_down_at_start_up_does_not_fail_set_up(tracing, own_server, caplog):
    own_server.stop()
    with caplog.at_level(logging.WARNING, logger="mlflow_llmops.tracing"):
        t0 = time.monotonic()
        h = tracing(
            "down-at-start", tracking_uri=own_server.url, retry_backoff="200ms",
            max_backoff="1s",
        )  # fmt: skip
        setup_s = time.monotonic() - t0
    assert setup_s < 5, f"set-up blocked for {setup_s:.1f}s"
    assert "unreachable at start-up" in caplog.text and h.experiment_id is None

    st = requests_while_store_is_down(h, range(10))
    assert st["export_errors"] > 0 and st["exported"] == 0
    assert st["queued"] + st["spooled"] == 10  # in memory, or on disk once a write failed
    assert st["experiment_resolved"] is False
    own_server.start()
    assert h.flush(60), h.stats()
    req(10)  # created after the store came back: same experiment
    deadline = time.monotonic() + 90  # the spool replays at the worker's next retry
    while h.stats()["exported"] < 11 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert h.flush(30)
    client = MlflowClient(tracking_uri=own_server.url)
    exp = client.get_experiment_by_name("down-at-start")
    assert exp is not None and h.experiment_id == exp.experiment_id
    found = client.search_traces(locations=[exp.experiment_id], max_results=100)
    assert len(found) == 11 and h.stats()["exported"] == 11
    assert {t.info.trace_metadata[keys.SERVICE] for t in found} == {"svc"}
    assert client.search_traces(locations=["0"], max_results=10) == []  # not the default one


def test_mlflow_server_on_postgresql(tracing, mlflow_server_pg):
    h = tracing("pg-traces", "pg-svc", tracking_uri=mlflow_server_pg.url)

    @mlflow.trace(name="req")
    def req(i: int) -> int:
        with llm_call(model="gpt-4o-mini", provider="openai") as c:
            c.set_usage(input_tokens=100, output_tokens=20, cache_read_tokens=30)
        return i

    for i in range(10):
        with request_context(user=f"u{i % 3}", session="s"):
            req(i)
    assert h.flush(60)
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    found = client.search_traces(locations=[h.experiment_id], max_results=100)
    assert len(found) == 10
    t = client.get_trace(found[0].info.trace_id)
    assert t.info.trace_metadata[keys.SERVICE] == "pg-svc"
    assert t.info.trace_metadata[keys.USER].startswith("u")
    llm = next(s for s in t.data.spans if s.span_type == "CHAT_MODEL")
    assert llm.attributes[keys.TOKEN_USAGE]["cache_read_input_tokens"] == 30


def test_otlp_dual_export_metrics_and_no_secret_in_logs(tracing, shared_sqlite_uri, caplog):
    with OtlpReceiver() as rx, caplog.at_level(logging.INFO, logger="mlflow_llmops.tracing"):
        h = tracing(
            "otlp", "otlp-svc", tracking_uri=shared_sqlite_uri,
            sampling={"ratio": 0.0, "tail": {"keep_errors": True}},
            otlp={"traces_endpoint": rx.traces_endpoint + "?token=querysecret",
                  "metrics_endpoint": rx.metrics_endpoint,
                  "headers": {"Authorization": "Bearer s3cr3t-token"},
                  "metrics_export_interval": "1m"},
        )  # fmt: skip

        @mlflow.trace(name="req")
        def req(i: int) -> int:
            with llm_call(model="gpt-4o-mini", provider="openai", inputs={"p": f"prompt {i}"}) as c:
                c.first_token()
                c.set_usage(input_tokens=300, output_tokens=20)
            if i % 5 == 0:
                raise RuntimeError("boom")
            return i

        for i in range(20):
            with request_context(user="u", route="/x"):
                try:
                    req(i)
                except RuntimeError:
                    pass
        report = h.shutdown(20)
        spans = rx.spans()
        metrics = rx.metrics()
        headers = [hd for _, hd in rx.requests]
    assert report["kept"] == 4 and report["exported"] == 4
    assert (report["otlp_spans_exported"], report["otlp_export_errors"]) == (8, 0)
    # traces: only the 4 kept (error) traces, 2 spans each, with their LLM attributes
    assert len({s.trace_id for s in spans}) == 4 and len(spans) == 8
    assert all(s.resource.get("service.name") == "otlp-svc" for s in spans)
    assert all(hd.get("authorization") == "Bearer s3cr3t-token" for hd in headers)
    # metrics: all 20 calls, spec names, buckets and a bounded label set
    by_name = {m.name: m for m in metrics}
    dur = by_name["gen_ai.client.operation.duration"]
    assert dur.kind == "histogram" and dur.unit == "s"
    assert sum(p["count"] for p in dur.points) == 20
    assert all(tuple(p["bounds"]) == DURATION_BUCKETS for p in dur.points)
    tok = by_name["gen_ai.client.token.usage"]
    assert all(tuple(p["bounds"]) == tuple(float(b) for b in TOKEN_BUCKETS) for p in tok.points)
    assert (
        sum(p["sum"] for p in tok.points if p["attributes"]["gen_ai.token.type"] == "input") == 6000
    )
    assert "gen_ai.client.operation.time_to_first_chunk" in by_name
    labels = {k for m in (dur, tok) for p in m.points for k in p["attributes"]}
    assert labels <= {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                      "gen_ai.response.model", "error.type", "gen_ai.token.type"}  # fmt: skip
    outcomes = {
        p["attributes"]["llmops.outcome"]: p["value"] for p in by_name["llmops.traces"].points
    }
    assert outcomes["sampled_out"] == 16 and outcomes["kept"] == 4
    # the start-up line shows endpoints, never secrets
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert rx.metrics_endpoint in text and "/v1/traces" in text
    assert "s3cr3t" not in text and "querysecret" not in text


def test_otlp_export_failures_are_counted(tracing, shared_sqlite_uri):
    with OtlpReceiver(fail_status=400) as rx:  # a collector refusing every batch
        h = tracing(
            "otlp-fail", tracking_uri=shared_sqlite_uri,
            otlp={"traces_endpoint": rx.traces_endpoint, "metrics_enabled": False},
        )  # fmt: skip

        for i in range(5):
            req(i)
        report = h.shutdown(20)
        posted = len(rx.requests)
    assert posted >= 1 and report["exported"] == 5  # MLflow export unaffected
    assert report["otlp_export_errors"] >= 1
    assert (report["otlp_spans_failed"], report["otlp_spans_exported"]) == (10, 0)
    assert report["otlp_spans_dropped"] == 0


def test_shutdown_is_bounded_by_its_deadline_when_the_collector_refuses(tracing, shared_sqlite_uri):
    port = free_port()  # nothing listens: every connection is refused
    h = tracing(
        "otlp-refused", tracking_uri=shared_sqlite_uri,
        otlp={"traces_endpoint": f"http://127.0.0.1:{port}/v1/traces",
              "metrics_endpoint": f"http://127.0.0.1:{port}/v1/metrics"},
    )  # fmt: skip
    for i in range(5):
        req(i)
    t0 = time.monotonic()
    report = h.shutdown(2)
    elapsed = time.monotonic() - t0
    # the OTLP exporters retry with backoff for their own 10 s timeout, for both flush and
    # shutdown: before, this took 6-15 s; the margin only absorbs a loaded machine
    assert elapsed < 2 + 3, f"shutdown(2) took {elapsed:.1f}s"
    assert report["exported"] == 5  # the MLflow store comes first
    spans = report["otlp_spans_exported"] + report["otlp_spans_failed"]
    assert report["otlp_spans_exported"] == 0 and spans + report["otlp_spans_dropped"] == 10


SERVER_PATTERN_APP = """
import json, logging, signal, sys, mlflow
from mlflow_llmops.tracing import setup_production_tracing
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("mlflow_llmops").setLevel(logging.INFO)
signals = []
signal.signal(signal.SIGTERM, lambda s, f: signals.append(s))  # the server's, installed first
h = setup_production_tracing("server-pattern", "svc", tracking_uri=sys.argv[1])
@mlflow.trace
def f(i): return i
for i in range(50): f(i)
print(json.dumps({"ready": h.stats()["created"]}), flush=True)
while not signals:
    signal.pause()
f(50)  # the request in flight ends after the signal: the server drains it
print(json.dumps({"drained": h.stats()["created"], "signals": signals}), flush=True)
# uvicorn's end: put back the handler found before serve() (the default), re-raise
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.raise_signal(signal.SIGTERM)
print(json.dumps({"held": True}), flush=True)  # held until the flush at exit
"""


def test_sigterm_waits_for_a_server_that_drains_then_re_raises(tmp_path, fast_dir):
    """The server's handler runs instead of a flush, the trace of the request that ends
    after the signal is stored, and the process still dies of the re-raised signal, after
    the flush at exit."""
    db = fast_dir / "pattern.db"
    proc = start_app(tmp_path / "pattern.py", SERVER_PATTERN_APP, db)
    assert json.loads(proc.stdout.readline()) == {"ready": 50}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert [json.loads(line) for line in out.splitlines()] == [
        {"drained": 51, "signals": [signal.SIGTERM]}, {"held": True},
    ]  # fmt: skip
    assert "shut down: created=51 kept=51 exported=51" in err and "unsent=0" in err, err[-2000:]
    assert count_traces(db) == 51
