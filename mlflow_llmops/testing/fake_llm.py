"""A fake OpenAI-compatible LLM server on 127.0.0.1 for tests, the demo and benchmarks.

Speaks the real wire protocol of ``POST /v1/chat/completions`` (JSON and
server-sent-event streaming with a final usage chunk) and of Anthropic's
``POST /v1/messages`` (JSON and its event stream; client ``base_url`` is
``root_url``), reports usage with
cached and reasoning tokens, and injects latency and faults:

* ``latency_s`` (a number or a callable of the request) before answering;
* ``error_rate`` with ``error_status`` at random (seeded);
* ``script(Fault(...), ...)``: the next requests get these faults in order
  (status with ``Retry-After``, a malformed body, a connection reset);
* ``responder(request) -> str`` chooses the assistant text (judges use it).

Also runnable: ``python -m mlflow_llmops.testing.fake_llm --port 8900``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fault:
    """One scripted answer: an HTTP error, a malformed body, or a dropped connection."""

    status: int = 500
    retry_after: float | None = None
    body: str | None = None  # raw body; default is an OpenAI-style error JSON
    malformed: bool = False  # 200 with a body that is not JSON
    reset: bool = False  # close the connection without answering
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    status: int = 0


def estimate_tokens(text: str) -> int:
    """About four characters a token, at least one for non-empty text."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _messages_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages or []:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "\n".join(parts)


def default_responder(request: dict[str, Any]) -> str:
    text = _messages_text(request.get("messages", []))
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return f"This is a fake answer to: {last[:200]}"


@dataclass
class FakeLLMConfig:
    latency_s: float | Callable[[dict[str, Any]], float] = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    cached_ratio: float = 0.0  # share of prompt tokens reported as cached
    reasoning_tokens: int = (
        0  # per response, for models whose name starts with "o" or contains "reason"
    )
    stream_chunk_delay_s: float = 0.0
    seed: int = 0
    responder: Callable[[dict[str, Any]], str] = default_responder
    extra: dict[str, Any] = field(default_factory=dict)
    #: the model a response names, by requested model (providers answer ``gpt-4o`` with a
    #: dated snapshot such as ``gpt-4o-2024-08-06``); default: the requested one
    response_models: dict[str, str] = field(default_factory=dict)
    #: the ``service_tier`` OpenAI names in responses and in every stream chunk (None: left
    #: out); a request's own ``service_tier`` wins, as with OpenAI
    service_tier: str | None = None


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as srv:``; ``srv.base_url`` ends with ``/v1``."""

    def __init__(
        self, config: FakeLLMConfig | None = None, *, port: int = 0, host: str = "127.0.0.1"
    ):
        self.config = config or FakeLLMConfig()
        self._faults: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self.requests: list[RecordedRequest] = []
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server's root: the ``base_url`` of the Anthropic client (it adds ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests, in order."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    # -- used by the handler --------------------------------------------
    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self.config.error_rate and self._rng.random() < self.config.error_rate:
                return Fault(status=self.config.error_status)
        return None

    def _latency(self, body: dict[str, Any]) -> float:
        lat = self.config.latency_s
        return float(lat(body)) if callable(lat) else float(lat)

    def completion(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The assistant text and the OpenAI usage object for a request."""
        text = self.config.responder(body)
        model = str(body.get("model", "gpt-4o-mini"))
        prompt = estimate_tokens(_messages_text(body.get("messages", [])))
        completion = estimate_tokens(text)
        reasoning = 0
        if self.config.reasoning_tokens and (model.startswith("o") or "reason" in model):
            reasoning = self.config.reasoning_tokens
            completion += reasoning
        cached = int(prompt * self.config.cached_ratio)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
        }
        return text, usage


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every keep-alive response.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send_json(
            self, status: int, payload: Any, headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send_json(
                    200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}
                )
            elif self.path == "/health":
                self._send_json(200, {"status": "ok"})
            else:
                self._send_json(
                    404, {"error": {"message": "not found", "type": "invalid_request_error"}}
                )

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send_json(
                    400,
                    {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}},
                )
                return
            rec = RecordedRequest(self.path, dict(self.headers), body, time.time())
            with server._lock:
                server.requests.append(rec)
            if self.path.split("?", 1)[0].rstrip("/").endswith("/v1/messages"):
                rec.status = self._anthropic(body)
                return
            if not self.path.rstrip("/").endswith("/chat/completions"):
                rec.status = 404
                self._send_json(
                    404,
                    {
                        "error": {
                            "message": f"unknown path {self.path}",
                            "type": "invalid_request_error",
                        }
                    },
                )
                return
            fault = server._next_fault()
            if fault is not None:
                rec.status = self._fault(fault)
                return
            delay = server._latency(body)
            if delay > 0:
                time.sleep(delay)
            text, usage = server.completion(body)
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            created = int(time.time())
            model = body.get("model", "gpt-4o-mini")
            model = server.config.response_models.get(model, model)
            rec.status = 200
            tier = body.get("service_tier") or server.config.service_tier
            tier_field = {"service_tier": tier} if tier else {}
            if body.get("stream"):
                self._stream(
                    cid,
                    created,
                    model,
                    text,
                    usage,
                    bool((body.get("stream_options") or {}).get("include_usage")),
                    tier_field,
                )
                return
            self._send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                    **tier_field,
                },
            )

        def _anthropic(self, body: dict[str, Any]) -> int:
            """Anthropic's Messages API (``POST /v1/messages``), JSON or server-sent events.
            Its ``input_tokens`` exclude cache reads, unlike OpenAI's ``prompt_tokens``."""
            fault = server._next_fault()
            if fault is not None:
                return self._fault(fault)
            delay = server._latency(body)
            if delay > 0:
                time.sleep(delay)
            text, u = server.completion(body)
            cached = u["prompt_tokens_details"]["cached_tokens"]
            usage = {
                "input_tokens": u["prompt_tokens"] - cached,
                "output_tokens": u["completion_tokens"],
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0,
            }
            model = str(body.get("model", "claude-sonnet-4-5"))
            message = {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": server.config.response_models.get(model, model),
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
            if not body.get("stream"):
                self._send_json(200, message)
                return 200
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(event: dict[str, Any]) -> None:
                line = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()

            start = {
                **message,
                "content": [],
                "stop_reason": None,
                "usage": {**usage, "output_tokens": 1},
            }
            send({"type": "message_start", "message": start})
            send(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            )
            for i, w in enumerate(text.split(" ")):
                if server.config.stream_chunk_delay_s:
                    time.sleep(server.config.stream_chunk_delay_s)
                send(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": w if i == 0 else " " + w},
                    }
                )
            send({"type": "content_block_stop", "index": 0})
            send(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                }
            )
            send({"type": "message_stop"})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return 200

        def _fault(self, fault: Fault) -> int:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.reset:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                finally:
                    self.close_connection = True
                return 0
            if fault.malformed:
                data = b'{"id": "chatcmpl-broken", "choices": [ this is not json'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return 200
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.body is not None:
                data = fault.body.encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            else:
                kind = "rate_limit_exceeded" if fault.status == 429 else "server_error"
                self._send_json(
                    fault.status,
                    {"error": {"message": f"injected {fault.status}", "type": kind, "code": kind}},
                    headers,
                )
            return fault.status

        def _stream(
            self,
            cid: str,
            created: int,
            model: str,
            text: str,
            usage: dict,
            include_usage: bool,
            extra: dict[str, Any],
        ) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(obj: Any) -> None:
                line = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()

            base = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                **extra,
            }
            send(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
            words = text.split(" ")
            for i, w in enumerate(words):
                if server.config.stream_chunk_delay_s:
                    time.sleep(server.config.stream_chunk_delay_s)
                piece = w if i == 0 else " " + w
                send(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                        ],
                    }
                )
            send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if include_usage:
                send({**base, "choices": [], "usage": usage})
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8900)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--cached-ratio", type=float, default=0.0)
    args = ap.parse_args(argv)
    cfg = FakeLLMConfig(
        latency_s=args.latency_ms / 1000, error_rate=args.error_rate, cached_ratio=args.cached_ratio
    )
    srv = FakeLLMServer(cfg, port=args.port).start()
    print(f"fake LLM server on {srv.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
