"""A small LLM service for the server tests and the SIGTERM benchmark, as an ASGI app
(FastAPI: ``mlflow_llmops.testing.server_app:app``) and a plain WSGI callable
(``mlflow_llmops.testing.server_app:wsgi_app``).

``POST /ask`` with ``{"id": ..., "q": ...}`` calls the fake LLM server through the real
``openai`` client, autologged by MLflow, inside a traced ``ask`` span; the trace carries
the tag ``llmops.test.request`` = the id, so a test counts stored requests in the store's
own tables. Servers import apps by name, so it is configured by environment variables:

* ``LLMOPS_APP_TRACKING_URI``, ``LLMOPS_APP_EXPERIMENT``, ``LLMOPS_APP_LLM_URL``;
* ``LLMOPS_APP_TRACING``: ``ours`` (``setup_production_tracing``, default) or ``mlflow``
  (plain MLflow: tracking URI, experiment and autolog, MLflow's own async export);
* ``LLMOPS_APP_SETUP``: ``import`` (default) or ``lifespan`` (the FastAPI lifespan; for
  the WSGI app, call ``setup()`` from a server hook such as gunicorn's ``post_worker_init``);
* ``LLMOPS_APP_REPORT_DIR``: each process writes ``ready-<pid>`` once tracing is set up
  and, with ``ours``, ``stats-<pid>.json``: its final tracing report, at shutdown.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mlflow

REQUEST_TAG = "llmops.test.request"
_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _report_dir() -> Path | None:
    d = os.environ.get("LLMOPS_APP_REPORT_DIR")
    return Path(d) if d else None


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reader never sees half a file


def setup() -> None:
    """Tracing for this process, once (at import, in the lifespan or in a server hook)."""
    with _LOCK:
        if _STATE:
            return
        uri = os.environ["LLMOPS_APP_TRACKING_URI"]
        experiment = os.environ.get("LLMOPS_APP_EXPERIMENT", "server-app")
        if os.environ.get("LLMOPS_APP_TRACING", "ours") == "mlflow":
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(experiment)
        else:
            from mlflow_llmops.tracing import setup_production_tracing

            handle = setup_production_tracing(experiment, "server-app", tracking_uri=uri)
            report_dir = _report_dir()
            if report_dir is not None:
                stats_file = report_dir / f"stats-{os.getpid()}.json"
                handle.on_shutdown(lambda r: _write(stats_file, json.dumps(r, default=str)))
            _STATE["handle"] = handle
        mlflow.openai.autolog()
        import openai

        _STATE["client"] = openai.OpenAI(
            base_url=os.environ["LLMOPS_APP_LLM_URL"], api_key="sk-test", max_retries=0
        )
        report_dir = _report_dir()
        if report_dir is not None:
            _write(report_dir / f"ready-{os.getpid()}", "ready")


@mlflow.trace(name="ask", span_type="CHAIN")
def ask(request_id: str, question: str) -> str:
    """One request, one trace: the ``ask`` span and the autologged LLM call under it."""
    mlflow.update_current_trace(tags={REQUEST_TAG: request_id})
    r = _STATE["client"].chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    return r.choices[0].message.content or ""


def _stats() -> dict[str, Any]:
    handle = _STATE.get("handle")
    return {"pid": os.getpid(), **(handle.stats() if handle is not None else {})}


# -- ASGI -------------------------------------------------------------------
def _make_asgi() -> Any:
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if os.environ.get("LLMOPS_APP_SETUP", "import") == "lifespan":
            setup()
        yield

    api = FastAPI(lifespan=lifespan)

    @api.post("/ask")
    def ask_endpoint(body: dict) -> dict:
        return {"id": body["id"], "answer": ask(body["id"], body["q"]), "pid": os.getpid()}

    @api.get("/stats")
    def stats_endpoint() -> dict:
        return _stats()

    return api


# -- WSGI -------------------------------------------------------------------
def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The same service as a plain WSGI callable (gunicorn's sync workers)."""
    path = environ.get("PATH_INFO", "")
    if path == "/ask" and environ.get("REQUEST_METHOD") == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(size) or b"{}")
        out = {"id": body["id"], "answer": ask(body["id"], body["q"]), "pid": os.getpid()}
    elif path == "/stats":
        out = _stats()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    data = json.dumps(out).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


if os.environ.get("LLMOPS_APP_SETUP", "import") == "import":
    setup()
app = _make_asgi()
