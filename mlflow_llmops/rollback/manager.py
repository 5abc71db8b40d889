"""Rollback hooks: plan, guard, execute (or not) and audit every outcome.

MLflow keeps no alias history, so ``promote`` records the version an alias
pointed to before it moved; a rollback goes back to that. Guards, checked in
order: rule and severity opt-in, minimum firing time, kill switch, a recorded
previous version, cooldown and daily budget per alias, then compare-and-set at
execution (abort if the alias moved since planning). Resolved alerts never
trigger anything (no roll forward), and a plan waiting for approval expires
when its alert resolves or after the hook's ``approval_timeout``: approving a
stale plan would roll back a service that has recovered or moved on. Every outcome, dry runs included, is a
row in the state store, a tag on the model or prompt version and a note to the
hook's receivers (Slack message, PagerDuty change event).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.core.clock import utc
from mlflow_llmops.errors import ConfigError, LlmopsError
from mlflow_llmops.rollback.config import RollbackConfig, RollbackHook
from mlflow_llmops.rollback.targets import (
    PROMPT_CACHE_ENV,
    AliasTarget,
    TargetRef,
    load_function,
    target_ref,
)
from mlflow_llmops.secrets import mask_text
from mlflow_llmops.statestore.state import Migration, StateStore, create_tables

log = logging.getLogger(__name__)
KILL_SWITCH_ENV = "MLFLOW_LLMOPS_ROLLBACK_DISABLED"

_md = sa.MetaData()
TS = sa.DateTime(timezone=True)

promotions = sa.Table(
    "llmops_rollback_promotions",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # model | prompt
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("alias", sa.String(256), nullable=False),
    sa.Column("previous_version", sa.String(32), nullable=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("promoted_at", TS, nullable=False),
    sa.Column("promoted_by", sa.String(200), nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Index("ix_llmops_rollback_promotions_target", "kind", "name", "alias"),
)

plans = sa.Table(
    "llmops_rollback_plans",
    _md,
    sa.Column("id", sa.String(12), primary_key=True),
    sa.Column("hook", sa.String(200), nullable=False),
    sa.Column("target_key", sa.String(600), nullable=False),
    sa.Column("alert_fingerprint", sa.String(32), nullable=False),
    sa.Column("alertname", sa.String(200), nullable=False),
    sa.Column("episode", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("from_version", sa.String(32), nullable=True),
    sa.Column("to_version", sa.String(32), nullable=True),
    # dry_run | awaiting_approval | executed | aborted | blocked | failed | expired
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("executed_at", TS, nullable=True),
    sa.Column("actor", sa.String(200), nullable=False, default=""),
    sa.UniqueConstraint("hook", "alert_fingerprint", "episode", name="uq_llmops_rollback_once"),
)

audit = sa.Table(
    "llmops_rollback_audit",
    _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("plan_id", sa.String(12), nullable=False, index=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("outcome", sa.String(24), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)

ROLLBACK_MIGRATIONS: tuple[Migration, ...] = (
    Migration("rollback", 1, "promotions, plans, audit", create_tables(promotions, plans, audit)),
)


class RollbackError(LlmopsError):
    """A rollback request cannot be carried out as asked (unknown plan, wrong state, ...)."""


@dataclass(frozen=True)
class RollbackRecord:
    """One audited outcome (what the CLI prints and receivers get)."""

    plan_id: str
    hook: str
    outcome: str
    mode: str
    target_desc: str
    from_version: str | None
    to_version: str | None
    reason: str
    alertname: str
    at: datetime
    actor: str
    propagation: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["at"] = self.at.isoformat()
        return d


def _ref(h: RollbackHook) -> TargetRef:
    return target_ref(h.target, model=h.model, prompt=h.prompt, alias=h.alias, function=h.function)


def _hook_key(h: RollbackHook) -> str:
    return _ref(h).key


def _prompt_ttl(env: Mapping[str, str]) -> float:
    try:
        return float(env.get(PROMPT_CACHE_ENV, "60"))
    except ValueError:
        return 60.0


def promote(
    store: StateStore,
    tracking_uri: str,
    *,
    alias: str,
    version: str | int,
    model: str | None = None,
    prompt: str | None = None,
    actor: str = "",
    note: str = "",
    now: datetime,
) -> str | None:
    """Move ``alias`` to ``version`` and record the version it pointed to before, so a
    rollback knows where to go back (MLflow keeps no alias history). Returns that version."""
    if (model is None) == (prompt is None):
        raise RollbackError("promote: give exactly one of model= or prompt=")
    store.ensure_schema(ROLLBACK_MIGRATIONS)
    ref = target_ref(
        "model_alias" if model is not None else "prompt_alias",
        model=model,
        prompt=prompt,
        alias=alias,
        function=None,
    )
    target = ref.open(tracking_uri, _prompt_ttl(os.environ))
    assert target is not None
    version = str(version)
    if not target.version_exists(version):  # type: ignore[attr-defined]
        raise RollbackError(f"{target.kind} {target.name!r} has no version {version}")
    previous = target.current_version()
    target.set_version(version)
    target.tag(version, "llmops.promoted_from", previous or "none")
    with store.engine.begin() as c:
        c.execute(
            promotions.insert().values(
                kind=target.kind,
                name=target.name,
                alias=alias,
                previous_version=previous,
                version=version,
                promoted_at=now,
                promoted_by=actor or os.environ.get("USER", "unknown"),
                note=note,
            )
        )
    return previous


class RollbackManager:
    """Turns firing alerts into audited rollback plans and executes them when allowed."""

    def __init__(
        self,
        config: RollbackConfig,
        store: StateStore,
        tracking_uri: str,
        *,
        notifier: Any = None,
        env: Mapping[str, str] | None = None,
        actor: str = "mlflow-llmops monitor",
    ) -> None:
        self.config = config
        self.store = store
        store.ensure_schema(ROLLBACK_MIGRATIONS)
        self.tracking_uri = tracking_uri
        self.notifier = notifier  # a Dispatcher (enqueue) or None
        self.env = env if env is not None else os.environ
        self.actor = actor
        self._hooks = {h.name: h for h in config.hooks}
        if notifier is not None:
            known = {r.name for r in notifier.config.receivers}
            for h in config.hooks:
                unknown = sorted(set(h.notify) - known)
                if unknown:
                    raise ConfigError(
                        f"alerting.rollback.hooks[{h.name}].notify: unknown receiver(s) {unknown}; "
                        f"define them under alerting.notifications.receivers (known: {sorted(known)})"
                    )

    # -- targets --------------------------------------------------------
    def _target(self, h: RollbackHook) -> AliasTarget | None:
        return _ref(h).open(self.tracking_uri, _prompt_ttl(self.env))

    def _desc(self, h: RollbackHook) -> str:
        return _ref(h).description

    def killed(self) -> bool:
        return not self.config.enabled or self.env.get(KILL_SWITCH_ENV, "").lower() in (
            "1",
            "true",
            "yes",
        )

    def previous_version(self, kind: str, name: str, alias: str, current: str | None) -> str | None:
        """The version recorded as before ``current`` by the latest promotion to it."""
        if current is None:
            return None
        with self.store.engine.connect() as c:
            row = c.execute(
                sa.select(promotions.c.previous_version)
                .where(
                    promotions.c.kind == kind,
                    promotions.c.name == name,
                    promotions.c.alias == alias,
                    promotions.c.version == current,
                )
                .order_by(promotions.c.id.desc())
                .limit(1)
            ).first()
        return row[0] if row else None

    def _executed_since(self, target_key: str, since: datetime) -> list[datetime]:
        with self.store.engine.connect() as c:
            rows = c.execute(
                sa.select(plans.c.executed_at).where(
                    plans.c.target_key == target_key,
                    plans.c.status == "executed",
                    plans.c.executed_at >= since,
                )
            ).all()
        return [utc(r[0]) for r in rows]  # type: ignore[misc]

    def _guard_rate(self, h: RollbackHook, now: datetime) -> str | None:
        key = _hook_key(h)
        recent = self._executed_since(key, now - h.cooldown)
        if recent:
            return (
                f"cooldown: {key} was rolled back at {max(recent):%H:%M:%S} (cooldown {h.cooldown})"
            )
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if len(self._executed_since(key, day)) >= h.daily_budget:
            return f"daily budget of {h.daily_budget} rollback(s) for {key} used up"
        return None

    @staticmethod
    def _applies(h: RollbackHook, a: Alert) -> bool:
        return (
            a.name in h.rules
            and a.severity.value in h.severities
            and all(a.labels.get(k) == v for k, v in h.match.items())
        )

    # -- the monitor's entry point ---------------------------------------
    def process(self, alerts: Sequence[Alert], now: datetime) -> list[RollbackRecord]:
        """Plan (and, per mode, execute) rollbacks for firing alerts; one plan per hook
        and alert episode. Resolved alerts never trigger anything (never roll forward);
        they expire the plans still waiting for approval."""
        out = self.expire(now, resolved=[a for a in alerts if a.resolved])
        for a in alerts:
            if a.resolved:
                continue
            for h in self.config.hooks:
                if not self._applies(h, a):
                    continue
                if now - utc(a.starts_at) < h.min_firing:  # type: ignore[operator]
                    continue
                rec = self._plan(h, a, now)
                if rec is not None:
                    out.append(rec)
        return out

    def _plan(self, h: RollbackHook, a: Alert, now: datetime) -> RollbackRecord | None:
        with self.store.engine.connect() as c:
            seen = c.execute(
                sa.select(plans.c.id).where(
                    plans.c.hook == h.name,
                    plans.c.alert_fingerprint == a.fingerprint,
                    plans.c.episode == a.episode,
                )
            ).first()
        if seen:
            return None
        target = self._target(h)
        current = target.current_version() if target else None
        previous = (
            self.previous_version(target.kind, target.name, target.alias, current)
            if target
            else None
        )
        status, reason = (
            h.mode,
            f"{a.name} ({a.severity.value}) firing since {a.starts_at:%Y-%m-%d %H:%M:%S}",
        )
        if self.killed():
            status, reason = (
                "blocked",
                "kill switch is on (rollback.enabled=false or " + KILL_SWITCH_ENV + ")",
            )
        elif target is not None and current is None:
            status, reason = "blocked", f"alias {self._desc(h)} does not exist"
        elif target is not None and previous is None:
            status, reason = (
                "blocked",
                f"no previous version recorded for {self._desc(h)} v{current}; promote "
                "versions with `mlflow-llmops alerts rollback promote` so rollbacks know where to go",
            )
        else:
            why = self._guard_rate(h, now)
            if why:
                status, reason = "blocked", why
        plan_id = uuid.uuid4().hex[:12]
        if status == "confirm":
            status = "awaiting_approval"
        elif status == "auto":
            status = "planned"
        try:
            with self.store.engine.begin() as c:
                c.execute(
                    plans.insert().values(
                        id=plan_id,
                        hook=h.name,
                        target_key=_hook_key(h),
                        alert_fingerprint=a.fingerprint,
                        alertname=a.name,
                        episode=a.episode,
                        mode=h.mode,
                        from_version=current,
                        to_version=previous,
                        status=status,
                        reason=reason,
                        created_at=now,
                        updated_at=now,
                        actor=self.actor,
                    )
                )
        except sa.exc.IntegrityError:
            return None  # another monitor planned it first
        if status == "planned":
            return self.execute(plan_id, now, actor=self.actor)
        return self._audit(plan_id, status, reason, now, self.actor)

    # -- expiry -------------------------------------------------------------
    def _why_stale(self, p: Mapping[str, Any], now: datetime) -> str | None:
        """Why an awaiting plan may no longer be approved (None: it still may)."""
        h = self._hooks.get(p["hook"])
        created = utc(p["created_at"])
        assert created is not None
        if h is not None and now >= created + h.approval_timeout:
            return (
                f"not approved within {h.approval_timeout} (approval_timeout of hook "
                f"{h.name!r}); it expired at {created + h.approval_timeout:%Y-%m-%d %H:%M:%S} UTC"
            )
        ended = self._alert_ended(p)
        if ended:
            return ended
        return None

    def _alert_ended(self, p: Mapping[str, Any]) -> str | None:
        """What the alert engine's state says about the plan's alert episode, if it has
        resolved (the engine's instances live in the same state store)."""
        from mlflow_llmops.alerting.engine import alert_instances

        try:
            with self.store.engine.connect() as c:
                row = (
                    c.execute(
                        sa.select(
                            alert_instances.c.state,
                            alert_instances.c.episode,
                            alert_instances.c.resolved_at,
                        ).where(alert_instances.c.fingerprint == p["alert_fingerprint"])
                    )
                    .mappings()
                    .first()
                )
        except sa.exc.SQLAlchemyError:
            return None  # no alert engine on this store: nothing to go by
        if row is None:
            return None
        if row["episode"] != p["episode"] or row["state"] != "firing":
            when = utc(row["resolved_at"])
            at = f" at {when:%Y-%m-%d %H:%M:%S} UTC" if when and row["state"] == "resolved" else ""
            return f"its alert {p['alertname']} (episode {p['episode']}) has resolved{at}"
        return None

    def expire(
        self, now: datetime, *, resolved: Sequence[Alert] = (), actor: str | None = None
    ) -> list[RollbackRecord]:
        """Expire the plans waiting for approval whose alert resolved (``resolved``, or the
        engine's state) or whose ``approval_timeout`` passed; each is audited."""
        ended = {(a.fingerprint, a.episode): a for a in resolved}
        out = []
        for p in self.list_plans(status="awaiting_approval", limit=1000):
            a = ended.get((p["alert_fingerprint"], p["episode"]))
            if a is not None:
                when = a.ends_at or now
                why: str | None = (
                    f"its alert {a.name} (episode {a.episode}) resolved at "
                    f"{when:%Y-%m-%d %H:%M:%S} UTC"
                )
            else:
                why = self._why_stale(p, now)
            if why:
                out.append(self._finish(p["id"], "expired", why, now, actor or self.actor))
        return out

    # -- execution --------------------------------------------------------
    def get_plan(self, plan_id: str) -> dict[str, Any]:
        with self.store.engine.connect() as c:
            row = c.execute(sa.select(plans).where(plans.c.id == plan_id)).mappings().first()
        if row is None:
            raise RollbackError(
                f"no rollback plan {plan_id!r}; see `mlflow-llmops alerts rollback list`"
            )
        return dict(row)

    def approve(self, plan_id: str, now: datetime, *, actor: str) -> RollbackRecord:
        """Execute a plan waiting for confirmation (``alerts rollback approve ID``); refused
        once the plan expired (approval_timeout passed, or its alert resolved)."""
        p = self.get_plan(plan_id)
        if p["status"] == "expired":
            raise RollbackError(
                f"plan {plan_id} expired and cannot be approved: {p['reason']}. Nothing was "
                "changed; to roll back anyway, use `mlflow-llmops alerts rollback promote`"
            )
        if p["status"] != "awaiting_approval":
            raise RollbackError(
                f"plan {plan_id} is {p['status']}, not awaiting_approval; nothing to approve"
            )
        why = self._why_stale(p, now)
        if why:
            self._finish(plan_id, "expired", why, now, actor)
            raise RollbackError(
                f"plan {plan_id} expired and cannot be approved: {why}. Nothing was changed; "
                "to roll back anyway, use `mlflow-llmops alerts rollback promote`"
            )
        return self.execute(plan_id, now, actor=actor)

    def execute(self, plan_id: str, now: datetime, *, actor: str) -> RollbackRecord:
        p = self.get_plan(plan_id)
        h = self._hooks.get(p["hook"])
        if h is None:
            return self._finish(
                plan_id, "failed", f"hook {p['hook']!r} is no longer configured", now, actor
            )
        if self.killed():
            return self._finish(plan_id, "blocked", "kill switch is on", now, actor)
        why = self._guard_rate(h, now)
        if why:
            return self._finish(plan_id, "blocked", why, now, actor)
        target = self._target(h)
        if target is None:
            try:
                fn = load_function(h.function or "")
                result = fn(plan_id=plan_id, hook=h.name, alertname=p["alertname"], dry_run=False)
            except Exception as e:  # noqa: BLE001 - user code
                return self._finish(
                    plan_id, "failed", f"{h.function} raised {type(e).__name__}: {e}", now, actor
                )
            return self._finish(
                plan_id, "executed", f"{h.function} returned {result!r}", now, actor
            )
        # compare-and-set: the alias must still point where it did when we planned
        current = target.current_version()
        if current != p["from_version"]:
            return self._finish(
                plan_id,
                "aborted",
                f"{self._desc(h)} moved from v{p['from_version']} to v{current} since planning; "
                "not touching it",
                now,
                actor,
            )
        try:
            target.set_version(p["to_version"])
        except Exception as e:  # noqa: BLE001 - MLflow errors of every kind end up audited
            return self._finish(plan_id, "failed", f"setting the alias failed: {e}", now, actor)
        return self._finish(
            plan_id,
            "executed",
            f"{self._desc(h)} moved v{p['from_version']} -> v{p['to_version']}",
            now,
            actor,
        )

    def _finish(
        self, plan_id: str, status: str, reason: str, now: datetime, actor: str
    ) -> RollbackRecord:
        values: dict[str, Any] = {
            "status": status,
            "reason": reason,
            "updated_at": now,
            "actor": actor,
        }
        if status == "executed":
            values["executed_at"] = now
        with self.store.engine.begin() as c:
            c.execute(plans.update().where(plans.c.id == plan_id).values(**values))
        return self._audit(plan_id, status, reason, now, actor)

    def _audit(
        self, plan_id: str, outcome: str, reason: str, now: datetime, actor: str
    ) -> RollbackRecord:
        p = self.get_plan(plan_id)
        h = self._hooks.get(p["hook"])
        target = self._target(h) if h else None
        propagation = ""
        if target is not None and p["to_version"]:
            propagation = target.propagation(p["to_version"])
            if outcome == "dry_run":
                propagation = f"dry run, nothing changed; if executed: {propagation}"
            elif outcome != "executed":
                propagation = f"nothing changed ({outcome})"
        rec = RollbackRecord(
            plan_id=plan_id,
            hook=p["hook"],
            outcome=outcome,
            mode=p["mode"],
            target_desc=self._desc(h) if h else p["target_key"],
            from_version=p["from_version"],
            to_version=p["to_version"],
            reason=reason,
            alertname=p["alertname"],
            at=now,
            actor=actor,
            propagation=propagation,
        )
        with self.store.engine.begin() as c:
            c.execute(
                audit.insert().values(
                    plan_id=plan_id,
                    at=now,
                    outcome=outcome,
                    actor=actor,
                    record=json.dumps(rec.as_dict()),
                )
            )
        if target is not None:
            note = mask_text(f"{outcome} {now:%Y-%m-%dT%H:%M:%SZ} by {actor}: {reason}")[:4900]
            for v in {p["from_version"], p["to_version"]} - {None}:
                try:
                    target.tag(v, f"llmops.rollback.{plan_id}", note)
                except Exception as e:  # noqa: BLE001 - the audit row above already holds it
                    log.warning("could not tag %s v%s: %s", target.name, v, e)
        if self.notifier is not None and h is not None:
            self._notify(h, rec, now)
        log.info("rollback %s %s: %s", plan_id, outcome, reason)
        return rec

    def _notify(self, h: RollbackHook, rec: RollbackRecord, now: datetime) -> None:
        from mlflow_llmops.notify.notifiers import Notification

        with self.store.engine.connect() as c:
            seq = c.execute(
                sa.select(sa.func.count()).where(audit.c.plan_id == rec.plan_id)
            ).scalar_one()
        for receiver in h.notify:
            try:
                self.notifier.enqueue(
                    Notification(
                        receiver=receiver,
                        group_id=f"rollback:{rec.plan_id}",
                        group_key=f"rollback:{h.name}",
                        seq=int(seq),
                        kind="rollback",
                        status="firing",
                        rollback=rec.as_dict(),
                        created_at=now,
                    ),
                    now,
                )
            except Exception as e:  # noqa: BLE001 - the audit row holds the record regardless
                log.warning("could not queue rollback note for %s: %s", receiver, e)

    # -- inspection -------------------------------------------------------
    def list_plans(self, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(plans).order_by(plans.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(plans.c.status == status)
        with self.store.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def audit_log(self, plan_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(audit).order_by(audit.c.id)
        if plan_id:
            q = q.where(audit.c.plan_id == plan_id)
        with self.store.engine.connect() as c:
            return [{**dict(r), "record": json.loads(r["record"])} for r in c.execute(q).mappings()]

    def promotions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.engine.connect() as c:
            return [
                dict(r)
                for r in c.execute(
                    sa.select(promotions).order_by(promotions.c.id.desc()).limit(limit)
                ).mappings()
            ]
