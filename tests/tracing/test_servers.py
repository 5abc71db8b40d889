"""SIGTERM under real servers: uvicorn (1 worker and ``--workers 2``), gunicorn (sync
workers on a plain WSGI callable, and ``-k uvicorn.workers.UvicornWorker``), with tracing
set up at import and in the lifespan (or gunicorn's ``post_worker_init`` hook).

The app (``mlflow_llmops.testing.server_app``) calls the fake LLM server through the real
``openai`` client with MLflow autolog. SIGTERM goes to the master while a request that
takes 3 s is in flight (and, marked slow, in the middle of a burst). Every request the
client got an answer for must be stored, counted in the SQLite store's own tables, and
each worker's final report (written at its exit) must account for every trace it made:
``created = exported + sampled_out + dropped + failed + unsent + spooled``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from tracing_helpers import ROOT, memory_dir

from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer
from mlflow_llmops.testing.ports import free_port

pytestmark = pytest.mark.xdist_group("tracing_servers")

EXPERIMENT = "servers"
REQUEST_TAG = "llmops.test.request"  # server_app.REQUEST_TAG (importing it sets up tracing)
SLOW_S = 3.0
APP = "mlflow_llmops.testing.server_app"
GUNICORN_HOOK = f"""
def post_worker_init(worker):
    from {APP} import setup
    setup()
"""


@dataclass(frozen=True)
class Case:
    server: str  # uvicorn | gunicorn-sync | gunicorn-uvicorn
    workers: int
    setup: str  # import | lifespan

    def command(self, port: int, conf: Path) -> list[str]:
        bind = ["--host", "127.0.0.1", "--port", str(port)]
        if self.server == "uvicorn":
            return [sys.executable, "-m", "uvicorn", f"{APP}:app", *bind,
                    "--workers", str(self.workers), "--log-level", "warning"]  # fmt: skip
        cmd = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}",
               "-w", str(self.workers), "--graceful-timeout", "150", "--timeout", "150",
               *_gunicorn_flags()]  # fmt: skip
        if self.server == "gunicorn-sync":
            if self.setup == "lifespan":
                cmd += ["-c", str(conf)]
            return [*cmd, f"{APP}:wsgi_app"]
        return [*cmd, "-k", "uvicorn.workers.UvicornWorker", f"{APP}:app"]


SLOW = pytest.mark.slow
#: each server kind and each place of set-up runs by default (each failed before the fix,
#: the traces of the request in flight lost); the rest of the matrix is marked slow, as
#: every case starts workers that import MLflow (10-50 s per case on a loaded machine)
CASES = [
    Case("uvicorn", 1, "lifespan"),
    Case("uvicorn", 2, "import"),
    Case("gunicorn-sync", 2, "import"),
    Case("gunicorn-uvicorn", 2, "lifespan"),
    pytest.param(Case("uvicorn", 1, "import"), marks=SLOW),
    pytest.param(Case("uvicorn", 2, "lifespan"), marks=SLOW),
    pytest.param(Case("gunicorn-sync", 2, "lifespan"), marks=SLOW),
    pytest.param(Case("gunicorn-uvicorn", 2, "import"), marks=SLOW),
]


def _gunicorn_flags() -> list[str]:
    """No control socket (gunicorn 26 puts one in ~/.gunicorn, shared by parallel runs)."""
    from gunicorn.config import KNOWN_SETTINGS

    return (
        ["--no-control-socket"] if any(s.name == "control_socket" for s in KNOWN_SETTINGS) else []
    )


def _ids(case: Case) -> str:
    return f"{case.server}-{case.workers}w-{case.setup}" if isinstance(case, Case) else ""


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with the experiment, made once (migrations take seconds);
    each case copies it, so workers never race to create tables or the experiment."""
    d = memory_dir(tmp_path_factory.mktemp("servers-template"))
    db = d / "template.db"
    code = (
        "import sys; from mlflow import MlflowClient; "
        f"MlflowClient(sys.argv[1]).create_experiment({EXPERIMENT!r})"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True, timeout=300)
    return db


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    def latency(body: dict) -> float:
        return SLOW_S if "slow" in json.dumps(body.get("messages")) else 0.0

    with FakeLLMServer(FakeLLMConfig(latency_s=latency)) as srv:
        yield srv


class Served:
    """One server process tree, its report directory and its store."""

    def __init__(
        self, case: Case, tmp: Path, template: Path, llm: FakeLLMServer, **env_extra: str
    ) -> None:
        self.case = case
        self.dir = memory_dir(tmp)
        self.db = self.dir / "mlflow.db"
        shutil.copy(template, self.db)
        self.reports = self.dir / "reports"
        self.reports.mkdir()
        conf = self.dir / "gunicorn_conf.py"
        conf.write_text(GUNICORN_HOOK)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
            "MLFLOW_MODEL_CATALOG_URI": "",
            "LLMOPS_APP_TRACKING_URI": f"sqlite:///{self.db}",
            "LLMOPS_APP_EXPERIMENT": EXPERIMENT,
            "LLMOPS_APP_LLM_URL": llm.base_url,
            "LLMOPS_APP_SETUP": case.setup,
            "LLMOPS_APP_REPORT_DIR": str(self.reports),
            **env_extra,
        }
        self.log = self.dir / "server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(case.command(self.port, conf), cwd=self.dir, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Every worker has set up tracing, and the server answers."""
        deadline = time.monotonic() + timeout_s
        while len(list(self.reports.glob("ready-*"))) < self.case.workers:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.2)
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/stats", timeout=5).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, self.output()
                time.sleep(0.2)

    def ask(self, request_id: str, question: str) -> bool:
        """True when the server answered 200 (the request counts as answered)."""
        body = json.dumps({"id": request_id, "q": question}).encode()
        req = urllib.request.Request(f"{self.base}/ask", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200 and json.loads(r.read())["id"] == request_id
        except (OSError, urllib.error.HTTPError, ValueError):
            return False

    def terminate_and_wait(self, timeout_s: float = 120) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not exit after SIGTERM: {self.output()}")

    def stored(self) -> tuple[set[str], int, int]:
        """Request ids stored, trace rows, and traces without their two spans."""
        with sqlite3.connect(str(self.db)) as db:
            ids = {v for (v,) in db.execute("select value from trace_tags where key = ?",
                                             (REQUEST_TAG,))}  # fmt: skip
            rows = db.execute("select count(*) from trace_info").fetchone()[0]
            incomplete = db.execute(
                "select count(*) from trace_info t where (select count(*) from spans s "
                "where s.trace_id = t.request_id) <> 2"
            ).fetchone()[0]
        return ids, rows, incomplete

    def reports_by_pid(self) -> dict[str, dict]:
        return {
            p.name[len("stats-") : -len(".json")]: json.loads(p.read_text())
            for p in self.reports.glob("stats-*.json")
        }


def assert_all_answered_are_stored(served: Served, answered: set[str]) -> None:
    output = served.output()
    stored, rows, incomplete = served.stored()
    missing = answered - stored
    assert not missing, f"answered but not stored: {sorted(missing)[:10]}\n{output}"
    assert incomplete == 0, output
    ready = {p.name[len("ready-") :] for p in served.reports.glob("ready-*")}
    reports = served.reports_by_pid()
    assert set(reports) == ready, f"workers without a final report: {ready - set(reports)}"
    for pid, r in reports.items():
        accounted = (r["exported"] + r["sampled_out"] + r["dropped"] + r["failed"]
                     + r["unsent_at_shutdown"] + r.get("spooled", 0))  # fmt: skip
        assert r["created"] == accounted, f"worker {pid}: {r}"
        assert (r["dropped"], r["failed"], r["unsent_at_shutdown"]) == (0, 0, 0), r
    assert sum(r["exported"] for r in reports.values()) == rows, (reports, rows)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sigterm_with_a_request_in_flight_stores_every_answered_trace(
    case, tmp_path, template_store, llm
):
    served = Served(case, tmp_path, template_store, llm)
    try:
        served.wait_ready()
        answered = {f"fast-{i}" for i in range(6) if served.ask(f"fast-{i}", f"hello {i}")}
        assert len(answered) == 6, served.output()
        llm_calls = len(llm.requests)
        slow: dict[str, bool] = {}
        t = threading.Thread(target=lambda: slow.update(ok=served.ask("slow", "a slow one")))
        t.start()
        deadline = time.monotonic() + 60
        while len(llm.requests) == llm_calls:  # the slow request reached the LLM
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.02)
        time.sleep(1.0)  # mid-request, as in the issue
        served.terminate_and_wait()
        t.join(60)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert slow.get("ok"), f"the server did not answer the request in flight\n{served.output()}"
    assert_all_answered_are_stored(served, answered | {"slow"})


BURST_CASES = [Case("uvicorn", 2, "import"), Case("gunicorn-uvicorn", 2, "lifespan"),
               Case("gunicorn-sync", 2, "lifespan")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", BURST_CASES, ids=_ids)
def test_sigterm_in_the_middle_of_a_burst_stores_every_answered_trace(
    case, tmp_path, template_store, llm
):
    # the drain rate of a loaded machine is not what this tests: a deadline that fits
    served = Served(case, tmp_path, template_store, llm,
                    MLFLOW_LLMOPS__TRACING__SHUTDOWN_TIMEOUT_S="100")  # fmt: skip
    n, answered, lock = 200, set(), threading.Lock()
    half = threading.Event()

    def one(i: int) -> None:
        if served.ask(f"b-{i}", f"burst {i}"):
            with lock:
                answered.add(f"b-{i}")
                if len(answered) >= n // 3:
                    half.set()

    try:
        served.wait_ready()
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            assert half.wait(120), served.output()
            served.terminate_and_wait()
            for f in futures:
                f.result()
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert len(answered) >= n // 3
    assert_all_answered_are_stored(served, answered)


def test_the_example_service_stores_the_request_in_flight(tmp_path, template_store, llm):
    """``examples/service.py`` as documented: ``uvicorn --factory`` with set-up in the
    lifespan, nothing called at shutdown."""
    d = memory_dir(tmp_path)
    db = d / "mlflow.db"
    shutil.copy(template_store, db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
           "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT),
           "MLFLOW_MODEL_CATALOG_URI": "", "LLM_BASE_URL": llm.base_url,
           "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "LLMOPS_EXPERIMENT": EXPERIMENT}  # fmt: skip
    log = d / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "examples.service:app_from_env",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def ask(question: str) -> bool:
        req = urllib.request.Request(f"{base}/ask", method="POST",
                                     data=json.dumps({"question": question}).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/tracing", timeout=5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert ask("what is a refund?"), log.read_text()
        llm_calls = len(llm.requests)
        slow: dict[str, bool] = {}
        t = threading.Thread(target=lambda: slow.update(ok=ask("slow: and a chargeback?")))
        t.start()
        while len(llm.requests) == llm_calls:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        t.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert slow.get("ok"), output
    with sqlite3.connect(str(db)) as c:
        assert c.execute("select count(*) from trace_info").fetchone()[0] == 2, output
        names = {n for (n,) in c.execute("select name from spans where parent_span_id is null")}
    assert names == {"answer"}
