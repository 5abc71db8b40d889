"""GenAI metrics on a Prometheus scrape endpoint: in one process, merged across the workers
of ``uvicorn --workers 2`` and ``gunicorn -w 2``, scraped by a real Prometheus (Debian
package), and queried there with an exported alert rule through ``promtool query``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlflow_llmops.alerting.prometheus import export_prometheus_rules
from mlflow_llmops.alerting.rules import parse_rules
from mlflow_llmops.testing.ports import free_port
from mlflow_llmops.tracing import llm_call
from mlflow_llmops.tracing.prometheus import merge_expositions

DURATION = "gen_ai_client_operation_duration_seconds"


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _calls(samples: dict[str, list]) -> float:
    return sum(s.value for s in samples.get(f"{DURATION}_count", []))


def _wait(predicate, what: str, timeout: float = 90.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_merge_keeps_each_worker_as_its_own_series():
    a = '# HELP x_total n\n# TYPE x_total counter\nx_total{m="a"} 3.0\n'
    b = '# HELP x_total n\n# TYPE x_total counter\nx_total{m="a"} 4.0\n'
    fams = list(text_string_to_metric_families(merge_expositions({11: a, 12: b}).decode()))
    assert len(fams) == 1  # one family: the text format allows a TYPE line once per name
    assert sorted((s.labels["worker"], s.value) for s in fams[0].samples) == [
        ("11", 3.0), ("12", 4.0),
    ]  # fmt: skip


def test_endpoint_in_one_process(tracing, shared_sqlite_uri, tmp_path):
    port = free_port()
    h = tracing("prom-one", "svc", tracking_uri=shared_sqlite_uri,
                metrics={"prometheus_port": port, "prometheus_dir": str(tmp_path)})  # fmt: skip
    for _ in range(3):
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": "hi"}) as call:
            call.set_usage(input_tokens=10, output_tokens=5)
    samples = _scrape(port)
    assert _calls(samples) == 3
    (labels,) = {json.dumps(s.labels, sort_keys=True) for s in samples[f"{DURATION}_count"]}
    labels = json.loads(labels)
    assert labels["gen_ai_request_model"] == "gpt-4o"
    assert labels["worker"] == str(os.getpid())
    tokens = {s.labels["gen_ai_token_type"]: s.value
              for s in samples["gen_ai_client_token_usage_sum"]}  # fmt: skip
    assert tokens == {"input": 30.0, "output": 15.0}
    h.shutdown(10)
    assert not list(tmp_path.glob("*.prom"))  # its series go stale with the process
    with pytest.raises(OSError):
        _scrape(port)


def test_a_worker_without_the_port_publishes_and_takes_over(tracing, shared_sqlite_uri, tmp_path):
    """A process that cannot bind (another holds the port) still publishes for it."""
    import socket

    port = free_port()
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", port))
    blocker.listen()
    try:
        h = tracing("prom-busy", "svc", tracking_uri=shared_sqlite_uri,
                    metrics={"prometheus_port": port, "prometheus_dir": str(tmp_path),
                             "prometheus_interval": "200ms"})  # fmt: skip
        assert not h.prometheus.serving
        with llm_call(model="gpt-4o", provider="openai", inputs={"q": "hi"}) as call:
            call.set_usage(input_tokens=1, output_tokens=1)
        _wait(lambda: "gpt-4o" in (tmp_path / f"{os.getpid()}.prom").read_text(), "publish")
    finally:
        blocker.close()
    _wait(lambda: h.prometheus.serving, "take-over of the freed port")
    assert _calls(_scrape(port)) == 1


APP = """
import os
from fastapi import FastAPI
from mlflow_llmops.tracing import llm_call, setup_production_tracing

setup_production_tracing(
    "prom-workers", "svc", tracking_uri=os.environ["TRACKING_URI"],
    metrics={"prometheus_port": int(os.environ["PROM_PORT"]),
             "prometheus_dir": os.environ["PROM_DIR"], "prometheus_interval": "500ms"},
)
app = FastAPI()


@app.get("/ask")
def ask(model: str = "gpt-4o") -> dict:
    with llm_call(model=model, provider="openai", inputs={"q": "hi"}) as call:
        call.set_usage(input_tokens=100, output_tokens=20)
    return {"pid": os.getpid()}
"""


WSGI_APP = """
import json, os
from urllib.parse import parse_qs
from mlflow_llmops.tracing import llm_call, setup_production_tracing

setup_production_tracing(
    "prom-workers", "svc", tracking_uri=os.environ["TRACKING_URI"],
    metrics={"prometheus_port": int(os.environ["PROM_PORT"]),
             "prometheus_dir": os.environ["PROM_DIR"], "prometheus_interval": "500ms"},
)


def app(environ, start_response):
    model = parse_qs(environ.get("QUERY_STRING", "")).get("model", ["gpt-4o"])[0]
    with llm_call(model=model, provider="openai", inputs={"q": "hi"}) as call:
        call.set_usage(input_tokens=100, output_tokens=20)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"pid": os.getpid()}).encode()]
"""

SERVERS = {
    "uvicorn": (APP, ["-m", "uvicorn", "app:app", "--workers", "2", "--host", "127.0.0.1",
                      "--port"]),
    "gunicorn-sync": (WSGI_APP, ["-m", "gunicorn", "-w", "2", "app:app", "--bind"]),
}  # fmt: skip


@pytest.fixture(params=sorted(SERVERS))
def two_worker_app(request, tmp_path, mlflow_server_sqlite):
    source, args = SERVERS[request.param]
    (tmp_path / "app.py").write_text(textwrap.dedent(source))
    app_port, prom_port = free_port(), free_port()
    env = {**os.environ, "TRACKING_URI": mlflow_server_sqlite.url, "PROM_PORT": str(prom_port),
           "PROM_DIR": str(tmp_path / "prom"), "MLFLOW_MODEL_CATALOG_URI": ""}  # fmt: skip
    bind = str(app_port) if request.param == "uvicorn" else f"127.0.0.1:{app_port}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, *args, bind], cwd=tmp_path, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield app_port, prom_port, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                    reason="Debian's prometheus package (installed by .ci/run) is needed")  # fmt: skip
def test_two_workers_one_endpoint_scraped_by_prometheus(two_worker_app, tmp_path_factory):
    app_port, prom_port, workdir = two_worker_app
    base = f"http://127.0.0.1:{app_port}"
    _wait(lambda: _get(f"{base}/ask?model=warmup") is not None, "the app")
    _wait(lambda: len(list((workdir / "prom").glob("*.prom"))) == 2, "both workers publishing")
    pids: list[int] = []
    with ThreadPoolExecutor(8) as pool:  # new connections: the kernel spreads them, unevenly
        while len(set(pids)) < 2 or len(pids) < 60:
            assert len(pids) < 2000, "the kernel sent every request to one worker"
            pids += pool.map(lambda i: _get(f"{base}/ask")["pid"], range(20))
    total = 1 + len(pids)  # with the warm-up call
    samples = _wait(
        lambda: (s := _scrape(prom_port)) and _calls(s) == total and s, "every call counted"
    )
    workers = {s.labels["worker"] for s in samples[f"{DURATION}_count"]}
    answered = {str(p) for p in pids}
    assert len(answered) == 2 and answered <= workers  # both workers' calls at one endpoint

    # a real Prometheus scrapes the endpoint; an exported rule runs there with promtool
    pdir = tmp_path_factory.mktemp("prometheus")
    (pdir / "prometheus.yml").write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 1s}}
        scrape_configs:
          - job_name: llm-service
            static_configs: [{{targets: ["127.0.0.1:{prom_port}"]}}]
    """))  # fmt: skip
    web = free_port()
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={pdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={pdir / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=open(pdir / "log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{web}"

    def query(expr: str, *, ready: bool = True) -> str:
        out = subprocess.run(["promtool", "query", "instant", url, expr], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        if not ready and out.returncode != 0:  # starting up: 503 until its TSDB is open
            return out.stderr
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        _wait(lambda: f"=> {total}" in query(f"sum({DURATION}_count)", ready=False),
              "the scrape")  # fmt: skip
        for _ in range(20):  # traffic after the first scrapes, so rate() sees it
            _get(f"{base}/ask")
        _wait(lambda: f"=> {total + 20}" in query(f"sum({DURATION}_count)"), "the second batch")
        rules = parse_rules([{
            "name": "p95_latency_any", "type": "threshold", "severity": "warning",
            "query": {"signal": "latency_p95", "window": "1m", "group_by": ["model"]},
            "op": ">", "threshold": 0,
        }], source="test")  # fmt: skip
        (alert,) = export_prometheus_rules(rules).groups["groups"][0]["rules"]
        result = query(alert["expr"])
        assert 'gen_ai_request_model="gpt-4o"' in result, (alert["expr"], result)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert Path(pdir / "data").exists()
