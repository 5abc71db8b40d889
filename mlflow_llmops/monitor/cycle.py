"""``mlflow-llmops monitor``: the main job, one cycle at a time.

Each cycle re-prices new spans, runs due scorers, evaluates the rules and hands
the alerts to the sink (``submit`` then ``flush``). A failed step is logged and
reported; the evaluation still happens. Several monitors on one state store
compete for a lease: only the holder evaluates, and a standby takes over
within one evaluation interval when the holder dies (lease TTL = half the
interval by default, renewed every third of the TTL by a heartbeat thread).

Fencing: each lease term has an epoch (one more than the previous holder's).
The leader fences its state store with it, so every transaction (alert state,
dispatch groups, outbox claims right before a send, the cycle log) checks
inside itself that the lease is still its own at that epoch; a leader frozen
past its lease (SIGSTOP, a long GC pause) resumes, is refused its first write
and steps down, instead of running one more evaluate-and-dispatch cycle
beside the new leader.

Delivery has its own timers (``group_wait``, ``group_interval``, retries,
rate limits) that must not wait for the next evaluation: beside the heartbeat,
a delivery thread flushes the sink whenever ``sink.next_due`` says so, while
this monitor holds the lease. ``--once`` keeps flushing after its cycle while
a timer is due within ``group_wait``, so a cron run delivers what it found.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlflow_llmops.alerting.console import ConsoleSink
from mlflow_llmops.alerting.engine import (
    ALERTING_MIGRATIONS,
    AlertEngine,
    AnyRule,
    Evaluation,
    monitor_cycles,
)
from mlflow_llmops.alerting.links import AlertLinks
from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.alerting.signals import SignalSource, SqlSignalSource
from mlflow_llmops.core.clock import Clock, SystemClock
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.statestore.state import FencedOut, LeaseFence, StateStore

if TYPE_CHECKING:
    from mlflow_llmops.config import LlmopsConfig

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """docs/contracts.md: what the monitor hands alerts to. A sink with timers of its own
    also has ``next_due(now) -> datetime | None`` (the dispatcher; the console has none)."""

    def submit(self, alerts: Sequence[Alert], now: datetime) -> None: ...
    def flush(self, now: datetime) -> Any: ...


def _log_delivery(report: Any) -> None:
    if getattr(report, "sent", 0) or getattr(report, "failed", None):
        summary = getattr(report, "summary", None)
        log.info("delivery: %s", summary() if callable(summary) else report)


def deliver_when_due(
    sink: Any,
    clock: Clock,
    stop: threading.Event,
    *,
    leading: Callable[[], bool],
    max_sleep_s: float = 1.0,
) -> None:
    """Flush ``sink`` whenever one of its timers is due, while ``leading()`` (only the
    lease holder delivers), until ``stop``: the delivery thread of ``Monitor.run``."""
    while not stop.is_set():
        wait = max_sleep_s
        if leading():
            try:
                now = clock.now()
                due = sink.next_due(now)
                if due is not None and due <= now:
                    _log_delivery(sink.flush(now))
                    now = clock.now()
                    due = sink.next_due(now)
                if due is not None:
                    wait = min(max_sleep_s, max(0.01, (due - now).total_seconds()))
            except FencedOut as e:
                log.warning("delivery stopped: %s", e)
            except Exception as e:  # noqa: BLE001 - e.g. a state store hiccup: try again
                log.warning("delivery failed: %s: %s", type(e).__name__, e)
        stop.wait(wait)


@dataclass
class StepResult:
    ok: bool
    duration_ms: float
    detail: str = ""


@dataclass
class CycleReport:
    """One monitor cycle: step outcomes and timings, the evaluation, what was sent."""

    started_at: datetime
    holder: str
    dry_run: bool
    steps: dict[str, StepResult] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    dispatch: Any = None
    duration_s: float = 0.0

    @property
    def alerts(self) -> list[Alert]:
        return self.evaluation.alerts if self.evaluation else []

    @property
    def fenced(self) -> bool:
        """A step was refused because a newer leader holds the lease."""
        return any(s.detail.startswith(FencedOut.__name__) for s in self.steps.values())

    @property
    def failed_steps(self) -> list[str]:
        return [name for name, s in self.steps.items() if not s.ok]

    def summary(self) -> str:
        parts = [
            f"{name} {'ok' if s.ok else 'FAILED'} {s.duration_ms:.0f}ms"
            + (f" ({s.detail})" if s.detail else "")
            for name, s in self.steps.items()
        ]
        ev = self.evaluation
        tail = ""
        if ev is not None:
            tail = (
                f"; {ev.rules} rules, {len(ev.firing)} firing, {len(ev.pending)} pending, "
                f"{len(ev.alerts)} alerts submitted"
                + (f", {len(ev.errors)} rule errors" if ev.errors else "")
            )
        mode = " [dry run]" if self.dry_run else ""
        return (
            f"cycle at {self.started_at:%Y-%m-%d %H:%M:%S}Z{mode} took "
            f"{self.duration_s * 1000:.0f}ms: " + ", ".join(parts) + tail
        )


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def signal_source_from_config(config: LlmopsConfig) -> SqlSignalSource:
    """The SQL signal source on the tracking database named by the config."""
    url = config.tracking.sql_url()
    if url is None:
        raise ConfigError(
            f"tracking.uri is {config.tracking.uri!r} (an HTTP server): alert signals are computed "
            "in SQL; set tracking.database_url to the server's backend store URL"
        )
    return SqlSignalSource.from_url(url, experiment_ids=config.alerting.experiment_ids)


def default_sink(config: LlmopsConfig, store: StateStore) -> AlertSink:
    """The dispatch pipeline (with rollback hooks) when receivers are configured, else the
    console."""
    if not config.alerting.notifications.receivers:
        return ConsoleSink()
    from mlflow_llmops.notify import Dispatcher

    d = Dispatcher(
        config.alerting.notifications,
        store,
        evaluation_interval=config.alerting.evaluation_interval,
    )
    if config.alerting.rollback.hooks:
        from mlflow_llmops.rollback import RollbackManager

        d.rollback = RollbackManager(
            config.alerting.rollback, store, config.tracking.uri, notifier=d
        )
    return d


class Monitor:
    """Runs monitor cycles: re-price, score, evaluate, dispatch."""

    def __init__(
        self,
        config: LlmopsConfig,
        *,
        store: StateStore | None = None,
        sink: AlertSink | None = None,
        clock: Clock | None = None,
        source: SignalSource | None = None,
        rules: Sequence[AnyRule] | None = None,
        dry_run: bool = False,
        holder: str | None = None,
        base_dir: str | Path | None = None,
        steps: dict[str, Callable[[datetime], str]] | None = None,
    ) -> None:
        self.config = config
        acfg = config.alerting
        self.store = store or StateStore(config.state_store.url)
        self.store.ensure_schema(ALERTING_MIGRATIONS)
        self.clock = clock or SystemClock()
        self.dry_run = dry_run
        self.holder = holder or default_holder()
        self.interval: timedelta = acfg.evaluation_interval
        self.lease_ttl: timedelta = acfg.lease_ttl()
        self.lease_name = acfg.monitor.lease_name
        self.rules = list(rules) if rules is not None else acfg.all_rules(base_dir)
        self.source = source or signal_source_from_config(config)
        self.sink = sink or (ConsoleSink() if dry_run else default_sink(config, self.store))
        self.engine = AlertEngine(
            self.rules,
            self.source,
            self.store,
            persist=not dry_run,
            evaluation_delay=acfg.evaluation_delay,
            resolved_retention=acfg.resolved_retention,
            links=AlertLinks.from_config(acfg),
        )
        if steps is None:
            steps = {}
            if acfg.monitor.reprice:
                steps["reprice"] = self._reprice
            if acfg.monitor.score:
                steps["score"] = self._score
        self.steps = steps
        self.is_leader = False
        #: the lease epoch this monitor writes under (None before it first leads)
        self.epoch: int | None = None

    # -- steps ------------------------------------------------------------
    def _reprice(self, now: datetime) -> str:
        from mlflow_llmops.pricing import reprice

        exp = list(self.config.alerting.experiment_ids) or None
        result = reprice(
            self.config.tracking.uri,
            state_store=self.store,
            experiment_ids=exp,
            now=now,
            database_url=self.config.tracking.database_url,
            config=self.config.pricing,
        )
        return f"{result.spans_written} spans priced"

    def _score(self, now: datetime) -> str:
        from mlflow_llmops.scoring import run_due_scorers

        report = run_due_scorers(self.config, self.store, now)
        summary = getattr(report, "summary", None)
        return summary() if callable(summary) else str(report)[:200]

    # -- lease --------------------------------------------------------------
    def try_lead(self, now: datetime | None = None) -> bool:
        """Take or renew the evaluator lease; dry runs never compete for it."""
        if self.dry_run:
            self.is_leader = True
            return True
        try:
            epoch = self.store.take_lease(
                self.lease_name,
                self.holder,
                self.lease_ttl.total_seconds(),
                now or self.clock.now(),
            )
            self.is_leader = epoch is not None
            if epoch is not None and epoch != self.epoch:
                self.epoch = epoch
                # every later transaction on this store (alert state, groups, outbox
                # claims, cycle log) is refused once a newer leader has the lease
                self.store.set_fence(
                    LeaseFence(self.lease_name, self.holder, epoch, self.lease_ttl.total_seconds())
                )
        except Exception as e:  # noqa: BLE001 - a store hiccup means "not leader" this time
            log.warning(
                "monitor %s: cannot reach the state store for the lease: %s", self.holder, e
            )
            self.is_leader = False
        return self.is_leader

    def release(self) -> None:
        if not self.dry_run:
            self.store.release_lease(self.lease_name, self.holder)
        self.is_leader = False

    # -- one cycle ------------------------------------------------------------
    def cycle(self, now: datetime | None = None) -> CycleReport:
        """Run every step, evaluate, dispatch. Call it only while holding the lease."""
        now = now or self.clock.now()
        t0 = time.perf_counter()
        report = CycleReport(started_at=now, holder=self.holder, dry_run=self.dry_run)
        for name, step in self.steps.items():
            s0 = time.perf_counter()
            try:
                detail = step(now)
                report.steps[name] = StepResult(True, (time.perf_counter() - s0) * 1000, detail)
            except Exception as e:  # noqa: BLE001 - one failed step must not stop the cycle
                log.warning("monitor step %s failed: %s: %s", name, type(e).__name__, e)
                report.steps[name] = StepResult(
                    False, (time.perf_counter() - s0) * 1000, f"{type(e).__name__}: {e}"[:300]
                )
        s0 = time.perf_counter()
        try:
            ev = self.engine.evaluate(now)
            report.evaluation = ev
            detail = f"{len(ev.firing)} firing" + (
                f", errors in {', '.join(sorted(ev.errors))}" if ev.errors else ""
            )
            report.steps["evaluate"] = StepResult(
                not ev.errors, (time.perf_counter() - s0) * 1000, detail
            )
        except Exception as e:  # noqa: BLE001 - e.g. the state store is unreachable
            log.error("monitor evaluation failed: %s: %s", type(e).__name__, e)
            report.steps["evaluate"] = StepResult(
                False, (time.perf_counter() - s0) * 1000, f"{type(e).__name__}: {e}"[:300]
            )
        if report.evaluation is not None:
            s0 = time.perf_counter()
            try:
                self.sink.submit(report.evaluation.alerts, now)
                report.dispatch = self.sink.flush(now)
                summary = getattr(report.dispatch, "summary", None)
                detail = summary() if callable(summary) else ""
                report.steps["dispatch"] = StepResult(
                    True, (time.perf_counter() - s0) * 1000, detail
                )
            except Exception as e:  # noqa: BLE001 - reported, retried next cycle
                log.error("monitor dispatch failed: %s: %s", type(e).__name__, e)
                report.steps["dispatch"] = StepResult(
                    False, (time.perf_counter() - s0) * 1000, f"{type(e).__name__}: {e}"[:300]
                )
        report.duration_s = time.perf_counter() - t0
        if report.fenced:
            self.is_leader = False
            log.warning(
                "monitor %s: a newer leader holds the lease (this one had epoch %s); "
                "nothing written or sent by this cycle",
                self.holder,
                self.epoch,
            )
            return report
        log.info("%s", report.summary())
        if not self.dry_run:
            self._record(report)
        return report

    def _record(self, report: CycleReport) -> None:
        ev = report.evaluation
        try:
            with self.store.engine.begin() as conn:
                conn.execute(
                    monitor_cycles.insert().values(
                        holder=self.holder,
                        started_at=report.started_at,
                        duration_ms=report.duration_s * 1000,
                        dry_run=report.dry_run,
                        steps=json.dumps(
                            {
                                k: {"ok": s.ok, "ms": round(s.duration_ms, 1), "detail": s.detail}
                                for k, s in report.steps.items()
                            }
                        ),
                        firing=len(ev.firing) if ev else 0,
                        sent=len(ev.alerts) if ev else 0,
                    )
                )
        except Exception as e:  # noqa: BLE001 - the cycle log is best effort
            log.warning("cannot record the monitor cycle: %s", e)

    def group_wait(self) -> timedelta:
        """The longest ``group_wait`` a new group may have to wait (0 without timers)."""
        if not hasattr(self.sink, "next_due"):
            return timedelta(0)
        return getattr(self.sink, "max_group_wait", timedelta(0))

    def drain(self, started: datetime, stop: threading.Event | None = None) -> int:
        """After a ``--once`` cycle: keep flushing while a timer of the sink is due within
        ``group_wait`` (new groups wait that long before their first message; retries and
        rate limits on the way), never past ``started`` + one evaluation interval.
        Returns the number of flushes."""
        next_due = getattr(self.sink, "next_due", None)
        if next_due is None:
            return 0
        stop = stop or threading.Event()
        within = self.group_wait()
        horizon = started + self.interval
        deadline = time.monotonic() + self.interval.total_seconds()
        flushes = 0
        while not stop.is_set():
            now = self.clock.now()
            due = next_due(now)
            if due is None or due - now > within or due > horizon:
                break
            wait = (due - now).total_seconds()
            if time.monotonic() + wait > deadline:
                break
            if wait > 0 and (stop.wait(wait) or self.clock.now() == now):
                break  # stopped, or a clock that does not move with time (a fake one)
            if not self.try_lead():
                log.warning("monitor %s lost the lease while delivering", self.holder)
                break
            _log_delivery(self.sink.flush(self.clock.now()))
            flushes += 1
            if time.monotonic() >= deadline:
                break
        return flushes

    # -- the loop ---------------------------------------------------------------
    def run(
        self,
        *,
        once: bool = False,
        max_cycles: int | None = None,
        stop: threading.Event | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> list[CycleReport]:
        """Loop every evaluation interval (or one cycle with ``once``) while leading."""
        reports: list[CycleReport] = []
        stop = stop or threading.Event()
        if once:
            if self.try_lead():
                reports.append(self.cycle())
                if on_cycle:
                    on_cycle(reports[-1])
                self.drain(reports[-1].started_at, stop)
            else:
                log.warning("another monitor holds the lease %r; nothing to do", self.lease_name)
            return reports
        poll = max(0.05, self.lease_ttl.total_seconds() / 3)
        done = threading.Event()

        def heartbeat() -> None:
            while not done.is_set():
                was = self.is_leader
                self.try_lead()
                if self.is_leader != was:
                    log.warning(
                        "monitor %s %s the evaluator lease",
                        self.holder,
                        "acquired" if self.is_leader else "lost",
                    )
                done.wait(poll)

        hb = threading.Thread(target=heartbeat, name="llmops-monitor-lease", daemon=True)
        threads = [hb]
        if hasattr(self.sink, "next_due"):
            threads.append(
                threading.Thread(
                    target=deliver_when_due,
                    args=(self.sink, self.clock, done),
                    kwargs={"leading": lambda: self.is_leader},
                    name="llmops-monitor-delivery",
                    daemon=True,
                )
            )
        self.try_lead()
        for th in threads:
            th.start()
        next_due: datetime | None = None
        try:
            while not stop.is_set():
                if self.is_leader:
                    now = self.clock.now()
                    if next_due is None or now >= next_due:
                        reports.append(self.cycle(now))
                        if on_cycle:
                            on_cycle(reports[-1])
                        next_due = now + self.interval
                        if max_cycles is not None and len(reports) >= max_cycles:
                            break
                else:
                    next_due = None  # on becoming leader, evaluate at once
                stop.wait(poll)
        finally:
            done.set()
            for th in threads:
                th.join(timeout=15)
            try:
                self.release()
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                log.warning("cannot release the lease: %s", e)
        return reports
