"""A fake PagerDuty Events API v2 over TLS on 127.0.0.1 (the client libraries insist on https).

Validates events like PagerDuty does (``routing_key``, ``event_action``,
``payload.summary`` up to 1,024 characters, ``severity``, ``dedup_key`` up to
255), answers ``202 {"status": "success", "dedup_key": ...}`` and keeps
incidents by ``dedup_key`` (a trigger on a resolved key opens a new one), so
tests can count incidents per alert instance. Serves a throwaway certificate
from ``trustme``; point clients at ``ca_path``.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_llmops.testing.fake_slack import FakeHttpServer, Recorded

SEVERITIES = {"critical", "error", "warning", "info"}


@dataclass(frozen=True)
class PagerDutyFault:
    status: int = 500
    retry_after: float | None = None
    delay_s: float = 0.0


@dataclass
class Incident:
    dedup_key: str
    status: str  # triggered | acknowledged | resolved
    summary: str
    severity: str
    triggers: int = 1
    events: list[dict[str, Any]] = field(default_factory=list)


class FakePagerDutyServer(FakeHttpServer):
    """``with FakePagerDutyServer() as pd: EventsApiV2Client(key, base_url=pd.url, verify=pd.ca_path)``."""

    def __init__(self, *, routing_keys: tuple[str, ...] | None = None, **kw: Any) -> None:
        try:
            import trustme
        except ImportError:
            raise ImportError(
                "FakePagerDutyServer serves HTTPS with a throw-away CA from trustme: "
                "pip install 'mlflow-llmops[testing]'"
            ) from None
        self._ca = trustme.CA()
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        self._dir = Path(tempfile.mkdtemp(prefix="fake-pd-"))
        self.ca_path = str(self._dir / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        super().__init__(ssl_context=ctx, **kw)
        self.routing_keys = set(routing_keys) if routing_keys else None
        self.events: list[dict[str, Any]] = []
        self.change_events: list[dict[str, Any]] = []
        self.incidents: list[Incident] = []

    def open_incidents(self) -> list[Incident]:
        with self.lock:
            return [i for i in self.incidents if i.status != "resolved"]

    def incidents_for(self, dedup_key: str) -> list[Incident]:
        with self.lock:
            return [i for i in self.incidents if i.dedup_key == dedup_key]

    def handle(self, rec: Recorded) -> tuple[int, dict[str, str], str]:
        import time

        js = {"Content-Type": "application/json"}
        fault = self._next_fault()
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status != 202:
                hdr = dict(js)
                if fault.retry_after is not None:
                    hdr["Retry-After"] = f"{fault.retry_after:g}"
                return fault.status, hdr, json.dumps({"status": "error", "message": "scripted"})
        body = rec.body if isinstance(rec.body, dict) else None
        if body is None:
            return (
                400,
                js,
                json.dumps(
                    {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": ["body is not JSON"],
                    }
                ),
            )
        errors = self._validate(rec.path, body)
        if errors:
            return (
                400,
                js,
                json.dumps(
                    {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": errors,
                    }
                ),
            )
        if rec.path == "/v2/change/enqueue":
            with self.lock:
                self.change_events.append(body)
            return 202, js, json.dumps({"status": "success", "message": "Change event processed"})
        action = body["event_action"]
        key = body.get("dedup_key") or uuid.uuid4().hex
        with self.lock:
            self.events.append(body)
            current = next((i for i in reversed(self.incidents) if i.dedup_key == key), None)
            if action == "trigger":
                if current is None or current.status == "resolved":
                    p = body["payload"]
                    self.incidents.append(
                        Incident(key, "triggered", p["summary"], p["severity"], events=[body])
                    )
                else:
                    current.triggers += 1
                    current.events.append(body)
            elif current is not None and current.status != "resolved":
                current.status = "resolved" if action == "resolve" else "acknowledged"
                current.events.append(body)
        return (
            202,
            js,
            json.dumps({"status": "success", "message": "Event processed", "dedup_key": key}),
        )

    def _validate(self, path: str, body: dict[str, Any]) -> list[str]:
        errs = []
        key = body.get("routing_key")
        if not key or (self.routing_keys is not None and key not in self.routing_keys):
            errs.append("'routing_key' is invalid")
        if path == "/v2/change/enqueue":
            if not (body.get("payload") or {}).get("summary"):
                errs.append("'payload.summary' is missing")
            return errs
        if path != "/v2/enqueue":
            return [f"unknown path {path}"]
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errs.append("'event_action' is invalid")
        dk = body.get("dedup_key")
        if dk is not None and (not isinstance(dk, str) or len(dk) > 255):
            errs.append("'dedup_key' must be a string of at most 255 characters")
        if action == "trigger":
            p = body.get("payload") or {}
            if not p.get("summary"):
                errs.append("'payload.summary' is missing")
            elif len(p["summary"]) > 1024:
                errs.append("'payload.summary' is longer than 1024 characters")
            if not p.get("source"):
                errs.append("'payload.source' is missing")
            if p.get("severity") not in SEVERITIES:
                errs.append("'payload.severity' is invalid")
        elif action in ("acknowledge", "resolve") and not dk:
            errs.append("'dedup_key' is required")
        return errs
