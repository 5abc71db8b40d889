"""A fake webhook receiver on 127.0.0.1 that applies each ``Idempotency-Key`` once.

Like an idempotent HTTP API: the first POST with a key is applied (``effects``)
and answered 200; a repeat of the key is answered 200 as well, but only counted
(``replays``). POSTs without the header are applied every time. Every request is
recorded; faults are scripted as for the fake Slack (``script(SlackFault(...))``).
"""

from __future__ import annotations

import json
from typing import Any

from mlflow_llmops.testing.fake_slack import FakeHttpServer, Recorded


class FakeWebhookReceiver(FakeHttpServer):
    """``url`` takes the POSTs; ``effects`` holds one body per distinct idempotency key."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.effects: list[Any] = []
        self.replays = 0
        self._seen: set[str] = set()

    def handle(self, rec: Recorded) -> tuple[int, dict[str, str], str]:
        js = {"Content-Type": "application/json"}
        fault = self._next_fault()
        if fault is not None and fault.status != 200:
            hdr = dict(js)
            if fault.retry_after is not None:
                hdr["Retry-After"] = f"{fault.retry_after:g}"
            return fault.status, hdr, json.dumps({"error": fault.body or "scripted"})
        key = rec.headers.get("idempotency-key")
        with self.lock:
            if key is not None and key in self._seen:
                self.replays += 1
                return 200, js, json.dumps({"ok": True, "replayed": True})
            if key is not None:
                self._seen.add(key)
            self.effects.append(rec.body)
        return 200, js, json.dumps({"ok": True})
