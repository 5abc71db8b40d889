"""The dispatcher: the ``AlertSink`` the monitor submits alerts to.

``submit`` routes each alert to its receivers and files it in an aggregation
group (state store). ``flush`` runs the due groups through inhibit, silence
and dedup, writes each notification to the outbox together with the
notification-log update (one transaction: decided once, never lost), then
delivers due outbox rows: rate limit, send, retry with backoff and jitter
that honours Retry-After (counted from the answer that asked for it). A row
is claimed before it is sent, so it is sent once per (receiver, group,
sequence) unless the sender dies mid-send; then the claim expires and the row
is re-sent with ``maybe_sent`` and its outbox key, so the receiver's effect
stays single: PagerDuty deduplicates by ``dedup_key``, the Slack Web API
notifier looks for the key in the channel's message metadata first, webhooks
get it as ``Idempotency-Key``. Only a Slack incoming webhook, which cannot be
asked, may show that one message twice (at most one repeat per crash).
Alertmanager receivers also get every active alert re-posted
each ``resend_interval`` outside the outbox (``resend``), as Prometheus does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from mlflow_llmops.alerting.model import Alert, AlertState
from mlflow_llmops.core.clock import Clock, utc
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.notify import tables as t
from mlflow_llmops.notify.config import NotificationsConfig, Route
from mlflow_llmops.notify.notifiers import Notification, Notifier, NotifyError, build_notifier
from mlflow_llmops.notify.notifiers.base import alert_from_dict, alert_to_dict, outbox_key
from mlflow_llmops.notify.stages import (
    Inhibitor,
    Matcher,
    NflogEntry,
    RouteMatch,
    Silence,
    TokenBucket,
    backoff,
    gives_up,
    group_key,
    group_labels_for,
    inhibit,
    match_routes,
    needs_update,
    silence,
    silenced_by,
)
from mlflow_llmops.statestore.state import StateStore

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """What the monitor hands alerts to (contract in docs/contracts.md)."""

    def submit(self, alerts: Sequence[Alert], now: datetime) -> None: ...

    def flush(self, now: datetime) -> DispatchReport: ...


@dataclass
class DispatchReport:
    """What one flush did, for the monitor's log line and for tests."""

    groups_flushed: int = 0
    notifications_enqueued: int = 0
    sent: int = 0
    retry_scheduled: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    inhibited: int = 0
    silenced: int = 0
    deduplicated: int = 0
    rate_limited: int = 0
    pending: int = 0
    requests: int = 0
    #: active alerts re-posted to Alertmanager receivers, and re-posts that failed
    resent: int = 0
    resend_failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.sent} sent, {self.notifications_enqueued} new, {self.pending} pending, "
            f"{self.retry_scheduled} to retry, {len(self.failed)} failed, "
            f"{self.inhibited} inhibited, {self.silenced} silenced"
            + (f", {self.resent} re-posted to Alertmanager" if self.resent else "")
            + (f", {len(self.resend_failed)} re-posts failed" if self.resend_failed else "")
        )


class SqlThreadStore:
    """Slack Web API threads kept in the state store (survive restarts)."""

    def __init__(self, store: StateStore, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))

    def get(self, receiver: str, group_id: str) -> tuple[str, str] | None:
        with self.store.engine.connect() as c:
            row = c.execute(
                sa.select(t.threads.c.channel, t.threads.c.ts).where(
                    t.threads.c.receiver == receiver, t.threads.c.group_id == group_id
                )
            ).first()
        return (row[0], row[1]) if row else None

    def put(self, receiver: str, group_id: str, channel: str, ts: str) -> None:
        with self.store.engine.begin() as c:
            c.execute(
                t.threads.delete().where(
                    t.threads.c.receiver == receiver, t.threads.c.group_id == group_id
                )
            )
            c.execute(
                t.threads.insert().values(
                    receiver=receiver,
                    group_id=group_id,
                    channel=channel,
                    ts=ts,
                    created_at=self.clock(),
                )
            )

    def delete(self, receiver: str, group_id: str) -> None:
        with self.store.engine.begin() as c:
            c.execute(
                t.threads.delete().where(
                    t.threads.c.receiver == receiver, t.threads.c.group_id == group_id
                )
            )


class Silences:
    """Silences in the state store (``alerts silence add|list|expire``)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        store.ensure_schema(t.NOTIFY_MIGRATIONS)

    def add(
        self,
        matchers: Sequence[str | Matcher],
        *,
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str,
        now: datetime,
    ) -> str:
        import uuid

        parsed = tuple(m if isinstance(m, Matcher) else Matcher.parse(m) for m in matchers)
        if not parsed:
            raise ValueError("a silence needs at least one matcher, e.g. alertname=HighCost")
        if ends_at <= starts_at:
            raise ValueError("a silence must end after it starts (check --duration / --ends)")
        sid = str(uuid.uuid4())
        with self.store.engine.begin() as c:
            c.execute(
                t.silences.insert().values(
                    id=sid,
                    matchers=json.dumps([[m.name, m.op, m.value] for m in parsed]),
                    starts_at=starts_at,
                    ends_at=ends_at,
                    created_by=created_by,
                    comment=comment,
                    created_at=now,
                )
            )
        return sid

    def list(self, now: datetime, *, include_expired: bool = False) -> list[Silence]:
        q = sa.select(t.silences)
        if not include_expired:
            q = q.where(t.silences.c.ends_at > now)
        with self.store.engine.connect() as c:
            rows = c.execute(q.order_by(t.silences.c.created_at)).mappings().all()
        return [
            Silence(
                id=r["id"],
                matchers=tuple(Matcher(*m) for m in json.loads(r["matchers"])),
                starts_at=utc(r["starts_at"]),  # type: ignore[arg-type]
                ends_at=utc(r["ends_at"]),  # type: ignore[arg-type]
                created_by=r["created_by"],
                comment=r["comment"],
            )
            for r in rows
        ]

    def expire(self, silence_id: str, now: datetime) -> bool:
        with self.store.engine.begin() as c:
            n = c.execute(
                t.silences.update()
                .where(t.silences.c.id == silence_id, t.silences.c.ends_at > now)
                .values(ends_at=now)
            ).rowcount
        return bool(n)


@dataclass(frozen=True)
class _GroupRef:
    """The aggregation group one route match files an alert in: its labels, its key (as
    in Alertmanager) and its id (a hash of the key)."""

    route: RouteMatch
    labels: dict[str, str]
    key: str
    id: str

    @classmethod
    def of(cls, m: RouteMatch, alert_labels: Mapping[str, str]) -> _GroupRef:
        glabels = group_labels_for(alert_labels, m.group_by)
        gkey = group_key(m.path, m.receiver, glabels)
        return cls(m, glabels, gkey, hashlib.sha256(gkey.encode()).hexdigest()[:32])


@dataclass
class _Filing:
    """One ``submit`` batch on its way into the groups: what the store holds (groups and
    whether they are active, group members) and the member rows to write."""

    conn: sa.Connection
    now: datetime
    active: dict[str, bool]
    known: set[tuple[str, str]]
    updates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    inserts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(cls, c: sa.Connection, now: datetime) -> _Filing:
        active = {
            r[0]: bool(r[1]) for r in c.execute(sa.select(t.groups.c.group_id, t.groups.c.active))
        }
        known = set(
            c.execute(sa.select(t.group_alerts.c.group_id, t.group_alerts.c.fingerprint)).tuples()
        )
        return cls(c, now, active, known)

    def stage_member(self, gid: str, a: Alert) -> None:
        """A known member is updated (the last submission wins); a new one is inserted
        unless it is already resolved."""
        blob = json.dumps(alert_to_dict(a))
        key = (gid, a.fingerprint)
        if key in self.known:
            self.updates[key] = {"g": gid, "f": a.fingerprint, "j": blob, "r": a.resolved}
        elif not a.resolved:
            self.inserts[key] = {
                "group_id": gid,
                "fingerprint": a.fingerprint,
                "alert_json": blob,
                "resolved": False,
                "updated_at": self.now,
            }

    def write_members(self) -> None:
        if self.updates:
            self.conn.execute(
                t.group_alerts.update()
                .where(
                    t.group_alerts.c.group_id == sa.bindparam("g"),
                    t.group_alerts.c.fingerprint == sa.bindparam("f"),
                )
                .values(
                    alert_json=sa.bindparam("j"), resolved=sa.bindparam("r"), updated_at=self.now
                ),
                list(self.updates.values()),
            )
        if self.inserts:
            self.conn.execute(t.group_alerts.insert(), list(self.inserts.values()))


@dataclass(frozen=True)
class _Group:
    """A due ``groups`` row, parsed: what dedup and the notification need."""

    group_id: str
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    send_resolved: bool
    group_interval: timedelta
    repeat_interval: timedelta
    seq: int
    #: what was last notified (the notification log entry); None if nothing yet
    notified: NflogEntry | None

    @classmethod
    def from_row(cls, g: Mapping[str, Any]) -> _Group:
        notified = (
            NflogEntry(
                notified_at=utc(g["notified_at"]),  # type: ignore[arg-type]
                firing=frozenset(json.loads(g["notified_firing"])),
                resolved=frozenset(json.loads(g["notified_resolved"])),
            )
            if g["notified_at"] is not None
            else None
        )
        return cls(
            group_id=g["group_id"],
            receiver=g["receiver"],
            group_key=g["group_key"],
            group_labels=json.loads(g["group_labels"]),
            send_resolved=bool(g["send_resolved"]),
            group_interval=timedelta(seconds=g["group_interval_s"]),
            repeat_interval=timedelta(seconds=g["repeat_interval_s"]),
            seq=int(g["seq"]),
            notified=notified,
        )


def _fingerprints(alerts: Sequence[Alert]) -> tuple[set[str], set[str]]:
    """The firing and the resolved alerts' fingerprints (a notification log entry)."""
    return (
        {a.fingerprint for a in alerts if not a.resolved},
        {a.fingerprint for a in alerts if a.resolved},
    )


@dataclass(frozen=True)
class _FlushContext:
    """What every due group of one flush shares: the inhibitor (built once from all
    firing alerts), the active silences, and the report the stages count into."""

    now: datetime
    inhibitor: Inhibitor
    silences: Sequence[Silence]
    report: DispatchReport


@dataclass
class _DeliveryPass:
    """One pass over the outbox: the groups whose next row must wait, and the sends."""

    now: datetime
    report: DispatchReport
    #: the ``time.monotonic()`` at which ``now`` was read
    started: float
    blocked: set[tuple[str, str]] = field(default_factory=set)
    sends: int = 0

    def answered_at(self) -> datetime:
        """A backoff or Retry-After counts from the answer that asked for it, not from
        the start of this flush (a 429 late in a long flush is not retried at once)."""
        return self.now + timedelta(seconds=time.monotonic() - self.started)


def _default_route(cfg: NotificationsConfig) -> Route:
    names = [r.name for r in cfg.receivers]
    return Route(
        receiver=names[0],
        routes=tuple(Route(receiver=n, continue_=True) for n in names),
    )


class Dispatcher:
    """Routes, groups, deduplicates and delivers alerts through an outbox (``AlertSink``)."""

    def __init__(
        self,
        config: NotificationsConfig,
        store: StateStore,
        *,
        notifiers: Mapping[str, Notifier] | None = None,
        rng: random.Random | None = None,
        max_sends_per_flush: int = 1000,
        rollback: Any = None,
        evaluation_interval: timedelta = timedelta(minutes=1),
    ) -> None:
        if not config.receivers:
            raise ConfigError(
                "alerting.notifications.receivers is empty; add a receiver "
                "(type: slack | pagerduty | alertmanager | webhook | console)"
            )
        self.config = config
        self.store = store
        store.ensure_schema(t.NOTIFY_MIGRATIONS)
        self.route = config.route or _default_route(config)
        self.threads = SqlThreadStore(store)
        self.silences = Silences(store)
        self._receivers = {r.name: r for r in config.receivers}
        self._notifiers: dict[str, Notifier] = dict(notifiers or {})
        self._buckets = {
            r.name: TokenBucket(r.rate_limit) for r in config.receivers if r.rate_limit is not None
        }
        self._rate_wait: dict[str, datetime] = {}
        self.rng = rng or random.Random()
        self.max_sends_per_flush = max_sends_per_flush
        #: rollback hooks (``mlflow_llmops.rollback.RollbackManager``, wired by the monitor):
        #: fed every submitted batch; their notes go through this outbox
        self.rollback = rollback
        self._last_purge: datetime | None = None
        #: how often the monitor re-submits (the validity of alerts sent to Alertmanager)
        self.evaluation_interval = evaluation_interval
        self._resent_at: dict[str, datetime] = {}
        self._resend_due: dict[str, datetime] = {}
        self._lock = threading.RLock()

    @property
    def max_group_wait(self) -> timedelta:
        """The longest ``group_wait`` of the route tree: how long a new group may wait."""
        waits = [self.config.group_wait]

        def walk(r: Route) -> None:
            if r.group_wait is not None:
                waits.append(r.group_wait)
            for child in r.routes:
                walk(child)

        walk(self.route)
        return max(waits)

    def notifier(self, name: str) -> Notifier:
        if name not in self._notifiers:
            self._notifiers[name] = build_notifier(
                self._receivers[name], self.threads, evaluation_interval=self.evaluation_interval
            )
        return self._notifiers[name]

    # -- submit ---------------------------------------------------------
    def submit(self, alerts: Sequence[Alert], now: datetime) -> None:
        """File firing and newly resolved alerts into their aggregation groups."""
        now = utc(now)
        if not alerts:
            return
        self._file(alerts, now)
        if self.rollback is not None:
            try:
                self.rollback.process(alerts, now)
            except Exception:  # noqa: BLE001 - a rollback failure must not stop notifications
                log.exception("rollback hooks failed")

    def _file(self, alerts: Sequence[Alert], now: datetime) -> None:
        """The route and group stages: file each alert in the group of every route it
        matches (one transaction per batch)."""
        with self._lock, self.store.engine.begin() as c:
            filing = _Filing.start(c, now)
            for a in alerts:
                for m in self._route(a):
                    self._group(filing, a, _GroupRef.of(m, a.labels))
            filing.write_members()

    def _route(self, a: Alert) -> list[RouteMatch]:
        """The route stage: the receivers (with their grouping settings) ``a`` goes to."""
        return match_routes(
            a.labels,
            self.route,
            group_by=self.config.group_by,
            group_wait=self.config.group_wait,
            group_interval=self.config.group_interval,
            repeat_interval=self.config.repeat_interval,
        )

    def _group(self, filing: _Filing, a: Alert, ref: _GroupRef) -> None:
        """The group stage: open (or wake) the group and stage ``a`` as its member. A
        resolved alert the group never had active is dropped: the receiver never heard of it."""
        active = filing.active.get(ref.id)
        if not active and a.resolved:
            return
        if not active:
            self._open_group(filing, ref, new=active is None)
        filing.active[ref.id] = True
        filing.stage_member(ref.id, a)

    def _open_group(self, filing: _Filing, ref: _GroupRef, *, new: bool) -> None:
        m = ref.route
        timers = {
            "active": True,
            "created_at": filing.now,
            "next_flush_at": filing.now + m.group_wait,
            "send_resolved": self._receivers[m.receiver].send_resolved,
            "group_wait_s": m.group_wait.total_seconds(),
            "group_interval_s": m.group_interval.total_seconds(),
            "repeat_interval_s": m.repeat_interval.total_seconds(),
        }
        if new:
            filing.conn.execute(
                t.groups.insert().values(
                    group_id=ref.id,
                    receiver=m.receiver,
                    group_key=ref.key,
                    group_labels=json.dumps(ref.labels),
                    notified_firing="[]",
                    notified_resolved="[]",
                    seq=0,
                    **timers,
                )
            )
        else:
            # an idle group wakes up: a fresh group_wait, same log and sequence
            filing.conn.execute(
                t.groups.update().where(t.groups.c.group_id == ref.id).values(**timers)
            )

    # -- flush ----------------------------------------------------------
    def flush(self, now: datetime) -> DispatchReport:
        """Notify the due groups, then deliver the due outbox rows."""
        now = utc(now)
        report = DispatchReport()
        with self._lock:
            started = time.monotonic()  # ``now`` was read about now (see ``deliver``)
            self.decide(now, report)
            self.deliver(now, report, started=started)
            self.resend(now, report)
            if self._last_purge is None or now - self._last_purge > timedelta(hours=1):
                self._last_purge = now
                self.purge(now)
        return report

    def decide(self, now: datetime, report: DispatchReport | None = None) -> DispatchReport:
        """Run the due groups through inhibit, silence and dedup; write what is to be sent
        to the outbox (without sending it)."""
        now = utc(now)
        report = report or DispatchReport()
        self._flush_groups(now, report)
        return report

    def _flush_groups(self, now: datetime, report: DispatchReport) -> None:
        due, firing = self._due_groups(now)
        if not due:
            return
        ctx = _FlushContext(
            now=now,
            inhibitor=Inhibitor(self.config.inhibit_rules, firing),
            silences=[s for s in self.silences.list(now) if s.active(now)],
            report=report,
        )
        for g in due:
            self._flush_group(_Group.from_row(g), ctx)

    def _due_groups(self, now: datetime) -> tuple[list[Mapping[str, Any]], list[Alert]]:
        """The active groups whose timer is due, and every firing alert (the inhibitor's
        sources, whatever group they are in); nothing when no group is due."""
        with self.store.engine.connect() as c:
            due = list(
                c.execute(
                    sa.select(t.groups).where(
                        t.groups.c.active.is_(True), t.groups.c.next_flush_at <= now
                    )
                ).mappings()
            )
            if not due:
                return [], []
            all_rows = c.execute(
                sa.select(t.group_alerts.c.alert_json, t.group_alerts.c.resolved)
            ).all()
        firing: dict[str, Alert] = {}
        for blob, resolved in all_rows:
            if not resolved:
                a = alert_from_dict(json.loads(blob))
                firing[a.fingerprint] = a
        return due, list(firing.values())

    def _flush_group(self, group: _Group, ctx: _FlushContext) -> None:
        """One due group through resolve-timeout, inhibit, silence and dedup; the
        notification and the log entry (set-notified) are written in one transaction."""
        with self.store.engine.begin() as c:
            alerts = self._resolve_stale(c, group.group_id, ctx.now)
            ctx.report.groups_flushed += 1
            kept, muted = inhibit(alerts, ctx.inhibitor)
            ctx.report.inhibited += muted
            kept, muted = silence(kept, ctx.silences, ctx.now)
            ctx.report.silenced += muted
            values: dict[str, Any] = {"next_flush_at": ctx.now + group.group_interval}
            if self._dedup(group, kept, ctx.now):
                values.update(self._set_notified(c, group, kept, ctx))
            elif alerts:
                ctx.report.deduplicated += 1
            c.execute(
                t.groups.update().where(t.groups.c.group_id == group.group_id).values(**values)
            )
            self._retire_resolved(c, group.group_id, ctx.now)

    def _resolve_stale(self, c: sa.Connection, gid: str, now: datetime) -> list[Alert]:
        """The group's alerts; one not re-submitted for ``resolve_timeout`` is resolved
        (and stored so), as in Alertmanager."""
        rows = c.execute(
            sa.select(t.group_alerts.c.alert_json, t.group_alerts.c.updated_at).where(
                t.group_alerts.c.group_id == gid
            )
        ).all()
        alerts = []
        timeout = self.config.resolve_timeout
        for blob, updated_at in rows:
            a = alert_from_dict(json.loads(blob))
            if not a.resolved and utc(updated_at) < now - timeout:  # type: ignore[operator]
                a = dataclasses.replace(
                    a, state=AlertState.RESOLVED, ends_at=utc(updated_at) + timeout
                )
                c.execute(
                    t.group_alerts.update()
                    .where(
                        t.group_alerts.c.group_id == gid,
                        t.group_alerts.c.fingerprint == a.fingerprint,
                    )
                    .values(alert_json=json.dumps(alert_to_dict(a)), resolved=True)
                )
            alerts.append(a)
        return alerts

    @staticmethod
    def _dedup(group: _Group, kept: list[Alert], now: datetime) -> bool:
        """The dedup stage: whether the notification log says the receiver needs an
        update about ``kept`` (the group's alerts after inhibit and silence)."""
        firing, resolved = _fingerprints(kept)
        return needs_update(
            group.notified,
            firing,
            resolved,
            send_resolved=group.send_resolved,
            repeat_interval=group.repeat_interval,
            now=now,
        )

    def _set_notified(
        self, c: sa.Connection, group: _Group, kept: list[Alert], ctx: _FlushContext
    ) -> dict[str, Any]:
        """Write the group's notification to the outbox and return the group row's new
        log entry and sequence: one transaction, so it is decided once and never lost."""
        seq = group.seq + 1
        n = self._group_notification(group, kept, seq, ctx.now)
        if n is not None:
            self._insert_outbox(c, n, ctx.now)
            ctx.report.notifications_enqueued += 1
        firing, resolved = _fingerprints(kept)
        return {
            "notified_at": ctx.now,
            "notified_firing": json.dumps(sorted(firing)),
            "notified_resolved": json.dumps(sorted(resolved)),
            "seq": seq,
        }

    def _group_notification(
        self, group: _Group, kept: list[Alert], seq: int, now: datetime
    ) -> Notification | None:
        """The group's notification: its firing alerts, then its resolved ones if the
        receiver wants them; None when that leaves nothing to say."""
        firing = [a for a in kept if not a.resolved]
        payload = firing + ([a for a in kept if a.resolved] if group.send_resolved else [])
        if not payload or not (firing or group.send_resolved):
            return None
        return Notification(
            receiver=group.receiver,
            group_id=group.group_id,
            group_key=group.group_key,
            seq=seq,
            kind="alert",
            status="firing" if firing else "resolved",
            group_labels=group.group_labels,
            alerts=tuple(payload),
            created_at=now,
            mlflow_ui_url=self.config.mlflow_ui_url,
        )

    def _retire_resolved(self, c: sa.Connection, gid: str, now: datetime) -> None:
        """Resolved alerts are done once a flush has seen them (not re-submitted since);
        a group left empty goes idle."""
        c.execute(
            t.group_alerts.delete().where(
                t.group_alerts.c.group_id == gid,
                t.group_alerts.c.resolved.is_(True),
                t.group_alerts.c.updated_at <= now,
            )
        )
        left = c.execute(
            sa.select(sa.func.count()).where(t.group_alerts.c.group_id == gid)
        ).scalar_one()
        if not left:
            c.execute(t.groups.update().where(t.groups.c.group_id == gid).values(active=False))

    def _insert_outbox(self, c: sa.Connection, n: Notification, now: datetime) -> int:
        res = c.execute(
            t.outbox.insert().values(
                receiver=n.receiver,
                group_id=n.group_id,
                seq=n.seq,
                kind=n.kind,
                payload=json.dumps(n.to_json(), default=str),
                status="pending",
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
        )
        return int(res.inserted_primary_key[0])

    def enqueue(self, n: Notification, now: datetime) -> int:
        """Write a notification that is not about a group (rollback note, test) to the outbox."""
        if n.receiver not in self._receivers:
            raise ConfigError(
                f"unknown receiver {n.receiver!r}; known: {sorted(self._receivers)} "
                "(alerting.notifications.receivers)"
            )
        now = utc(now)
        with self.store.engine.begin() as c:
            return self._insert_outbox(c, n, now)

    # -- deliver --------------------------------------------------------
    def deliver(
        self, now: datetime, report: DispatchReport | None = None, *, started: float | None = None
    ) -> DispatchReport:
        """Send the due outbox rows (in order per group), at most once each. ``started``:
        the ``time.monotonic()`` at which ``now`` was read (default: on entry)."""
        now = utc(now)
        report = report or DispatchReport()
        with self.store.engine.connect() as c:
            rows = (
                c.execute(
                    sa.select(t.outbox)
                    .where(t.outbox.c.status.in_(("pending", "sending")))
                    .order_by(t.outbox.c.id)
                )
                .mappings()
                .all()
            )
        run = _DeliveryPass(now, report, time.monotonic() if started is None else started)
        for r in rows:
            if self._in_turn(r, run):
                self._deliver_row(r, run)
        with self.store.engine.connect() as c:
            report.pending = c.execute(
                sa.select(sa.func.count()).where(t.outbox.c.status.in_(("pending", "sending")))
            ).scalar_one()
        return report

    def _in_turn(self, r: Mapping[str, Any], run: _DeliveryPass) -> bool:
        """Whether row ``r`` may be sent in this pass: the first unsent row of its group
        (later rows of the group wait for it), due, unclaimed, under the send cap."""
        key = (r["receiver"], r["group_id"])
        if key in run.blocked:
            return False
        run.blocked.add(key)
        if r["status"] == "pending" and utc(r["next_attempt_at"]) > run.now:  # type: ignore[operator]
            return False
        if r["status"] == "sending" and utc(r["claimed_until"]) > run.now:  # type: ignore[operator]
            return False
        return run.sends < self.max_sends_per_flush

    def _deliver_row(self, r: Mapping[str, Any], run: _DeliveryPass) -> None:
        """Rate limit, claim, send, then finish the row or schedule its retry."""
        if r["receiver"] not in self._receivers:
            self._finish(
                r["id"], "failed", run.now, error=f"receiver {r['receiver']!r} no longer configured"
            )
            run.report.failed.append((r["receiver"], "receiver no longer configured"))
            return
        n = self._outbox_notification(r)
        if self._rate_limited(r["receiver"], n, run):
            return
        if not self._claim(r["id"], run.now, self.config.retry.claim_timeout):
            return
        run.sends += 1
        try:
            result = self.notifier(r["receiver"]).send(n)
        except NotifyError as e:
            self._retry(r, e, run)
            return
        except Exception as e:  # noqa: BLE001 - a notifier bug must not stop the others
            log.exception("notifier %s raised", r["receiver"])
            self._retry(r, NotifyError(f"{type(e).__name__}: {e}"), run)
            return
        self._finish(r["id"], "sent", run.now, ref=result.external_ref)
        run.blocked.discard((r["receiver"], r["group_id"]))  # the group's next may follow now
        run.report.sent += 1
        run.report.requests += result.requests

    def _outbox_notification(self, r: Mapping[str, Any]) -> Notification:
        """The row's notification with what makes a re-send single: its outbox key, whether
        it was claimed before and never confirmed (the receiver may have it already), and
        the lease epoch of this writer."""
        payload = json.loads(r["payload"])
        return dataclasses.replace(
            Notification.from_json(payload),
            outbox_key=outbox_key(
                r["receiver"], r["group_id"], r["seq"], payload.get("created_at")
            ),
            maybe_sent=int(r["attempts"]) > 0,
            epoch=self.store.fence.epoch if self.store.fence else None,
        )

    def _rate_limited(self, receiver: str, n: Notification, run: _DeliveryPass) -> bool:
        """Take the tokens ``n`` needs from the receiver's bucket, or note when to retry."""
        bucket = self._buckets.get(receiver)
        if bucket is None:
            return False
        # one request per notification, but one per alert to PagerDuty per instance
        need = max(1, len(n.alerts)) if self._pd_per_instance(receiver) else 1
        wait = bucket.take(run.now, min(need, bucket.capacity))
        if wait <= 0:
            return False
        run.report.rate_limited += 1
        self._rate_wait[receiver] = run.now + timedelta(seconds=wait)
        return True

    # -- resend (Alertmanager) ---------------------------------------------
    def resend(self, now: datetime, report: DispatchReport | None = None) -> DispatchReport:
        """Re-post the active alerts to each Alertmanager receiver every ``resend_interval``,
        whatever dedup decided. Alertmanager resolves a firing alert once its ``endsAt``
        has passed, and a re-post of the same alert is idempotent there: this is how
        Prometheus keeps alerts active in it. Failures wait for the next interval (the
        next post carries the whole state anyway)."""
        now = utc(now)
        report = report or DispatchReport()
        for name, rcv in self._receivers.items():
            every = rcv.resend_interval_active
            if every is None:
                continue
            last = self._resent_at.get(name)
            if last is not None and now - last < every:
                continue
            self._resent_at[name] = now
            self._resend_due.pop(name, None)
            alerts = self._notified_active(name, now)
            if not alerts:
                continue
            self._resend_due[name] = now + every
            n = Notification(
                receiver=name,
                group_id=f"resend:{name}",
                group_key=f"resend:{name}",
                seq=0,
                kind="alert",
                status="firing",
                alerts=tuple(alerts),
                created_at=now,
                mlflow_ui_url=self.config.mlflow_ui_url,
            )
            try:
                result = self.notifier(name).send(n)
            except Exception as e:  # noqa: BLE001 - retried at the next interval
                log.warning("re-posting %d alert(s) to %s failed: %s", len(alerts), name, e)
                report.resend_failed.append((name, str(e)))
                continue
            report.resent += len(alerts)
            report.requests += result.requests
        return report

    def _notified_active(self, receiver: str, now: datetime) -> list[Alert]:
        """Firing alerts the receiver was notified of, still re-submitted, not silenced."""
        with self.store.engine.connect() as c:
            rows = c.execute(
                sa.select(t.groups.c.notified_firing, t.group_alerts.c.alert_json)
                .join(t.group_alerts, t.group_alerts.c.group_id == t.groups.c.group_id)
                .where(
                    t.groups.c.receiver == receiver,
                    t.groups.c.active.is_(True),
                    t.group_alerts.c.resolved.is_(False),
                    t.group_alerts.c.updated_at >= now - self.config.resolve_timeout,
                )
            ).all()
        silences = [s for s in self.silences.list(now) if s.active(now)]
        out: dict[str, Alert] = {}
        for notified, blob in rows:
            a = alert_from_dict(json.loads(blob))
            if a.fingerprint not in json.loads(notified) or a.resolved:
                continue
            if silenced_by(a, silences, now) is None:
                out[a.fingerprint] = a
        return list(out.values())

    def _pd_per_instance(self, name: str) -> bool:
        return self._receivers[name].one_request_per_alert

    def _claim(self, row_id: int, now: datetime, timeout: timedelta) -> bool:
        """The last state write before a send: on a fenced store (a monitor holding the
        lease) it is refused with ``FencedOut`` once a newer leader exists."""
        with self.store.engine.begin() as c:
            n = c.execute(
                t.outbox.update()
                .where(
                    t.outbox.c.id == row_id,
                    sa.or_(
                        t.outbox.c.status == "pending",
                        sa.and_(t.outbox.c.status == "sending", t.outbox.c.claimed_until <= now),
                    ),
                )
                .values(
                    status="sending",
                    claimed_until=now + timeout,
                    attempts=t.outbox.c.attempts + 1,
                )
            ).rowcount
        return n == 1

    def _finish(
        self,
        row_id: int,
        status: str,
        now: datetime,
        *,
        ref: str | None = None,
        error: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "claimed_until": None}
        if status == "sent":
            values.update(sent_at=now, external_ref=ref)
        if error is not None:
            values["last_error"] = error[:2000]
        with self.store.engine.begin() as c:
            c.execute(t.outbox.update().where(t.outbox.c.id == row_id).values(**values))

    def _retry(self, r: Mapping[str, Any], e: NotifyError, run: _DeliveryPass) -> None:
        """The retry stage: after a failed send, give up (permanent error, too many
        attempts, too old) or schedule the next attempt with backoff, counted from the
        answer (``Retry-After`` honoured)."""
        attempts = int(r["attempts"]) + 1
        now, report = run.answered_at(), run.report
        policy = self.config.retry
        created = utc(r["created_at"])
        assert created is not None
        if e.permanent or gives_up(attempts, created, now, policy):
            why = "permanent" if e.permanent else f"gave up after {attempts} attempt(s)"
            log.warning("notification %s to %s failed (%s): %s", r["id"], r["receiver"], why, e)
            self._finish(r["id"], "failed", now, error=f"{why}: {e}")
            report.failed.append((r["receiver"], str(e)))
            return
        delay = backoff(attempts, policy, retry_after=e.retry_after, rng=self.rng)
        log.info(
            "notification %s to %s: %s; retry in %.1fs",
            r["id"],
            r["receiver"],
            e,
            delay.total_seconds(),
        )
        with self.store.engine.begin() as c:
            c.execute(
                t.outbox.update()
                .where(t.outbox.c.id == r["id"])
                .values(
                    status="pending",
                    claimed_until=None,
                    next_attempt_at=now + delay,
                    last_error=str(e)[:2000],
                )
            )
        report.retry_scheduled += 1

    # -- timers ---------------------------------------------------------
    def next_due(self, now: datetime) -> datetime | None:
        """When the next flush has work: a group timer, a retry, an expiring claim, a rate limit."""
        now = utc(now)
        with self.store.engine.connect() as c:
            g = c.execute(
                sa.select(sa.func.min(t.groups.c.next_flush_at)).where(t.groups.c.active.is_(True))
            ).scalar()
            pending = c.execute(
                sa.select(t.outbox.c.receiver, sa.func.min(t.outbox.c.next_attempt_at))
                .where(t.outbox.c.status == "pending")
                .group_by(t.outbox.c.receiver)
            ).all()
            s = c.execute(
                sa.select(sa.func.min(t.outbox.c.claimed_until)).where(
                    t.outbox.c.status == "sending"
                )
            ).scalar()
        cands = [utc(x) for x in (g, s) if x is not None]
        cands += self._resend_due.values()
        for receiver, at in pending:
            # a rate-limited receiver's rows are due when its bucket has a token again
            cands.append(max(utc(at), self._rate_wait.get(receiver, utc(at))))  # type: ignore[type-var]
        return max(now, min(cands)) if cands else None  # type: ignore[type-var]

    def serve(self, clock: Clock, stop: threading.Event, *, max_sleep_s: float = 1.0) -> None:
        """Flush whenever a timer is due until ``stop`` is set (a delivery thread beside the
        monitor, so ``group_wait`` and retries do not wait for the next evaluation cycle)."""
        while not stop.is_set():
            self.flush(clock.now())
            now = clock.now()
            due = self.next_due(now)
            wait = max_sleep_s if due is None else (due - now).total_seconds()
            if stop.wait(min(max_sleep_s, max(0.005, wait))):
                break

    # -- inspection -----------------------------------------------------
    def outbox_rows(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = sa.select(
            t.outbox.c.id,
            t.outbox.c.receiver,
            t.outbox.c.kind,
            t.outbox.c.seq,
            t.outbox.c.status,
            t.outbox.c.attempts,
            t.outbox.c.created_at,
            t.outbox.c.next_attempt_at,
            t.outbox.c.sent_at,
            t.outbox.c.last_error,
            t.outbox.c.group_id,
        ).order_by(t.outbox.c.id.desc())
        if status:
            q = q.where(t.outbox.c.status == status)
        with self.store.engine.connect() as c:
            return [dict(r) for r in c.execute(q.limit(limit)).mappings()]

    def purge(self, now: datetime) -> int:
        """Delete sent and failed rows older than ``outbox_retention``."""
        cutoff = utc(now) - self.config.outbox_retention
        with self.store.engine.begin() as c:
            return c.execute(
                t.outbox.delete().where(
                    t.outbox.c.status.in_(("sent", "failed")), t.outbox.c.created_at < cutoff
                )
            ).rowcount
