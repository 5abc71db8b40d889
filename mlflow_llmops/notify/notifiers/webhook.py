"""A generic JSON webhook, signed with HMAC-SHA256 so the receiver can trust it.

The body has the shape of Alertmanager's webhook (``version: "4"``), so
existing webhook consumers work unchanged. Signature header:
``X-Llmops-Signature: t=<unix seconds>,v1=<hex hmac_sha256(secret, "<t>.<body>")>``
(the timestamp bounds replay); check it with ``verify_signature``.

Every POST carries ``Idempotency-Key: <outbox key>``, the same on every retry of
one (receiver, group, sequence): a receiver that keeps the keys it has seen (as
Stripe-style APIs do) applies a notification re-sent after a crash only once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from mlflow_llmops.notify.config import WebhookReceiver
from mlflow_llmops.notify.notifiers.alertmanager import to_postable
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    error_for_status,
)

SIGNATURE_HEADER = "X-Llmops-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: the lease epoch of the monitor that sent it (a receiver may refuse older epochs)
EPOCH_HEADER = "X-Llmops-Epoch"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str, body: bytes, header: str, *, now: datetime, tolerance_s: float = 300
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and is at most ``tolerance_s`` old."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now.timestamp() - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), header)


def webhook_body(n: Notification) -> dict[str, Any]:
    return {
        "version": "4",
        "kind": n.kind,
        "groupKey": n.group_key,
        "sequence": n.seq,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": dict(n.group_labels),
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": n.mlflow_ui_url or "",
        "title": n.title,
        "alerts": [
            {
                **to_postable(a, n.mlflow_ui_url),
                "status": "resolved" if a.resolved else "firing",
                "fingerprint": a.fingerprint,
                "value": a.value,
                "threshold": a.threshold,
                "baseline": a.baseline,
                "windowSeconds": a.window_s,
            }
            for a in n.alerts
        ],
        "rollback": dict(n.rollback) if n.rollback else None,
        "text": n.text or None,
    }


class WebhookNotifier:
    """POSTs signed JSON to one URL."""

    def __init__(
        self,
        cfg: WebhookReceiver,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.clock = clock or (lambda: datetime.now(UTC))

    def send(self, n: Notification) -> SendResult:
        body = json.dumps(webhook_body(n), separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", **self.cfg.headers}
        if n.outbox_key:
            headers[IDEMPOTENCY_HEADER] = n.outbox_key
        if n.epoch is not None:
            headers[EPOCH_HEADER] = str(n.epoch)
        if self.cfg.secret is not None:
            headers[SIGNATURE_HEADER] = sign(
                self.cfg.secret.get_secret_value(), body, int(self.clock().timestamp())
            )
        try:
            r = self.session.post(
                self.cfg.url, data=body, headers=headers, timeout=self.cfg.timeout.total_seconds()
            )
        except requests.RequestException as e:
            raise NotifyError(f"webhook {self.name}: {type(e).__name__}: {e}") from e
        if r.status_code // 100 != 2:
            raise error_for_status(
                r.status_code, f"webhook {self.name}", r.text, r.headers.get("Retry-After")
            )
        return SendResult(requests=1)
