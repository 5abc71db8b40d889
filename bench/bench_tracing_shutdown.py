"""Benchmark: SIGTERM 1 s after a burst under ``uvicorn --workers 2``: requests answered vs
traces stored, production tracing vs plain MLflow 3.17.2 (autolog, its default async
export), side by side in one run.

The app is ``mlflow_llmops.testing.server_app`` (FastAPI, the real ``openai`` client
against the fake LLM server, MLflow autolog); each run has its own SQLite store on the
normal disk. Stored requests are counted in the store's own tables by the request id
each trace carries. Goal: every answered request stored.

``BENCH_SHUTDOWN_REQUESTS`` (default 1000) and ``BENCH_SHUTDOWN_CONCURRENCY`` (32).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow_llmops.testing.fake_llm import FakeLLMServer  # noqa: E402
from mlflow_llmops.testing.ports import free_port  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_SHUTDOWN_REQUESTS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_SHUTDOWN_CONCURRENCY", "32"))
TAG = "llmops.test.request"  # server_app.REQUEST_TAG


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT),
            "MLFLOW_MODEL_CATALOG_URI": "", **extra}  # fmt: skip


def _ask(base: str, i: int) -> bool:
    body = json.dumps({"id": f"r-{i}", "q": f"question {i}"}).encode()
    req = urllib.request.Request(f"{base}/ask", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status == 200
    except OSError:
        return False


def run(mode: str, work: Path, llm_url: str) -> dict:
    """One server under ``mode`` (ours | mlflow): burst, 1 s, SIGTERM, count."""
    d = work / mode
    d.mkdir()
    reports = d / "reports"
    reports.mkdir()
    db = d / "mlflow.db"
    subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                    "MlflowClient(sys.argv[1]).create_experiment('bench')", f"sqlite:///{db}"],
                   check=True, timeout=300, env=_env({}))  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "mlflow_llmops.testing.server_app:app", "--host",
         "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=d, stdout=log, stderr=subprocess.STDOUT,
        env=_env({"LLMOPS_APP_TRACKING_URI": f"sqlite:///{db}", "LLMOPS_APP_EXPERIMENT": "bench",
                  "LLMOPS_APP_LLM_URL": llm_url, "LLMOPS_APP_TRACING": mode,
                  "LLMOPS_APP_REPORT_DIR": str(reports)}),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(list(reports.glob("ready-*"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            answered = sum(pool.map(lambda i: _ask(base, i), range(REQUESTS)))
        burst_s = time.perf_counter() - t0
        time.sleep(1.0)
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        exit_s = time.perf_counter() - t1
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    with sqlite3.connect(str(db)) as c:  # stored = with its spans; orphans: info rows only
        stored, orphans = c.execute(
            "select count(distinct case when exists (select 1 from spans s where s.trace_id = "
            "t.request_id) then t.value end), count(distinct case when not exists (select 1 "
            "from spans s where s.trace_id = t.request_id) then t.value end) "
            "from trace_tags t where t.key = ?", (TAG,),
        ).fetchone()  # fmt: skip
    finals = [json.loads(p.read_text()) for p in reports.glob("stats-*.json")]
    return {"answered": answered, "stored": stored, "orphans": orphans, "burst_s": burst_s,
            "exit_s": exit_s, "reports": finals}  # fmt: skip


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-shutdown-"))
    try:
        with FakeLLMServer() as llm:
            print(f"bench_tracing_shutdown: {REQUESTS} requests x{CONCURRENCY} under uvicorn "
                  f"--workers 2, SIGTERM 1 s after the burst; stores under {work}", flush=True)  # fmt: skip
            results = {mode: run(mode, work, llm.base_url) for mode in ("ours", "mlflow")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    o, b = results["ours"], results["mlflow"]
    for mode, r in results.items():
        print(f"{mode}: answered={r['answered']} stored={r['stored']} (trace rows without "
              f"spans: {r['orphans']}) burst={r['burst_s']:.1f}s "
              f"exit after SIGTERM={r['exit_s']:.1f}s", flush=True)  # fmt: skip
    counted = {k: sum(r.get(k, 0) for r in o["reports"])
               for k in ("created", "exported", "dropped", "unsent_at_shutdown", "spooled")}  # fmt: skip
    print(
        f"RESULT tracing_sigterm_uvicorn stored/answered after SIGTERM 1 s after a "
        f"{REQUESTS}-request burst (uvicorn, 2 workers): ours={o['stored']}/{o['answered']} "
        f"mlflow_default={b['stored']}/{b['answered']} (goal: all); ours' workers counted "
        f"{counted} in {len(o['reports'])} final reports",
        flush=True,
    )


if __name__ == "__main__":
    main()
