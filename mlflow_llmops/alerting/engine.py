"""The alert engine: rules -> samples -> instances with Prometheus semantics.

An instance is identified by its label set (``fingerprint``). It is pending
until the condition has held for ``for``; a pending instance that clears is
dropped without a word; a firing one stays firing until the condition has been
gone for ``keep_firing_for`` (or, with a recovery threshold, until the value is
back past it); a re-breach after resolve starts a new episode; an evaluation
error never resolves anything. Time is always passed in (``now``). State lives
in the state store (component ``alerting``), so a restarted or newly elected
monitor neither re-pages nor restarts ``for``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.alerting.links import AlertLinks, fill_url
from mlflow_llmops.alerting.model import Alert, AlertState, Severity, fingerprint
from mlflow_llmops.alerting.rules import (
    LABEL_COLUMNS,
    BaselineRule,
    BurnRateRule,
    SignalSpec,
    ThresholdRule,
)
from mlflow_llmops.alerting.signals import SignalSource, SignalValue
from mlflow_llmops.core.clock import to_ms, utc
from mlflow_llmops.core.duration import format_duration
from mlflow_llmops.statestore.state import Migration, StateStore, create_tables

log = logging.getLogger(__name__)

AnyRule = ThresholdRule | BaselineRule | BurnRateRule

# --------------------------------------------------------------------------- tables

alerting_metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

alert_instances = sa.Table(
    "llmops_alert_instances",
    alerting_metadata,
    sa.Column("fingerprint", sa.String(32), primary_key=True),
    sa.Column("rule", sa.String(120), nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("annotations", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("active_at", TS, nullable=True),
    sa.Column("fired_at", TS, nullable=True),
    sa.Column("last_true_at", TS, nullable=True),
    # first false evaluation of a firing alert: keep_firing_for counts from here
    sa.Column("keep_firing_since", TS, nullable=True),
    sa.Column("resolved_at", TS, nullable=True),
    sa.Column("last_eval_at", TS, nullable=True),
    sa.Column("episode", sa.Integer, nullable=False, default=0),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("baseline", sa.Float, nullable=True),
    sa.Column("window_s", sa.Float, nullable=True),
    sa.Index("ix_llmops_alert_instances_rule", "rule"),
)

rule_health = sa.Table(
    "llmops_alert_rule_health",
    alerting_metadata,
    sa.Column("rule", sa.String(120), primary_key=True),
    sa.Column("last_eval_at", TS, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
)

monitor_cycles = sa.Table(
    "llmops_monitor_cycles",
    alerting_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("steps", sa.Text, nullable=False),
    sa.Column("firing", sa.Integer, nullable=False),
    sa.Column("sent", sa.Integer, nullable=False),
    sa.Index("ix_llmops_monitor_cycles_started", "started_at"),
)


def _add_keep_firing_since(conn: sa.Connection) -> None:
    """Version 1 tables created by this code already have the column."""
    if "keep_firing_since" not in {
        c["name"] for c in sa.inspect(conn).get_columns(alert_instances.name)
    }:
        kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(
            sa.text(f"ALTER TABLE {alert_instances.name} ADD COLUMN keep_firing_since {kind}")
        )


ALERTING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "alerting",
        1,
        "alert instances, rule health, monitor cycles",
        create_tables(alert_instances, rule_health, monitor_cycles),
    ),
    Migration("alerting", 2, "keep_firing_for counted as Prometheus does", _add_keep_firing_since),
)


# --------------------------------------------------------------------------- values


@dataclass
class AlertInstance:
    """The engine's memory of one label set of one rule."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    severity: Severity
    active_at: datetime | None = None
    fired_at: datetime | None = None
    last_true_at: datetime | None = None
    keep_firing_since: datetime | None = None
    resolved_at: datetime | None = None
    last_eval_at: datetime | None = None
    episode: int = 0
    value: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    window_s: float | None = None

    def to_alert(self) -> Alert:
        return Alert(
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            state=self.state,
            severity=self.severity,
            starts_at=self.fired_at or self.active_at or self.last_eval_at,  # type: ignore[arg-type]
            ends_at=self.resolved_at if self.state == AlertState.RESOLVED else None,
            value=self.value,
            threshold=self.threshold,
            baseline=self.baseline,
            window_s=self.window_s,
            episode=max(self.episode, 1),
            rule=self.rule,
            extra={"active_at": self.active_at.isoformat() if self.active_at else None},
        )

    def row(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (c.name for c in alert_instances.columns)}
        d["labels"] = json.dumps(self.labels, sort_keys=True)
        d["annotations"] = json.dumps(self.annotations, sort_keys=True)
        d["state"] = str(self.state)
        d["severity"] = str(self.severity)
        for k in ("value", "threshold", "baseline"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return d

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> AlertInstance:
        return cls(
            fingerprint=r["fingerprint"],
            rule=r["rule"],
            labels=json.loads(r["labels"]),
            annotations=json.loads(r["annotations"]),
            state=AlertState(r["state"]),
            severity=Severity(r["severity"]),
            active_at=utc(r["active_at"]),
            fired_at=utc(r["fired_at"]),
            last_true_at=utc(r["last_true_at"]),
            keep_firing_since=utc(r.get("keep_firing_since")),
            resolved_at=utc(r["resolved_at"]),
            last_eval_at=utc(r["last_eval_at"]),
            episode=r["episode"],
            value=r["value"],
            threshold=r["threshold"],
            baseline=r["baseline"],
            window_s=r["window_s"],
        )


@dataclass(frozen=True)
class Sample:
    """One label group's verdict from one rule at one evaluation."""

    labels: Mapping[str, str]
    value: float | None
    #: None = unknown (too few samples): the instance neither fires nor resolves
    active: bool | None
    #: verdict used while already firing (recovery threshold); defaults to ``active``
    still_active: bool | None = None
    threshold: float | None = None
    baseline: float | None = None
    severity: Severity | None = None
    window_s: float | None = None
    note: str = ""


@dataclass(frozen=True)
class RuleOutcome:
    samples: list[Sample]
    no_data: bool


@dataclass
class Evaluation:
    """What one evaluation produced: alerts to send, all instances, per-rule errors."""

    at: datetime
    alerts: list[Alert]
    instances: list[AlertInstance]
    errors: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    rules: int = 0

    @property
    def firing(self) -> list[AlertInstance]:
        return [i for i in self.instances if i.state == AlertState.FIRING]

    @property
    def pending(self) -> list[AlertInstance]:
        return [i for i in self.instances if i.state == AlertState.PENDING]


# --------------------------------------------------------------------------- rules -> samples

_CMP = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _window(spec: SignalSpec, end_ms: int, shift: timedelta = timedelta(0)) -> tuple[int, int]:
    end = end_ms - int(shift.total_seconds() * 1000)
    return end - int(spec.window.total_seconds() * 1000), end


def _usable(v: SignalValue, min_samples: int) -> bool:
    return v.value is not None and not math.isnan(v.value) and v.samples >= min_samples


def evaluate_threshold(rule: ThresholdRule, source: SignalSource, end_ms: int) -> RuleOutcome:
    spec = rule.query
    values = source.query(spec, *_window(spec, end_ms))
    cmp = _CMP[rule.op]
    recovery = rule.threshold if rule.recovery_threshold is None else rule.recovery_threshold
    samples = []
    for v in values:
        ok = _usable(v, spec.min_samples)
        samples.append(
            Sample(
                labels=v.labels,
                value=v.value,
                active=cmp(v.value, rule.threshold) if ok else None,
                still_active=cmp(v.value, recovery) if ok else None,
                threshold=rule.threshold,
                window_s=spec.window.total_seconds(),
                note="" if ok else f"fewer than {spec.min_samples} samples ({v.samples})",
            )
        )
    return RuleOutcome(samples, no_data=not values)


def evaluate_baseline(rule: BaselineRule, source: SignalSource, end_ms: int) -> RuleOutcome:
    spec = rule.query
    current = source.query(spec, *_window(spec, end_ms))
    if rule.median_of_days:
        shifts = [timedelta(days=k) for k in range(1, rule.median_of_days + 1)]
        need = math.ceil(rule.median_of_days / 2)
    else:
        shifts, need = [rule.offset], 1
    history: dict[tuple, list[float]] = {}
    for shift in shifts:
        for v in source.query(spec, *_window(spec, end_ms, shift)):
            if _usable(v, rule.min_baseline_samples):
                history.setdefault(v.key, []).append(v.value)  # type: ignore[arg-type]
    samples = []
    for v in current:
        past = history.get(v.key, [])
        base = statistics.median(past) if len(past) >= need else None
        ok = _usable(v, spec.min_samples)
        # unknown (None), not False: an insufficient baseline never fires and never resolves
        active: bool | None = None
        note = ""
        if base is None:
            note = "insufficient baseline"
        elif not ok:
            note = f"fewer than {spec.min_samples} samples ({v.samples})"
        elif rule.direction == "above":
            active = v.value > rule.factor * base and (rule.floor is None or v.value >= rule.floor)
        else:
            active = v.value < base / rule.factor and (rule.floor is None or v.value <= rule.floor)
        threshold = None
        if base is not None:
            threshold = rule.factor * base if rule.direction == "above" else base / rule.factor
        samples.append(
            Sample(
                labels=v.labels,
                value=v.value,
                active=active,
                threshold=threshold,
                baseline=base,
                window_s=spec.window.total_seconds(),
                note=note,
            )
        )
    return RuleOutcome(samples, no_data=not current)


def evaluate_burn_rate(rule: BurnRateRule, source: SignalSource, end_ms: int) -> RuleOutcome:
    budget = rule.error_budget
    samples: list[Sample] = []
    no_data = True
    for tier in rule.tiers:
        long_spec, short_spec = rule.query_for(tier.long), rule.query_for(tier.short)
        longs = source.query(long_spec, *_window(long_spec, end_ms))
        shorts = {v.key: v for v in source.query(short_spec, *_window(short_spec, end_ms))}
        no_data = no_data and not longs
        for v in longs:
            s = shorts.get(v.key)
            ok = _usable(v, rule.min_samples)
            long_burn = v.value / budget if ok else None
            short_burn = s.value / budget if s is not None and s.value is not None else 0.0
            active = long_burn > tier.factor and short_burn > tier.factor if ok else None
            samples.append(
                Sample(
                    labels={**v.labels, "slo_window": format_duration(tier.long)},
                    value=long_burn,
                    active=active,
                    threshold=tier.factor,
                    baseline=short_burn,
                    severity=tier.severity,
                    window_s=tier.long.total_seconds(),
                    note=f"burn rate {format_duration(tier.short)} window: {short_burn:.3g}",
                )
            )
    return RuleOutcome(samples, no_data=no_data)


def evaluate_rule(rule: AnyRule, source: SignalSource, end_ms: int) -> RuleOutcome:
    if isinstance(rule, ThresholdRule):
        return evaluate_threshold(rule, source, end_ms)
    if isinstance(rule, BaselineRule):
        return evaluate_baseline(rule, source, end_ms)
    return evaluate_burn_rate(rule, source, end_ms)


def _signal_name(rule: AnyRule) -> str:
    if isinstance(rule, BurnRateRule):
        return f"{rule.sli} burn rate (SLO {rule.objective:.4%})"
    return rule.query.signal


class _Fmt(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 10000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def render_annotations(
    rule: AnyRule, inst: AlertInstance, note: str = "", *, runbook_url: str | None = None
) -> dict[str, str]:
    """The rule's annotation templates with ``{value}``, ``{threshold}``, labels, ...; the
    rule's runbook (else ``runbook_url``) as ``runbook_url``."""
    group = ", ".join(
        f"{k}={v}" for k, v in sorted(inst.labels.items()) if k not in ("alertname", "severity")
    )
    values = _Fmt(
        {
            **inst.labels,
            "value": _num(inst.value),
            "threshold": _num(inst.threshold),
            "baseline": _num(inst.baseline),
            "window": format_duration(timedelta(seconds=inst.window_s or 0)),
            "rule": rule.name,
            "signal": _signal_name(rule),
            "group": group or "all traffic",
        }
    )
    out = {k: v.format_map(values) for k, v in rule.annotations.items()}
    if "summary" not in out:
        if isinstance(rule, BaselineRule):
            cmp = f"{rule.direction} {rule.factor:g}x baseline {_num(inst.baseline)}"
        elif isinstance(rule, BurnRateRule):
            cmp = f"burning the error budget {_num(inst.value)}x (limit {_num(inst.threshold)}x)"
        else:
            cmp = f"{rule.op} {_num(inst.threshold)}"
        out["summary"] = (
            f"{rule.name}: {_signal_name(rule)} = {_num(inst.value)} {cmp} "
            f"over {values['window']} ({values['group']})"
        )
    if inst.state == AlertState.RESOLVED:
        out["summary"] = (
            f"{rule.name} resolved: {_signal_name(rule)} is {_num(inst.value)} now "
            f"(threshold {_num(inst.threshold)}, {values['group']})"
        )
    if note:
        out["note"] = note
    runbook = rule.runbook_url or runbook_url
    if runbook and "runbook_url" not in out:
        out["runbook_url"] = fill_url(runbook, inst.labels)
    return out


def _scope(rule: AnyRule, labels: Mapping[str, str]) -> dict[str, str]:
    """The trace filter of one instance: the rule's ``where`` and its group's labels."""
    spec = rule.query_for(rule.tiers[0].long) if isinstance(rule, BurnRateRule) else rule.query
    where = dict(spec.where)
    for g in spec.group_by:
        if g in LABEL_COLUMNS and labels.get(g):
            where.setdefault(g, labels[g])
    return where


# --------------------------------------------------------------------------- engine


class AlertEngine:
    """Evaluates rules against a signal source and keeps instance state.

    With a ``store`` and ``persist=True`` the state is read from and written to
    the state store on every evaluation (so another process can take over);
    otherwise it lives in memory, starting from the store's if one is given
    (dry runs and replays never change persisted state).
    """

    def __init__(
        self,
        rules: Sequence[AnyRule],
        source: SignalSource,
        store: StateStore | None = None,
        *,
        persist: bool = True,
        evaluation_delay: timedelta = timedelta(0),
        resolved_retention: timedelta = timedelta(days=7),
        links: AlertLinks | None = None,
    ) -> None:
        names = [r.name for r in rules]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        self.rules = list(rules)
        self.source = source
        self.store = store
        self.persist = persist and store is not None
        self.evaluation_delay = evaluation_delay
        self.resolved_retention = resolved_retention
        self.links = links or AlertLinks()
        #: (fingerprint, episode) -> the experiment its traces link shows (one lookup each)
        self._experiments: dict[tuple[str, int], str | None] = {}
        self._memory: dict[str, AlertInstance] | None = None
        if store is not None:
            store.ensure_schema(ALERTING_MIGRATIONS)
        if not self.persist:
            self._memory = self._load() if store is not None else {}

    # -- state ----------------------------------------------------------
    def _load(self) -> dict[str, AlertInstance]:
        assert self.store is not None
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(alert_instances)).mappings().all()
        return {r["fingerprint"]: AlertInstance.from_row(r) for r in rows}

    def instances(self) -> list[AlertInstance]:
        """Current instances (pending, firing, recently resolved)."""
        state = self._memory if self._memory is not None else self._load()
        return sorted(state.values(), key=lambda i: (i.rule, i.fingerprint))

    def _save(
        self,
        before: dict[str, AlertInstance],
        after: dict[str, AlertInstance],
        health: list[dict[str, Any]],
    ) -> None:
        assert self.store is not None
        with self.store.engine.begin() as conn:
            gone = [fp for fp in before if fp not in after]
            if gone:
                conn.execute(
                    alert_instances.delete().where(alert_instances.c.fingerprint.in_(gone))
                )
            for fp, inst in after.items():
                row = inst.row()
                if fp not in before:
                    conn.execute(alert_instances.insert().values(**row))
                elif before[fp].row() != row:
                    conn.execute(
                        alert_instances.update()
                        .where(alert_instances.c.fingerprint == fp)
                        .values(**row)
                    )
            for h in health:
                n = conn.execute(
                    rule_health.update().where(rule_health.c.rule == h["rule"]).values(**h)
                ).rowcount
                if not n:
                    conn.execute(rule_health.insert().values(**h))

    # -- evaluation -----------------------------------------------------
    def evaluate(self, now: datetime) -> Evaluation:
        """Evaluate every rule at ``now``; returns firing and newly resolved alerts."""
        t0 = time.perf_counter()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        before = self._memory if self._memory is not None else self._load()
        state = {
            fp: replace(i, labels=dict(i.labels), annotations=dict(i.annotations))
            for fp, i in before.items()
        }
        end_ms = to_ms(now - self.evaluation_delay)
        new_tick = getattr(self.source, "new_tick", None)
        if new_tick is not None:
            new_tick()  # rules of one tick may share queries; the next tick re-reads
        sent: list[Alert] = []
        errors: dict[str, str] = {}
        health: list[dict[str, Any]] = []
        known = {r.name for r in self.rules}
        for rule in self.rules:
            r0 = time.perf_counter()
            try:
                outcome: RuleOutcome | None = evaluate_rule(rule, self.source, end_ms)
                err = None
            except Exception as e:  # noqa: BLE001 - a broken rule must not stop the others
                outcome, err = None, f"{type(e).__name__}: {e}"
                errors[rule.name] = err
                log.warning("rule %s: evaluation failed: %s", rule.name, err)
            sent.extend(self._apply(rule, outcome, err, state, now, end_ms))
            health.append(
                {
                    "rule": rule.name,
                    "last_eval_at": now,
                    "duration_ms": (time.perf_counter() - r0) * 1000,
                    "samples": len(outcome.samples) if outcome else 0,
                    "last_error": err,
                }
            )
        if self.persist:
            for inst in state.values():
                if inst.rule not in known and inst.state != AlertState.RESOLVED:
                    self._transition(inst, False, now, keep_firing_for=timedelta(0))
                    inst.annotations["note"] = "rule removed from the configuration"
                    if inst.state == AlertState.RESOLVED:
                        sent.append(inst.to_alert())
        for key in [k for k in self._experiments if k[0] not in state]:
            del self._experiments[key]
        for fp in [
            fp
            for fp, i in state.items()
            if i.state == AlertState.INACTIVE
            or (
                i.state == AlertState.RESOLVED
                and i.resolved_at is not None
                and now - i.resolved_at > self.resolved_retention
            )
        ]:
            del state[fp]
        if self.persist:
            self._save(before, state, health)
        else:
            self._memory = state
        return Evaluation(
            at=now,
            alerts=sent,
            instances=sorted(state.values(), key=lambda i: (i.rule, i.fingerprint)),
            errors=errors,
            duration_s=time.perf_counter() - t0,
            rules=len(self.rules),
        )

    def _apply(
        self,
        rule: AnyRule,
        outcome: RuleOutcome | None,
        error: str | None,
        state: dict[str, AlertInstance],
        now: datetime,
        end_ms: int,
    ) -> list[Alert]:
        mine = {fp: i for fp, i in state.items() if i.rule == rule.name}
        if outcome is None:
            if rule.on_error != "alerting":
                return self._resend(mine)
            samples = [
                Sample(
                    labels={"reason": "evaluation_error"}, value=None, active=True, note=error or ""
                )
            ]
            verdicts = self._verdicts(rule, samples)
            return self._advance(rule, verdicts, state, now, end_ms, touch_others=False)
        samples = outcome.samples
        if outcome.no_data:
            if rule.no_data == "keep_state":
                return self._resend(mine)
            if rule.no_data == "alerting":
                samples = [
                    Sample(
                        labels={"reason": "no_data"},
                        value=None,
                        active=True,
                        note="no data in the window",
                    )
                ]
        verdicts = self._verdicts(rule, samples)
        return self._advance(rule, verdicts, state, now, end_ms, touch_others=True)

    @staticmethod
    def _resend(mine: dict[str, AlertInstance]) -> list[Alert]:
        return [i.to_alert() for i in mine.values() if i.state == AlertState.FIRING]

    @staticmethod
    def _verdicts(rule: AnyRule, samples: list[Sample]) -> dict[str, tuple[dict, Sample]]:
        out = {}
        for s in samples:
            severity = s.severity or rule.severity
            labels = {**rule.labels, **s.labels, "alertname": rule.name, "severity": str(severity)}
            out[fingerprint(labels)] = (labels, s)
        return out

    def _advance(
        self,
        rule: AnyRule,
        verdicts: dict[str, tuple[dict, Sample]],
        state: dict[str, AlertInstance],
        now: datetime,
        end_ms: int,
        *,
        touch_others: bool,
    ) -> list[Alert]:
        sent = []
        fps = set(verdicts)
        if touch_others:
            fps |= {fp for fp, i in state.items() if i.rule == rule.name}
        for fp in sorted(fps):
            inst = state.get(fp)
            labels, sample = verdicts.get(fp, (None, None))
            if sample is not None:
                if inst is None:
                    if not sample.active:  # False or unknown
                        continue
                    inst = AlertInstance(
                        fingerprint=fp,
                        rule=rule.name,
                        labels=labels,
                        annotations={},
                        state=AlertState.INACTIVE,
                        severity=Severity(labels["severity"]),
                    )
                    state[fp] = inst
                firing = inst.state == AlertState.FIRING
                still = sample.active if sample.still_active is None else sample.still_active
                active = still if firing else sample.active
                inst.value, inst.threshold = sample.value, sample.threshold
                inst.baseline, inst.window_s = sample.baseline, sample.window_s
            else:
                assert inst is not None
                active = False
            was = inst.state
            if active is not None:
                self._transition(
                    inst, active, now, keep_firing_for=rule.keep_firing_for, for_=rule.for_
                )
            elif inst.state == AlertState.PENDING:
                # unknown (too few samples, no baseline) does not confirm a pending alert:
                # `for` means true at every evaluation, as Prometheus drops a pending alert
                # whose series is gone (else two noisy minutes with unknowns between fire)
                inst.state = AlertState.INACTIVE
            inst.last_eval_at = now
            inst.annotations = render_annotations(
                rule, inst, sample.note if sample else "", runbook_url=self.links.runbook_url
            )
            if inst.state == AlertState.FIRING or (
                inst.state == AlertState.RESOLVED and was == AlertState.FIRING
            ):
                self._link_traces(rule, inst, end_ms)
                sent.append(inst.to_alert())
        return sent

    def _link_traces(self, rule: AnyRule, inst: AlertInstance, end_ms: int) -> None:
        """``traces_url``: the alert's experiment in the MLflow UI, on the window that
        breached (from ``window`` before it became active to this evaluation)."""
        if not self.links.mlflow_ui_url or "traces_url" in inst.annotations:
            return
        exp = self._experiment(rule, inst, end_ms)
        if exp is None:
            return
        end = datetime.fromtimestamp(end_ms / 1000, tz=UTC)
        since = min(inst.active_at or end, end) - timedelta(seconds=inst.window_s or 0)
        url = self.links.traces_url(exp, since, end)
        if url:
            inst.annotations["traces_url"] = url

    def _experiment(self, rule: AnyRule, inst: AlertInstance, end_ms: int) -> str | None:
        if inst.labels.get("experiment_id"):
            return inst.labels["experiment_id"]
        if len(self.links.experiment_ids) == 1:
            return self.links.experiment_ids[0]
        key = (inst.fingerprint, inst.episode)
        if key not in self._experiments:
            self._experiments[key] = self._busiest_experiment(rule, inst, end_ms)
        return self._experiments[key]

    def _busiest_experiment(self, rule: AnyRule, inst: AlertInstance, end_ms: int) -> str | None:
        """The experiment with most of the alert's traffic in its window (one query)."""
        where = _scope(rule, inst.labels)
        window = timedelta(seconds=inst.window_s or 300)
        spec = SignalSpec(
            signal="request_count", window=window, group_by=("experiment_id",), where=where
        )
        try:
            values = self.source.query(spec, *_window(spec, end_ms))
        except Exception as e:  # noqa: BLE001 - a link is not worth failing the evaluation
            log.info("rule %s: no traces link (experiment lookup failed: %s)", rule.name, e)
            return None
        best = max(values, key=lambda v: v.value or 0, default=None)
        return (best.labels.get("experiment_id") or None) if best else None

    @staticmethod
    def _transition(
        inst: AlertInstance,
        active: bool,
        now: datetime,
        *,
        keep_firing_for: timedelta,
        for_: timedelta = timedelta(0),
    ) -> None:
        if active:
            inst.last_true_at = now
            inst.keep_firing_since = None
            if inst.state in (AlertState.INACTIVE, AlertState.RESOLVED):
                inst.state = AlertState.PENDING
                inst.active_at = now
                inst.fired_at = None
                inst.resolved_at = None
            if inst.state == AlertState.PENDING and now - inst.active_at >= for_:  # type: ignore[operator]
                inst.state = AlertState.FIRING
                inst.fired_at = now
                inst.episode += 1
            return
        if inst.state == AlertState.PENDING:
            inst.state = AlertState.INACTIVE
        elif inst.state == AlertState.FIRING:
            # as Prometheus (rules/alerting.go): the grace counts from the first evaluation
            # that found the condition gone, not from the last one that found it true
            if keep_firing_for > timedelta(0):
                if inst.keep_firing_since is None:
                    inst.keep_firing_since = now
                if now - inst.keep_firing_since < keep_firing_for:
                    return
            inst.state = AlertState.RESOLVED
            inst.resolved_at = now
            inst.keep_firing_since = None


def replay(
    rules: Sequence[AnyRule],
    source: SignalSource,
    at: datetime,
    interval: timedelta,
    *,
    lookback: timedelta | None = None,
) -> Evaluation:
    """Evaluate as a monitor would have, every ``interval`` up to ``at``, from empty state.

    The default lookback (an hour plus the longest ``for`` and ``keep_firing_for``)
    lets pending and kept-firing instances become what they would have been.
    """
    if lookback is None:
        longest = max((r.for_ + r.keep_firing_for for r in rules), default=timedelta(0))
        lookback = longest + timedelta(hours=1)
    engine = AlertEngine(rules, source, None, persist=False)
    steps = max(0, int(lookback / interval))
    result = None
    for k in range(steps, -1, -1):
        result = engine.evaluate(at - k * interval)
    assert result is not None
    return result


def monitor_cycle_rows(store: StateStore, limit: int = 20) -> list[dict[str, Any]]:
    """The latest monitor cycles, newest first (holder, timing, steps)."""
    store.ensure_schema(ALERTING_MIGRATIONS)
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(monitor_cycles).order_by(monitor_cycles.c.id.desc()).limit(limit)
        ).mappings()
        return [{**r, "steps": json.loads(r["steps"])} for r in rows]


def rule_health_rows(store: StateStore) -> list[dict[str, Any]]:
    store.ensure_schema(ALERTING_MIGRATIONS)
    with store.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(rule_health).order_by(rule_health.c.rule)).mappings()
        ]
