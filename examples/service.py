"""A small LLM service instrumented with ``setup_production_tracing``.

It answers "questions" by calling an OpenAI-compatible endpoint through the real
``openai`` client, autologged by MLflow (``mlflow.openai.autolog()``), plus one
provider MLflow does not autolog, recorded with the manual ``llm_call`` helper.
Run the fake LLM server and then this file::

    python -m mlflow_llmops.testing.fake_llm --port 8900 &
    python examples/service.py --base-url http://127.0.0.1:8900/v1 --requests 50

or serve it (tracing set up in the FastAPI lifespan; on SIGTERM the server finishes the
requests in flight and their traces are stored before each worker exits)::

    LLM_BASE_URL=http://127.0.0.1:8900/v1 uvicorn --factory examples.service:app_from_env --workers 2
    LLM_BASE_URL=http://127.0.0.1:8900/v1 gunicorn -w 2 -k uvicorn.workers.UvicornWorker \
        'examples.service:app_from_env()'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from typing import Any

import mlflow

from mlflow_llmops.tracing import TracingHandle, llm_call, request_context, setup_production_tracing


class QaService:
    """One request = one trace: retrieve (a tool span), then an LLM call."""

    def __init__(self, base_url: str, model: str = "gpt-4o-mini") -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=base_url, api_key="sk-fake-key-for-tests", max_retries=0
        )
        self.model = model
        self.base_url = base_url.rstrip("/")

    @mlflow.trace(span_type="RETRIEVER")
    def retrieve(self, question: str) -> list[str]:
        return [f"doc about {question.split()[0] if question else 'nothing'}"]

    @mlflow.trace(name="answer", span_type="CHAIN")
    def answer(self, question: str, *, model: str | None = None) -> str:
        docs = self.retrieve(question)
        resp = self.client.chat.completions.create(
            model=model or self.model,
            messages=[
                {"role": "system", "content": "Answer from the documents: " + "; ".join(docs)},
                {"role": "user", "content": question},
            ],
        )
        return resp.choices[0].message.content or ""

    @mlflow.trace(name="answer_stream", span_type="CHAIN")
    def answer_streaming_other_provider(self, question: str) -> str:
        """A client MLflow does not autolog: recorded with ``llm_call``."""
        import httpx

        body = {
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with llm_call(model="qwen-plus", provider="dashscope", inputs=body) as call:
            parts: list[str] = []
            with httpx.stream(
                "POST", f"{self.base_url}/chat/completions", json=body, timeout=30
            ) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            call.first_token()
                            parts.append(choice["delta"]["content"])
                    if chunk.get("usage"):
                        call.set_usage_from_openai(chunk["usage"])
            text = "".join(parts)
            call.set_output(text)
            return text


def run_requests(service: QaService, n: int, *, seed: int = 0) -> dict[str, int]:
    """``n`` requests from a few users and tenants; failures are counted, not raised."""
    rng = random.Random(seed)
    outcome = {"ok": 0, "error": 0}
    for i in range(n):
        user = f"user-{rng.randint(1, 8)}"
        route = rng.choice(["/chat", "/chat", "/search"])
        with request_context(
            user=user, session=f"{user}-s{i // 10}", task_type="qa", route=route,
            tenant=rng.choice(["acme", "globex"]),
        ):  # fmt: skip
            try:
                if i % 7 == 3:
                    service.answer_streaming_other_provider(f"stream question {i}")
                else:
                    service.answer(f"question {i}: my email is user{i}@example.com")
                outcome["ok"] += 1
            except Exception:  # noqa: BLE001 - the fake server injects errors on purpose
                outcome["error"] += 1
    return outcome


def start(
    experiment_name: str, tracking_uri: str, *, service_name: str = "qa-service", **config: Any
) -> TracingHandle:
    """Tracing first, autolog second: autolog spans then flow through our export path."""
    handle = setup_production_tracing(
        experiment_name, service_name, tracking_uri=tracking_uri, **config
    )
    mlflow.openai.autolog()
    return handle


def create_app(base_url: str, tracking_uri: str, experiment_name: str = "llmops-demo") -> Any:
    """The service over HTTP. Tracing is set up in the lifespan, in each worker; nothing
    is needed at shutdown: the flush runs when the worker really ends, after the server
    has answered the requests in flight."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        state["tracing"] = start(experiment_name, tracking_uri)
        state["service"] = QaService(base_url)
        yield

    api = FastAPI(lifespan=lifespan)

    @api.post("/ask")
    def ask(body: dict[str, str]) -> dict[str, str]:  # sync: FastAPI runs it in a thread
        with request_context(user=body.get("user"), route="/ask", task_type="qa"):
            return {"answer": state["service"].answer(body["question"])}

    @api.get("/tracing")
    def tracing_stats() -> dict[str, Any]:
        return state["tracing"].stats()

    return api


def app_from_env() -> Any:
    """``create_app`` from ``LLM_BASE_URL``, ``MLFLOW_TRACKING_URI`` (default
    ``sqlite:///mlflow.db``) and ``LLMOPS_EXPERIMENT`` (default ``llmops-demo``)."""
    return create_app(
        os.environ["LLM_BASE_URL"],
        os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        os.environ.get("LLMOPS_EXPERIMENT", "llmops-demo"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="llmops-demo")
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    handle = start(args.experiment, args.tracking_uri)
    print(json.dumps(run_requests(QaService(args.base_url), args.requests)))
    print(json.dumps(handle.shutdown(), indent=2, default=str))


if __name__ == "__main__":
    main()
