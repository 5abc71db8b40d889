"""PagerDuty Events API v2 through the ``pagerduty`` package (or ``pdpyras``, deprecated).

One incident per alert group by default, as Alertmanager: ``dedup_key`` is
derived from the group key, each notification of the group triggers (updates)
that incident and the all-resolved one resolves it. ``incident_per: instance``
keys each alert's own incident by its fingerprint instead. Either way a
notification re-sent after a crash or a retry updates the same incident
instead of opening another (the Events API deduplicates by ``dedup_key``). Both clients retry 429 forever by
default; here every non-2xx answer is raised at once (``postprocess``) and
network retries are off, so the outbox owns the retry policy.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from datetime import UTC, datetime
from typing import Any

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.notify.config import PagerDutyReceiver
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    describe_alert,
    error_for_status,
    target_desc,
)

SUMMARY_MAX = 1024
#: alerts listed in a group incident's details (PagerDuty caps an event at 512 KB)
MAX_DETAILED = 50
PD_SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def dedup_key(a: Alert) -> str:
    """Stable per alert instance (its label set), within PagerDuty's 255 characters."""
    return f"mlflow-llmops/{a.name[:150]}/{a.fingerprint}"


def group_dedup_key(group_key: str) -> str:
    """Stable per alert group (Alertmanager hashes the group key the same way)."""
    return f"mlflow-llmops/group/{hashlib.sha256(group_key.encode()).hexdigest()}"


class _Status(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(getattr(response, "status_code", 0))
        self.response = response


def summary_for(a: Alert) -> str:
    tgt = target_desc(a)
    text = f"[{a.severity.value.upper()}] {a.name}"
    if tgt:
        text += f" on {tgt}"
    text += f": {describe_alert(a)}"
    if a.annotations.get("summary"):
        text += f". {a.annotations['summary']}"
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _links(a: Alert, ui: str | None) -> list[dict[str, str]]:
    links = []
    if a.annotations.get("traces_url"):
        links.append({"href": a.annotations["traces_url"], "text": "Traces in MLflow"})
    elif ui and a.labels.get("experiment_id"):
        links.append(
            {
                "href": f"{ui.rstrip('/')}/#/experiments/{a.labels['experiment_id']}/traces",
                "text": "Traces in MLflow",
            }
        )
    if a.annotations.get("runbook_url"):
        links.append({"href": a.annotations["runbook_url"], "text": "Runbook"})
    return links


def _details(a: Alert) -> dict[str, Any]:
    return {
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "value": a.value,
        "threshold": a.threshold,
        "baseline": a.baseline,
        "window_s": a.window_s,
        "episode": a.episode,
        "starts_at": a.starts_at.isoformat(),
        "fingerprint": a.fingerprint,
    }


class _Backend:
    """The two client libraries behind one small surface."""

    def __init__(self, cfg: PagerDutyReceiver) -> None:
        self.cfg = cfg
        key = cfg.routing_key.get_secret_value()
        if cfg.backend == "pagerduty":
            from pagerduty import EventsApiV2Client

            class Client(EventsApiV2Client):
                def postprocess(self, response: Any) -> None:
                    if not response.is_success:
                        raise _Status(response)

            kw: dict[str, Any] = {"timeout": cfg.timeout.total_seconds()}
            if cfg.ca_bundle:
                kw["verify"] = cfg.ca_bundle
            self.events = Client(key, base_url=cfg.base_url, **kw)
            self.events.max_network_attempts = 0
            self.events.timeout = cfg.timeout.total_seconds()
            self.change = self.events
            self._kind = "pagerduty"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pdpyras = importlib.import_module("pdpyras")

            def bounded(base: type) -> type:
                class Session(base):  # type: ignore[misc,valid-type]
                    def postprocess(self, response: Any, suffix: Any = None) -> None:
                        if not response.ok:
                            raise _Status(response)

                return Session

            self.events = bounded(pdpyras.EventsAPISession)(key)
            self.change = bounded(pdpyras.ChangeEventsAPISession)(key)
            for s in (self.events, self.change):
                s.url = cfg.base_url
                s.max_network_attempts = 0
                s.timeout = cfg.timeout.total_seconds()
                if cfg.ca_bundle:
                    # requests lets REQUESTS_CA_BUNDLE override session.verify unless
                    # the environment is ignored: an explicit ca_bundle must win
                    s.trust_env = False
                    s.verify = cfg.ca_bundle
            self._kind = "pdpyras"

    def trigger(self, **kw: Any) -> None:
        self.events.trigger(**kw)

    def resolve(self, key: str) -> None:
        self.events.resolve(key)

    def change_event(
        self,
        summary: str,
        source: str,
        details: dict[str, Any],
        links: list[dict[str, str]],
        timestamp: str,
    ) -> None:
        # pass the timestamp: pagerduty 7.2's default one raises AttributeError
        self.change.submit(
            summary, source=source, custom_details=details, links=links, timestamp=timestamp
        )


class PagerDutyNotifier:
    """Sends trigger / resolve events per alert instance and change events for rollbacks."""

    def __init__(self, cfg: PagerDutyReceiver) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.backend = _Backend(cfg)

    def _call(self, fn: Any, *args: Any, **kw: Any) -> None:
        try:
            fn(*args, **kw)
        except _Status as s:
            r = s.response
            body = getattr(r, "text", "") or ""
            raise error_for_status(
                r.status_code, f"pagerduty {self.name}", body, r.headers.get("retry-after")
            ) from None
        except NotifyError:
            raise
        except Exception as e:  # noqa: BLE001 - both clients wrap network errors differently
            raise NotifyError(f"pagerduty {self.name}: {type(e).__name__}: {e}") from e

    def send(self, n: Notification) -> SendResult:
        source = self.cfg.source
        if n.kind == "rollback" and n.rollback:
            r = n.rollback
            summary = (
                f"mlflow-llmops rollback {r.get('outcome')}: {r.get('target_desc')} "
                f"v{r.get('from_version')} -> v{r.get('to_version')} ({r.get('mode')})"
            )[:SUMMARY_MAX]
            self._call(
                self.backend.change_event,
                summary,
                source or "mlflow-llmops",
                {k: v for k, v in r.items() if isinstance(v, str | int | float | bool | None)},
                [],
                (n.created_at or datetime.now(UTC)).isoformat(),
            )
            return SendResult(requests=1)
        if n.kind == "test":
            key = f"mlflow-llmops/test/{n.group_id}"
            self._call(
                self.backend.trigger,
                summary=(n.text or "mlflow-llmops test notification")[:SUMMARY_MAX],
                source=source or "mlflow-llmops",
                dedup_key=key,
                severity="info",
            )
            self._call(self.backend.resolve, key)
            return SendResult(external_ref=key, requests=2)
        if self.cfg.incident_per == "group":
            return self._send_group(n)
        keys = []
        for a in n.alerts:
            key = dedup_key(a)
            if a.resolved:
                self._call(self.backend.resolve, key)
            else:
                self._call(
                    self.backend.trigger,
                    summary=summary_for(a),
                    source=source or a.labels.get("service") or "mlflow-llmops",
                    dedup_key=key,
                    severity=PD_SEVERITIES.get(a.severity.value, "error"),
                    custom_details=_details(a),
                    links=_links(a, n.mlflow_ui_url) or None,
                )
            keys.append(key)
        return SendResult(external_ref=",".join(keys)[:2000], requests=len(keys))

    def _send_group(self, n: Notification) -> SendResult:
        """One event per notification on the group's incident: trigger while any alert
        fires (the summary counts them, details list them), resolve when none does."""
        key = group_dedup_key(n.group_key)
        firing = n.firing
        if not firing:
            self._call(self.backend.resolve, key)
            return SendResult(external_ref=key, requests=1)
        first = firing[0]
        summary = n.title
        if len(firing) == 1:
            summary = summary_for(first)
        elif first.annotations.get("summary"):
            summary += f": {first.annotations['summary']}"
        common = n.common_labels
        self._call(
            self.backend.trigger,
            summary=summary[:SUMMARY_MAX],
            source=self.cfg.source or common.get("service") or "mlflow-llmops",
            dedup_key=key,
            severity=PD_SEVERITIES.get(n.top_severity.value, "error"),
            custom_details={
                "group_key": n.group_key,
                "group_labels": dict(n.group_labels),
                "num_firing": len(firing),
                "num_resolved": len(n.resolved_alerts),
                "firing": [_details(a) for a in firing[:MAX_DETAILED]],
                "resolved": [_details(a) for a in n.resolved_alerts[:MAX_DETAILED]],
            },
            links=_links(first, n.mlflow_ui_url) or None,
        )
        return SendResult(external_ref=key, requests=1)
