"""Configuration of notifications (receivers, routes): ``alerting.notifications``.
Import-light: models only.

Shaped like Alertmanager's configuration (receivers, a route tree, inhibit
rules) so SREs read it without a manual. Secrets are written as ``${VAR}`` and
filled from the environment by the config loader; they are ``SecretStr`` so
they never appear in logs or ``config show``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import Duration


class RateLimit(_Section):
    """Token bucket: ``per_second`` sustained, ``burst`` at once (Slack: about 1/s per channel)."""

    per_second: float = Field(default=1.0, gt=0)
    burst: int = Field(default=5, ge=1)


class _Receiver(_Section):
    deprecated_keys: ClassVar[dict[str, str]] = {"timeout_s": "timeout"}

    name: str
    #: also notify when alerts resolve
    send_resolved: bool = True
    #: None = unlimited
    rate_limit: RateLimit | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", v):
            raise ValueError("receiver names use letters, digits and _ . : - only")
        return v

    @property
    def resend_interval_active(self) -> timedelta | None:
        """Re-post every active alert this often, whatever dedup decided (Alertmanager)."""
        return None

    @property
    def one_request_per_alert(self) -> bool:
        """A group notification goes out as one request per alert (PagerDuty per instance)."""
        return False


class SlackReceiver(_Receiver):
    """Slack through an incoming webhook (``webhook_url``) or the Web API (``token`` + ``channel``).

    The Web API posts once per group, answers repeats in the thread and edits the
    first message when the group resolves; a webhook can only post.
    """

    type: Literal["slack"] = "slack"
    webhook_url: SecretStr | None = None
    token: SecretStr | None = None
    channel: str | None = None
    #: Web API base URL (tests point it at the fake server)
    base_url: str = "https://slack.com/api/"
    #: Web API: how many of the channel's latest messages to search for a notification
    #: that may have been sent before a crash (its outbox key is in the message metadata)
    history_lookback: int = Field(default=200, ge=1, le=5000)
    rate_limit: RateLimit | None = Field(default_factory=RateLimit)
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _mode(self) -> SlackReceiver:
        if bool(self.webhook_url) == bool(self.token):
            raise ValueError(
                f"receiver {self.name!r}: set exactly one of webhook_url (incoming webhook) "
                "or token (+ channel, Web API)"
            )
        if self.token and not self.channel:
            raise ValueError(
                f"receiver {self.name!r}: token needs channel (e.g. '#alerts' or C0123)"
            )
        return self


class PagerDutyReceiver(_Receiver):
    """PagerDuty Events API v2: one incident per alert group (``dedup_key`` from the group
    key, as Alertmanager), or per alert instance with ``incident_per: instance``."""

    type: Literal["pagerduty"] = "pagerduty"
    routing_key: SecretStr
    base_url: str = "https://events.pagerduty.com"
    #: ``pagerduty`` (maintained) or ``pdpyras`` (deprecated upstream; optional extra)
    backend: Literal["pagerduty", "pdpyras"] = "pagerduty"
    #: CA bundle to trust (a private proxy, tests); default: system CAs
    ca_bundle: str | None = None
    #: ``source`` of the events (default: the ``service`` label, else mlflow-llmops)
    source: str | None = None
    #: ``group``: one incident per alert group (a storm of 1,000 alerts in 50 groups opens
    #: 50); ``instance``: one per alert instance (its label set)
    incident_per: Literal["group", "instance"] = "group"
    timeout: Duration = timedelta(seconds=10)
    rate_limit: RateLimit | None = Field(
        default_factory=lambda: RateLimit(per_second=2.0, burst=20)
    )

    @field_validator("base_url")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("the PagerDuty clients require an https:// base_url")
        return v.rstrip("/")

    @property
    def one_request_per_alert(self) -> bool:
        return self.incident_per == "instance"


class AlertmanagerReceiver(_Receiver):
    """Forward to a Prometheus Alertmanager (``POST /api/v2/alerts``); it groups on its own.

    Like Prometheus, the active alerts are re-posted every ``resend_interval`` (whatever
    our dedup decided) with ``endsAt`` = now + ``alert_validity``: Alertmanager keeps them
    active while they are re-posted and resolves them once they are not.
    """

    type: Literal["alertmanager"] = "alertmanager"
    url: str
    timeout: Duration = timedelta(seconds=10)
    #: re-post the active alerts this often (Prometheus' ``--rules.alert.resend-delay``)
    resend_interval: Duration = timedelta(minutes=1)
    #: a firing alert's ``endsAt`` lies this far after each post; default 4 x the longer
    #: of ``resend_interval`` and ``alerting.evaluation_interval``, as in Prometheus
    alert_validity: Duration | None = None

    @model_validator(mode="after")
    def _validity(self) -> AlertmanagerReceiver:
        if self.resend_interval <= timedelta(0):
            raise ValueError(f"receiver {self.name!r}: resend_interval must be positive")
        if self.alert_validity is not None and self.alert_validity <= self.resend_interval:
            raise ValueError(
                f"receiver {self.name!r}: alert_validity ({self.alert_validity}) must be longer "
                f"than resend_interval ({self.resend_interval}), or alerts would flap resolved"
            )
        return self

    def validity(self, evaluation_interval: timedelta) -> timedelta:
        return self.alert_validity or 4 * max(self.resend_interval, evaluation_interval)

    @property
    def resend_interval_active(self) -> timedelta | None:
        return self.resend_interval


class WebhookReceiver(_Receiver):
    """POST Alertmanager-webhook-shaped JSON, signed with HMAC-SHA256 when ``secret`` is set."""

    type: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)


class ConsoleReceiver(_Receiver):
    """Print to standard output (the demo, a first try)."""

    type: Literal["console"] = "console"


Receiver = Annotated[
    SlackReceiver | PagerDutyReceiver | AlertmanagerReceiver | WebhookReceiver | ConsoleReceiver,
    Field(discriminator="type"),
]


class Route(_Section):
    """A node of the route tree: alerts matching ``match``/``match_re`` go to ``receiver``.

    Children are tried first (depth first, in order); the first matching child
    wins unless it sets ``continue: true``. Timings and ``group_by`` inherit.
    """

    receiver: str | None = None
    match: dict[str, str] = Field(default_factory=dict)
    match_re: dict[str, str] = Field(default_factory=dict)
    group_by: tuple[str, ...] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = Field(default=False, alias="continue")
    routes: tuple[Route, ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("match_re")
    @classmethod
    def _regex(cls, v: dict[str, str]) -> dict[str, str]:
        for k, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"match_re.{k}: invalid regular expression {pattern!r}: {e}"
                ) from None
        return v


class InhibitRule(_Section):
    """While an alert matching ``source_match`` fires, alerts matching ``target_match`` with
    the same values of ``equal`` are not notified (critical inhibits warning)."""

    source_match: dict[str, str]
    target_match: dict[str, str]
    equal: tuple[str, ...] = ("alertname",)


def _default_inhibit() -> tuple[InhibitRule, ...]:
    return (
        InhibitRule(
            source_match={"severity": "critical"},
            target_match={"severity": "warning"},
            equal=("alertname",),
        ),
    )


class RetryPolicy(_Section):
    """How the outbox retries transient failures (429, 5xx, network)."""

    initial_backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(minutes=5)
    #: give up (status ``failed``, reported) after this many attempts...
    max_attempts: int = Field(default=12, ge=1)
    #: ...or once the notification is this old
    max_age: Duration = timedelta(hours=6)
    #: an in-flight send not confirmed within this is presumed lost and retried
    claim_timeout: Duration = timedelta(seconds=60)


class NotificationsConfig(_Section):
    """Receivers and routing of alert notifications."""

    receivers: tuple[Receiver, ...] = ()
    route: Route | None = None
    inhibit_rules: tuple[InhibitRule, ...] = Field(default_factory=_default_inhibit)
    group_by: tuple[str, ...] = ("alertname",)
    group_wait: Duration = timedelta(seconds=30)
    group_interval: Duration = timedelta(minutes=5)
    repeat_interval: Duration = timedelta(hours=4)
    #: a firing alert not re-submitted for this long is taken as resolved (a deleted rule,
    #: a stopped monitor); keep it well above the evaluation interval
    resolve_timeout: Duration = timedelta(minutes=30)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    #: the MLflow UI, for links to traces (``{mlflow_ui_url}/#/experiments/...``)
    mlflow_ui_url: str | None = None
    #: runbook of rules that set no ``runbook_url`` (``{alertname}`` and label templates
    #: allowed), e.g. https://wiki.internal/llm-runbooks#{alertname}
    runbook_url: str | None = None
    #: sent outbox rows are deleted after this
    outbox_retention: Duration = timedelta(days=7)

    @model_validator(mode="after")
    def _references(self) -> NotificationsConfig:
        names = [r.name for r in self.receivers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"receivers: duplicate name(s) {sorted(dupes)}; names must be unique")
        if self.route is not None:
            if self.route.receiver is None:
                raise ValueError("route.receiver: the root route needs a receiver (the default)")

            def walk(r: Route, where: str) -> None:
                if r.receiver is not None and r.receiver not in names:
                    raise ValueError(
                        f"{where}.receiver: unknown receiver {r.receiver!r}; "
                        f"define it under notifications.receivers (known: {names})"
                    )
                for i, child in enumerate(r.routes):
                    walk(child, f"{where}.routes[{i}]")

            walk(self.route, "route")
        return self

    def receiver(
        self, name: str
    ) -> (
        SlackReceiver | PagerDutyReceiver | AlertmanagerReceiver | WebhookReceiver | ConsoleReceiver
    ):
        for r in self.receivers:
            if r.name == name:
                return r
        raise KeyError(name)
