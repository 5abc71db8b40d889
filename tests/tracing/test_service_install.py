"""The service install: ``pip install mlflow-llmops`` in a fresh venv brings MLflow's light
``mlflow-tracing`` SDK, not full MLflow, and a FastAPI app served by real uvicorn in that venv
sends its traces (metadata, sampling, redaction, cost tail rule) to a real ``mlflow server``
run from the dev venv. Monitor features there say, in one line, what to install."""

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
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlflow_llmops.testing.fake_llm import FakeLLMServer
from mlflow_llmops.testing.ports import free_port

pytestmark = pytest.mark.xdist_group("service_install")

REPO = Path(__file__).resolve().parents[2]
#: the issue's goal for what the service install adds on top of Python
SIZE_GOAL_MB = 150


def _pip(venv: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PIP_REQUIRE_VIRTUALENV"}
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        check=True, env=env, timeout=900,
    )  # fmt: skip


def _site_mb(venv: Path) -> float:
    """Megabytes installed in the venv's site-packages, pip and setuptools left out."""
    (site,) = (venv / "lib").glob("python3*/site-packages")
    skip = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence")
    total = 0
    for child in site.iterdir():
        if child.name.split("-")[0].split(".")[0] in skip:
            continue
        paths = child.rglob("*") if child.is_dir() else [child]
        total += sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())
    return total / 1e6


@pytest.fixture(scope="module")
def service_venv(tmp_path_factory) -> tuple[Path, float]:
    """A venv with ``pip install mlflow-llmops`` (from a copy of this checkout) only."""
    root = tmp_path_factory.mktemp("service-install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mlflow_llmops", src / "mlflow_llmops",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _pip(venv, str(src))
    size = _site_mb(venv)
    _pip(venv, "fastapi", "uvicorn", "openai")  # the application's own dependencies
    return venv, size


def _run(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=venv)  # fmt: skip


def test_service_install_is_light_and_has_no_full_mlflow(service_venv):
    venv, size_mb = service_venv
    print(f"service install: {size_mb:.1f} MB in site-packages")
    assert size_mb <= SIZE_GOAL_MB
    out = _run(venv, textwrap.dedent("""
        import importlib.metadata as md, importlib.util, json
        def has(d):
            try:
                md.distribution(d); return True
            except md.PackageNotFoundError:
                return False
        print(json.dumps({d: has(d) for d in ("mlflow", "mlflow-skinny", "mlflow-tracing")}
                         | {m: importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "pandas")}))
    """))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "mlflow": False, "mlflow-skinny": False, "mlflow-tracing": True,
        "sqlalchemy": False, "pandas": False,
    }  # fmt: skip


def test_monitor_features_say_what_to_install(service_venv):
    venv, _ = service_venv
    cli = subprocess.run([str(venv / "bin" / "mlflow-llmops"), "--help"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0, cli.stderr
    assert "pip install 'mlflow-llmops[monitor]'" in cli.stderr
    out = _run(venv, "from mlflow_llmops.scoring import backfill")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow_llmops.extras.MissingMonitorInstall: mlflow_llmops.scoring")
    assert "pip install 'mlflow-llmops[monitor]'" in last
    # without MLflow's catalog files the cost rule's calculator says where to get them
    cat = _run(venv, "from mlflow_llmops.pricing.calculator import CostCalculator; "
                     "CostCalculator.default()")  # fmt: skip
    assert "mlflow-llmops costs export-catalog DIR" in cat.stderr.strip().splitlines()[-1]
    # the service side and the config loader import without the monitor's dependencies
    ok = _run(venv, "import mlflow_llmops.tracing, mlflow_llmops.config; print('ok')")
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr


APP = """
import os

import mlflow
import openai
from fastapi import FastAPI

from mlflow_llmops.tracing import request_context, setup_production_tracing

handle = setup_production_tracing(
    os.environ["LLMOPS_TEST_EXPERIMENT"], "light-svc",
    tracking_uri=os.environ["LLMOPS_TEST_TRACKING_URI"],
    sampling={"ratio": 0.0, "tail": {"cost_above_usd": 0.005, "keep_errors": True}},
    metadata={"environment": "staging"},
    pricing={"mlflow_catalog_dir": os.environ["LLMOPS_TEST_CATALOG"]},
)
mlflow.openai.autolog()
client = openai.OpenAI(base_url=os.environ["LLMOPS_TEST_LLM_URL"], api_key="sk-test", max_retries=0)
app = FastAPI()


@app.post("/ask")
def ask(body: dict) -> dict:
    with request_context(user=body["user"], session="s-1", route="/ask"):
        with mlflow.start_span("answer", span_type="CHAIN") as span:
            span.set_inputs({"question": body["q"]})
            r = client.chat.completions.create(
                model=body["model"], messages=[{"role": "user", "content": body["q"]}]
            )
            span.set_outputs({"answer": r.choices[0].message.content})
    return {"ok": True}


@app.get("/stats")
def stats() -> dict:
    return handle.stats()
"""


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_fastapi_app_on_the_service_install_sends_traces(
    service_venv, mlflow_server_sqlite, tmp_path
):
    venv, _ = service_venv
    experiment = f"light-{time.time_ns()}"
    (tmp_path / "app.py").write_text(APP)
    catalog = tmp_path / "catalog"  # mlflow-tracing has no price catalog: the monitor's copy
    subprocess.run([sys.executable, "-m", "mlflow_llmops.cli", "costs", "export-catalog",
                    str(catalog)], check=True, timeout=120)  # fmt: skip
    port = free_port()
    with FakeLLMServer() as llm:
        env = {
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "NO_PROXY": "127.0.0.1,localhost",
            "LLMOPS_TEST_EXPERIMENT": experiment,
            "LLMOPS_TEST_TRACKING_URI": mlflow_server_sqlite.url,
            "LLMOPS_TEST_LLM_URL": llm.base_url,
            "MLFLOW_MODEL_CATALOG_URI": "",
            "LLMOPS_TEST_CATALOG": str(catalog),
        }
        log = open(tmp_path / "uvicorn.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [str(venv / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/stats", timeout=2).close()
                    break
                except OSError:
                    assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
                    assert time.monotonic() < deadline, (tmp_path / "uvicorn.log").read_text()
                    time.sleep(0.3)
            long_q = "Summarise this contract for jane.doe@example.com: " + "clause " * 6000
            for i in range(3):  # gpt-4o, ~6k prompt tokens: above the tail cost rule, kept
                _post(f"{base}/ask", {"user": f"big-{i}", "model": "gpt-4o", "q": long_q})
            for i in range(5):  # a few tokens of gpt-4o-mini: below it, head ratio 0 drops them
                _post(f"{base}/ask", {"user": f"small-{i}", "model": "gpt-4o-mini", "q": "hi"})
            stats = json.loads(urllib.request.urlopen(f"{base}/stats", timeout=10).read())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            log.close()
    output = (tmp_path / "uvicorn.log").read_text()
    assert (stats["created"], stats["kept"], stats["sampled_out"]) == (8, 3, 5), output

    client = MlflowClient(mlflow_server_sqlite.url)
    exp = client.get_experiment_by_name(experiment)
    traces = client.search_traces(locations=[exp.experiment_id], max_results=100)
    assert sorted(t.info.trace_metadata.get("mlflow.trace.user") for t in traces) == [
        "big-0", "big-1", "big-2",
    ]  # fmt: skip
    for t in traces:
        meta = t.info.trace_metadata
        assert meta["llmops.service"] == "light-svc"
        assert meta["llmops.environment"] == "staging"
        assert meta["mlflow.trace.session"] == "s-1"
        assert len(t.data.spans) == 2
        stored = json.dumps([s.to_dict() for s in t.data.spans])
        assert "jane.doe@example.com" not in stored
        assert "[REDACTED:email]" in stored
        (llm_span,) = [s for s in t.data.spans if s.span_type == "CHAT_MODEL"]
        assert llm_span.get_attribute("mlflow.llm.model") == "gpt-4o"
        usage = llm_span.get_attribute("mlflow.chat.tokenUsage")
        assert usage["input_tokens"] > 5000
