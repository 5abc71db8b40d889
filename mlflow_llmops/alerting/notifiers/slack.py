"""Slack through ``slack-sdk``: incoming webhook or Web API (threads, resolved edits).

Incoming webhooks answer HTTP 200 with body ``ok`` and never raise; anything
else is classified here (429 and 5xx retried, 400/403/404/410 permanent). The
Web API posts the first notification of a group, answers repeats in its
thread and edits the first message when the group resolves. Retries are the
outbox's job, so the SDK's own retry handlers are switched off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.alerting.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    describe_alert,
    error_for_status,
    target_desc,
)
from mlflow_llmops.alerting.notify_config import SlackReceiver

TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
MAX_ALERTS_SHOWN = 10
_EMOJI = {"critical": ":red_circle:", "error": ":large_orange_circle:", "warning": ":warning:"}


class ThreadStore(Protocol):
    """Where the Web API mode remembers the first message of each group."""

    def get(self, receiver: str, group_id: str) -> tuple[str, str] | None: ...

    def put(self, receiver: str, group_id: str, channel: str, ts: str) -> None: ...

    def delete(self, receiver: str, group_id: str) -> None: ...


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _alert_block(a: Alert, ui: str | None) -> dict[str, Any]:
    emoji = ":white_check_mark:" if a.resolved else _EMOJI.get(a.severity.value, ":bell:")
    labels = ", ".join(
        f"{k}={v}" for k, v in sorted(a.labels.items()) if k not in ("alertname", "severity")
    )
    lines = [f"{emoji} *{a.name}* {labels}".strip(), describe_alert(a)]
    tgt = target_desc(a)
    if tgt:
        lines.append(f"model: `{tgt}`")
    summary = a.annotations.get("summary")
    if summary:
        lines.append(summary)
    description = a.annotations.get("description")
    if description and not a.resolved:
        lines.append(_cut(description, 600))
    links = []
    if a.annotations.get("traces_url"):
        links.append(f"<{a.annotations['traces_url']}|traces>")
    elif ui and a.labels.get("experiment_id"):
        links.append(f"<{ui.rstrip('/')}/#/experiments/{a.labels['experiment_id']}/traces|traces>")
    if a.annotations.get("runbook_url"):
        links.append(f"<{a.annotations['runbook_url']}|runbook>")
    if links:
        lines.append(" · ".join(links))
    when = a.ends_at if a.resolved and a.ends_at else a.starts_at
    lines.append(f"_{'resolved' if a.resolved else 'since'} {when:%Y-%m-%d %H:%M:%S} UTC_")
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), 2900)}}


def render_blocks(n: Notification) -> tuple[str, list[dict[str, Any]]]:
    """Block Kit message: header, one section per alert (value vs threshold and baseline,
    window, model and alias/version, links to traces and runbook), then context."""
    text = n.title
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(text, 150)}}
    ]
    if n.kind == "rollback" and n.rollback:
        r = n.rollback
        body = "\n".join(
            f"*{k}*: {v}"
            for k, v in (
                ("outcome", r.get("outcome")),
                ("mode", r.get("mode")),
                ("target", r.get("target_desc")),
                ("from → to", f"v{r.get('from_version')} → v{r.get('to_version')}"),
                ("reason", r.get("reason")),
                ("alert", r.get("alertname")),
                ("plan", r.get("plan_id")),
                ("takes effect", r.get("propagation")),
            )
            if v
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(body, 2900)}})
        return _cut(text, 3000), blocks
    if n.kind == "test":
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": n.text or "test message"}}
        )
        return text, blocks
    shown = (n.firing + n.resolved_alerts)[:MAX_ALERTS_SHOWN]
    for a in shown:
        blocks.append(_alert_block(a, n.mlflow_ui_url))
    extra = len(n.alerts) - len(shown)
    ctx = f"group `{_cut(n.group_key, 200)}` · notification #{n.seq}"
    if extra > 0:
        ctx = f"and {extra} more alert(s) · " + ctx
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": ctx}]})
    fallback = text + "\n" + "\n".join(f"{a.name}: {describe_alert(a)}" for a in shown)
    return _cut(fallback, 3000), blocks


class SlackNotifier:
    """Sends to one Slack receiver (webhook or Web API)."""

    def __init__(
        self,
        cfg: SlackReceiver,
        threads: ThreadStore | None = None,
        *,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.threads = threads
        if cfg.webhook_url is not None:
            self._webhook = WebhookClient(
                cfg.webhook_url.get_secret_value(), timeout=int(cfg.timeout_s), retry_handlers=[]
            )
            self._web = None
        else:
            assert cfg.token is not None
            self._webhook = None
            self._web = (client_factory or self._web_client)()

    def _web_client(self) -> WebClient:
        assert self.cfg.token is not None
        base = self.cfg.base_url if self.cfg.base_url.endswith("/") else self.cfg.base_url + "/"
        return WebClient(
            token=self.cfg.token.get_secret_value(),
            base_url=base,
            timeout=int(self.cfg.timeout_s),
            retry_handlers=[],
        )

    def send(self, n: Notification) -> SendResult:
        text, blocks = render_blocks(n)
        if self._webhook is not None:
            return self._send_webhook(text, blocks)
        return self._send_web(n, text, blocks)

    def _send_webhook(self, text: str, blocks: list[dict[str, Any]]) -> SendResult:
        assert self._webhook is not None
        try:
            resp = self._webhook.send(text=text, blocks=blocks)
        except OSError as e:
            raise NotifyError(f"slack webhook {self.name}: network error {e}") from e
        body = (resp.body or "").strip()
        if resp.status_code == 200 and body == "ok":
            return SendResult()
        if resp.status_code == 200:
            # Slack documents a 200 only with "ok"; anything else is a payload problem.
            raise NotifyError(
                f"slack webhook {self.name}: unexpected body {body[:200]!r}",
                permanent=True,
                status=200,
            )
        headers = {k.lower(): v for k, v in (resp.headers or {}).items()}
        ra = headers.get("retry-after")
        if isinstance(ra, list):
            ra = ra[0] if ra else None
        raise error_for_status(resp.status_code, f"slack webhook {self.name}", body, ra)

    def _send_web(self, n: Notification, text: str, blocks: list[dict[str, Any]]) -> SendResult:
        assert self._web is not None and self.cfg.channel
        thread = (
            self.threads.get(self.name, n.group_id) if self.threads and n.kind == "alert" else None
        )
        requests = 0
        try:
            if thread and n.status == "resolved":
                channel, ts = thread
                self._web.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
                requests += 1
                self.threads.delete(self.name, n.group_id)  # type: ignore[union-attr]
                return SendResult(external_ref=ts, requests=requests)
            if thread:
                channel, ts = thread
                resp = self._web.chat_postMessage(
                    channel=channel, text=text, blocks=blocks, thread_ts=ts
                )
                return SendResult(external_ref=str(resp.get("ts")), requests=1)
            resp = self._web.chat_postMessage(channel=self.cfg.channel, text=text, blocks=blocks)
            ts = str(resp.get("ts"))
            if self.threads and n.kind == "alert" and n.status == "firing":
                self.threads.put(
                    self.name, n.group_id, str(resp.get("channel") or self.cfg.channel), ts
                )
            return SendResult(external_ref=ts, requests=1)
        except SlackApiError as e:
            status = e.response.status_code
            err = str(e.response.get("error", "")) if e.response.data else ""
            headers = {k.lower(): v for k, v in (e.response.headers or {}).items()}
            ra = headers.get("retry-after")
            if isinstance(ra, list):
                ra = ra[0] if ra else None
            if status == 429 or status >= 500 or err in TRANSIENT_ERRORS:
                x = error_for_status(
                    status if status >= 400 else 503, f"slack {self.name}", err, ra
                )
                x.permanent = False
                raise x from e
            raise NotifyError(
                f"slack {self.name}: {err or 'HTTP ' + str(status)} (channel {self.cfg.channel})",
                permanent=True,
                status=status,
            ) from e
        except OSError as e:
            raise NotifyError(f"slack {self.name}: network error {e}") from e
