"""Slack through ``slack-sdk``: incoming webhook or Web API (threads, resolved edits).

Exactly once per (receiver, group, sequence) on the Web API: every message
carries its outbox key in Slack message metadata (``event_type``
``mlflow_llmops_notification``), and a notification that may have been sent
before a crash (claimed, never confirmed) is first looked for in the group's
thread and the channel's latest ``history_lookback`` messages
(``conversations.replies`` / ``conversations.history`` with
``include_all_metadata``); found means sent. The token needs ``chat:write``,
``channels:history`` (``groups:history`` for a private channel) and, when the
channel is given by name, ``channels:read`` to find its ID. Incoming webhooks
cannot be asked what they received: a crash mid-send repeats that one message.

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
from mlflow_llmops.core.http import header
from mlflow_llmops.notify.config import SlackReceiver
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    NotifyError,
    SendResult,
    describe_alert,
    error_for_status,
    target_desc,
)

TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
MAX_ALERTS_SHOWN = 10
#: the ``event_type`` of the message metadata that carries the outbox key
METADATA_EVENT_TYPE = "mlflow_llmops_notification"
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
                cfg.webhook_url.get_secret_value(),
                timeout=int(cfg.timeout.total_seconds()),
                retry_handlers=[],
            )
            self._web = None
        else:
            assert cfg.token is not None
            self._webhook = None
            self._web = (client_factory or self._web_client)()
        #: the channel's ID once known (history is read by ID)
        self._channel: str | None = None

    def _web_client(self) -> WebClient:
        assert self.cfg.token is not None
        base = self.cfg.base_url if self.cfg.base_url.endswith("/") else self.cfg.base_url + "/"
        return WebClient(
            token=self.cfg.token.get_secret_value(),
            base_url=base,
            timeout=int(self.cfg.timeout.total_seconds()),
            retry_handlers=[],
        )

    def send(self, n: Notification) -> SendResult:
        text, blocks = render_blocks(n)
        if self._webhook is not None:
            return self._send_webhook(text, blocks)
        return self._send_web(n, text, blocks)

    def _channel_id(self) -> str:
        """The configured channel's ID (history needs the ID, not ``#name``)."""
        if self._channel is not None:
            return self._channel
        name = str(self.cfg.channel)
        if not name.startswith("#"):
            self._channel = name
            return name
        assert self._web is not None
        cursor = None
        for _ in range(20):
            resp = self._web.conversations_list(
                types="public_channel,private_channel",
                exclude_archived=True,
                limit=200,
                cursor=cursor,
            )
            for c in resp.get("channels") or []:
                if c.get("name") == name[1:]:
                    self._channel = str(c["id"])
                    return self._channel
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        raise NotifyError(f"slack {self.name}: channel {name} not found", permanent=True)

    def _already_sent(
        self, key: str, thread: tuple[str, str] | None
    ) -> tuple[tuple[str, str, bool] | None, int]:
        """Look for a message tagged ``key`` in the group's thread, then in the channel's
        latest ``history_lookback`` top-level messages (a resolved edit is on the thread's
        first message). Returns ((channel, ts, is_top_level) or None, requests made)."""
        assert self._web is not None
        requests = 0

        def tagged(m: dict[str, Any]) -> bool:
            md = m.get("metadata") or {}
            return (
                md.get("event_type") == METADATA_EVENT_TYPE
                and (md.get("event_payload") or {}).get("outbox_key") == key
            )

        if thread is not None:
            channel, ts = thread
            resp = self._web.conversations_replies(
                channel=channel, ts=ts, include_all_metadata=True, limit=200
            )
            requests += 1
            for m in resp.get("messages") or []:
                if tagged(m):
                    return (channel, str(m["ts"]), m["ts"] == ts), requests
        channel = thread[0] if thread else self._channel_id()
        seen, cursor = 0, None
        while seen < self.cfg.history_lookback:
            resp = self._web.conversations_history(
                channel=channel,
                include_all_metadata=True,
                limit=min(200, self.cfg.history_lookback - seen),
                cursor=cursor,
            )
            requests += 1
            msgs = resp.get("messages") or []
            for m in msgs:
                if tagged(m):
                    return (channel, str(m["ts"]), True), requests
            seen += len(msgs)
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not msgs or not cursor:
                break
        return None, requests

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
        ra = header(resp.headers, "retry-after")
        raise error_for_status(resp.status_code, f"slack webhook {self.name}", body, ra)

    def _send_web(self, n: Notification, text: str, blocks: list[dict[str, Any]]) -> SendResult:
        """Post (or reply in the group's thread, or edit its first message when it resolves),
        tagged with the outbox key in the message metadata. A notification that may have
        been sent already is looked for in the channel first, and not sent again if found."""
        assert self._web is not None and self.cfg.channel
        thread = (
            self.threads.get(self.name, n.group_id) if self.threads and n.kind == "alert" else None
        )
        meta = (
            {
                "event_type": METADATA_EVENT_TYPE,
                "event_payload": {"outbox_key": n.outbox_key, "seq": n.seq}
                | ({"epoch": n.epoch} if n.epoch is not None else {}),
            }
            if n.outbox_key
            else None
        )
        requests = 0
        try:
            if n.maybe_sent and n.outbox_key:
                found, looked = self._already_sent(n.outbox_key, thread)
                requests += looked
                if found is not None:
                    channel, ts, parent = found
                    if self.threads and n.kind == "alert":
                        if n.status == "resolved":
                            self.threads.delete(self.name, n.group_id)
                        elif parent and thread is None:
                            self.threads.put(self.name, n.group_id, channel, ts)
                    return SendResult(external_ref=ts, requests=requests)
            if thread and n.status == "resolved":
                channel, ts = thread
                self._web.chat_update(
                    channel=channel, ts=ts, text=text, blocks=blocks, metadata=meta
                )
                self.threads.delete(self.name, n.group_id)  # type: ignore[union-attr]
                return SendResult(external_ref=ts, requests=requests + 1)
            if thread:
                channel, ts = thread
                resp = self._web.chat_postMessage(
                    channel=channel, text=text, blocks=blocks, thread_ts=ts, metadata=meta
                )
                return SendResult(external_ref=str(resp.get("ts")), requests=requests + 1)
            resp = self._web.chat_postMessage(
                channel=self.cfg.channel, text=text, blocks=blocks, metadata=meta
            )
            ts = str(resp.get("ts"))
            if resp.get("channel"):
                self._channel = str(resp["channel"])
            if self.threads and n.kind == "alert" and n.status == "firing":
                self.threads.put(
                    self.name, n.group_id, str(resp.get("channel") or self.cfg.channel), ts
                )
            return SendResult(external_ref=ts, requests=requests + 1)
        except SlackApiError as e:
            status = e.response.status_code
            err = str(e.response.get("error", "")) if e.response.data else ""
            ra = header(e.response.headers, "retry-after")
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
