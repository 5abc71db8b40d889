"""A fake Slack on 127.0.0.1: incoming webhooks and the Web API (``chat.postMessage``,
``chat.update``), driven by the real ``slack-sdk`` in tests, the demo and benchmarks.

Message metadata (``metadata={"event_type", "event_payload"}`` on
``chat.postMessage`` and ``chat.update``) is kept and returned by
``conversations.history`` and ``conversations.replies`` when asked with
``include_all_metadata`` (newest first, ``limit`` and ``cursor`` paging), and
``conversations.list`` maps channel names to IDs, as the real API does.

Speaks Slack's wire protocol: a webhook answers ``200 ok`` or an HTTP error
with a plain-text reason (``invalid_payload``, ``channel_not_found``, ...);
the Web API answers JSON ``{"ok": true, "ts": ...}`` or ``{"ok": false,
"error": ...}``, 429 with ``Retry-After`` when rate limited. Faults are
scripted (``script(SlackFault(...))``) and every request is recorded.
``FakeHttpServer`` is the small base shared with the fake PagerDuty.
"""

from __future__ import annotations

import collections
import json
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class SlackFault:
    """One scripted answer: an HTTP status with a body (and Retry-After), or a delay."""

    status: int = 500
    body: str | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    #: Web API error code in a 200 answer (e.g. ``channel_not_found``)
    error: str | None = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    status: int = 0
    #: when the answer was written (``time.time()``), e.g. to measure from a 429
    answered_at: float = 0.0


@dataclass
class SlackMessage:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    received_at: float = 0.0
    #: Slack message metadata (``event_type`` and ``event_payload``), as posted
    metadata: dict[str, Any] | None = None

    def as_api(self, *, with_metadata: bool) -> dict[str, Any]:
        """The message as ``conversations.history`` / ``replies`` return it."""
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.blocks:
            out["blocks"] = self.blocks
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata:
            out["metadata"] = self.metadata
        return out


class FakeHttpServer:
    """Threaded HTTP(S) server on a free loopback port; subclasses implement ``handle``."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self._faults: collections.deque[Any] = collections.deque()
        self.lock = threading.RLock()
        self.request_seen = threading.Event()
        self.hold = threading.Event()  # set = answer; clear = hold answers (crash tests)
        self.hold.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls per answer

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                outer._dispatch(self, raw)

            do_PUT = do_POST  # noqa: N815

            def do_GET(self) -> None:  # noqa: N802
                outer._dispatch(self, b"")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], OSError):  # a client gone (killed)
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if ssl_context else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def script(self, *faults: Any) -> None:
        """The next requests get these answers, in order."""
        with self.lock:
            self._faults.extend(faults)

    def _next_fault(self) -> Any:
        with self.lock:
            return self._faults.popleft() if self._faults else None

    def _dispatch(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        ctype = h.headers.get("Content-Type", "")
        body: Any
        try:
            if "json" in ctype:
                body = json.loads(raw or b"{}")
            elif "form" in ctype:
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            else:
                body = raw.decode(errors="replace")
        except ValueError:
            body = raw.decode(errors="replace")
        if h.command == "GET" and "?" in h.path:
            body = {k: v[0] for k, v in parse_qs(h.path.split("?", 1)[1]).items()}
        rec = Recorded(h.path, {k.lower(): v for k, v in h.headers.items()}, body, time.time())
        with self.lock:
            self.requests.append(rec)
        self.request_seen.set()
        self.hold.wait(timeout=60)
        status, headers, out = self.handle(rec)
        rec.status = status
        data = out.encode() if isinstance(out, str) else out
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        rec.answered_at = time.time()
        h.wfile.write(data)

    def handle(self, rec: Recorded) -> tuple[int, dict[str, str], str | bytes]:
        raise NotImplementedError

    def start(self) -> FakeHttpServer:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeSlackServer(FakeHttpServer):
    """``webhook_url(channel)`` for incoming webhooks, ``api_url`` for ``WebClient(base_url=)``."""

    def __init__(
        self, *, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("#alerts",), **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.token = token
        self.channels = {c: f"C{i:08d}" for i, c in enumerate(channels, 1)}
        self.messages: list[SlackMessage] = []
        self._ts = 1_700_000_000.0

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def webhook_url(self, channel: str = "#alerts") -> str:
        return f"{self.url}/services/T0000/B0000/{channel.strip('#')}"

    def _next_ts(self) -> str:
        with self.lock:
            self._ts += 0.0001
            return f"{self._ts:.6f}"

    def _channel_id(self, name: str) -> str | None:
        if name in self.channels:
            return self.channels[name]
        return name if name in self.channels.values() else None

    def messages_in(
        self, channel: str = "#alerts", *, top_level: bool = False
    ) -> list[SlackMessage]:
        cid = self._channel_id(channel)
        with self.lock:
            return [
                m
                for m in self.messages
                if m.channel == cid and (not top_level or m.thread_ts is None)
            ]

    def handle(self, rec: Recorded) -> tuple[int, dict[str, str], str | bytes]:
        fault = self._next_fault()
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if rec.path.startswith("/services/"):
            return self._webhook(rec, fault)
        if rec.path.startswith("/api/"):
            return self._web_api(rec, fault)
        return 404, {"Content-Type": "text/plain"}, "no_service"

    def _webhook(self, rec: Recorded, fault: SlackFault | None) -> tuple[int, dict[str, str], str]:
        plain = {"Content-Type": "text/plain"}
        if fault is not None and fault.status != 200:
            hdr = dict(plain)
            if fault.retry_after is not None:
                hdr["Retry-After"] = f"{fault.retry_after:g}"
            return (
                fault.status,
                hdr,
                fault.body
                or {
                    429: "rate_limited",
                    400: "invalid_payload",
                    404: "channel_not_found",
                    410: "channel_is_archived",
                    403: "action_prohibited",
                }.get(fault.status, "internal_error"),
            )
        body = rec.body if isinstance(rec.body, dict) else {}
        if not body.get("text") and not body.get("blocks"):
            return 400, plain, "no_text"
        channel = "#" + rec.path.rsplit("/", 1)[-1]
        cid = self._channel_id(channel)
        if cid is None:
            return 404, plain, "channel_not_found"
        with self.lock:
            self.messages.append(
                SlackMessage(
                    cid,
                    self._next_ts(),
                    body.get("text", ""),
                    body.get("blocks") or [],
                    received_at=rec.received_at,
                )
            )
        return 200, plain, "ok"

    def _web_api(self, rec: Recorded, fault: SlackFault | None) -> tuple[int, dict[str, str], str]:
        js = {"Content-Type": "application/json; charset=utf-8"}

        def answer(
            status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], str]:
            return status, {**js, **(extra or {})}, json.dumps(payload)

        if fault is not None:
            if fault.error:
                return answer(200, {"ok": False, "error": fault.error})
            if fault.status == 429:
                return answer(
                    429,
                    {"ok": False, "error": "ratelimited"},
                    {"Retry-After": f"{fault.retry_after or 1:g}"},
                )
            if fault.status != 200:
                return answer(fault.status, {"ok": False, "error": fault.body or "internal_error"})
        if rec.headers.get("authorization") != f"Bearer {self.token}":
            return answer(200, {"ok": False, "error": "invalid_auth"})
        method = rec.path[len("/api/") :].split("?")[0]
        body = rec.body if isinstance(rec.body, dict) else {}
        if isinstance(body.get("blocks"), str):
            body["blocks"] = json.loads(body["blocks"])
        if isinstance(body.get("metadata"), str):
            body["metadata"] = json.loads(body["metadata"])
        cid = self._channel_id(str(body.get("channel", "")))
        if method in ("chat.postMessage", "chat.update") and cid is None:
            return answer(200, {"ok": False, "error": "channel_not_found"})
        if method == "chat.postMessage":
            if not body.get("text") and not body.get("blocks"):
                return answer(200, {"ok": False, "error": "no_text"})
            ts = self._next_ts()
            thread = body.get("thread_ts")
            with self.lock:
                if thread and not any(m.ts == thread and m.channel == cid for m in self.messages):
                    return answer(200, {"ok": False, "error": "thread_not_found"})
                self.messages.append(
                    SlackMessage(
                        cid,
                        ts,
                        body.get("text", ""),
                        body.get("blocks") or [],
                        thread,
                        received_at=rec.received_at,
                        metadata=body.get("metadata") or None,
                    )  # type: ignore[arg-type]
                )
            return answer(
                200,
                {"ok": True, "channel": cid, "ts": ts, "message": {"text": body.get("text", "")}},
            )
        if method == "chat.update":
            with self.lock:
                for m in self.messages:
                    if m.channel == cid and m.ts == body.get("ts"):
                        m.updates.append(
                            {"text": body.get("text", ""), "blocks": body.get("blocks") or []}
                        )
                        m.text, m.blocks = body.get("text", m.text), body.get("blocks") or m.blocks
                        if body.get("metadata"):
                            m.metadata = body["metadata"]
                        return answer(200, {"ok": True, "channel": cid, "ts": m.ts})
            return answer(200, {"ok": False, "error": "message_not_found"})
        if method in ("conversations.history", "conversations.replies"):
            return answer(200, self._history(method, body, cid))
        if method == "conversations.list":
            chans = [
                {"id": i, "name": n.lstrip("#"), "is_channel": True}
                for n, i in self.channels.items()
            ]
            return answer(
                200, {"ok": True, "channels": chans, "response_metadata": {"next_cursor": ""}}
            )
        if method == "auth.test":
            return answer(200, {"ok": True, "user_id": "U0000", "team": "test"})
        return answer(200, {"ok": False, "error": "unknown_method"})

    def _history(self, method: str, body: dict[str, Any], cid: str | None) -> dict[str, Any]:
        """Newest first; ``history`` shows top-level messages (thread parents included),
        ``replies`` a thread's parent and replies; ``cursor`` is an offset."""
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        with self.lock:
            if method == "conversations.history":
                msgs = [m for m in self.messages if m.channel == cid and m.thread_ts is None]
            else:
                ts = str(body.get("ts", ""))
                msgs = [
                    m
                    for m in self.messages
                    if m.channel == cid and (m.ts == ts or m.thread_ts == ts)
                ]
                if not msgs:
                    return {"ok": False, "error": "thread_not_found"}
            msgs = sorted(msgs, key=lambda m: float(m.ts), reverse=True)
        limit = min(999, int(body.get("limit") or 100))
        start = int(body.get("cursor") or 0)
        page = msgs[start : start + limit]
        more = start + limit < len(msgs)
        meta = str(body.get("include_all_metadata", "")).lower() in ("1", "true")
        return {
            "ok": True,
            "messages": [m.as_api(with_metadata=meta) for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def keys_in(self, channel: str = "#alerts", event_type: str | None = None) -> list[str]:
        """The ``event_payload`` keys of every message in ``channel`` (threads included)."""
        out = []
        for m in self.messages_in(channel):
            md = m.metadata or {}
            if event_type is None or md.get("event_type") == event_type:
                out.append(str((md.get("event_payload") or {}).get("outbox_key", "")))
        return out

    def max_per_second(self, channel: str = "#alerts") -> int:
        """Most messages received for ``channel`` within any one-second window."""
        times = sorted(m.received_at for m in self.messages_in(channel))
        best, j = 0, 0
        for i, x in enumerate(times):
            while times[j] < x - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best
