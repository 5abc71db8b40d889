"""The small stages of the notify pipeline, each a plain function testable on its own.

Order, as in Alertmanager: route -> group -> (wait) -> inhibit -> silence ->
dedup -> outbox write (set-notified) -> rate limit -> send -> retry.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.notify.config import InhibitRule, RateLimit, RetryPolicy, Route

# -- routing ---------------------------------------------------------------


@dataclass(frozen=True)
class RouteMatch:
    """Where one alert goes: a receiver with the grouping settings of the matched route."""

    receiver: str
    path: str
    group_by: tuple[str, ...]
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta
    send_resolved: bool = True


@dataclass(frozen=True)
class _Defaults:
    receiver: str
    group_by: tuple[str, ...]
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta


def _route_matches(r: Route, labels: Mapping[str, str]) -> bool:
    for k, v in r.match.items():
        if labels.get(k, "") != v:
            return False
    for k, pattern in r.match_re.items():
        if not re.fullmatch(pattern, labels.get(k, "")):
            return False
    return True


def match_routes(
    labels: Mapping[str, str],
    root: Route,
    *,
    group_by: tuple[str, ...],
    group_wait: timedelta,
    group_interval: timedelta,
    repeat_interval: timedelta,
) -> list[RouteMatch]:
    """Alertmanager's route matching: depth first, first matching child wins unless
    ``continue``; a node whose children do not match takes the alert itself."""

    def inherit(r: Route, d: _Defaults) -> _Defaults:
        return _Defaults(
            receiver=r.receiver or d.receiver,
            group_by=r.group_by if r.group_by is not None else d.group_by,
            group_wait=r.group_wait if r.group_wait is not None else d.group_wait,
            group_interval=r.group_interval if r.group_interval is not None else d.group_interval,
            repeat_interval=r.repeat_interval
            if r.repeat_interval is not None
            else d.repeat_interval,
        )

    def walk(r: Route, d: _Defaults, path: str) -> list[RouteMatch]:
        if not _route_matches(r, labels):
            return []
        here = inherit(r, d)
        out: list[RouteMatch] = []
        for i, child in enumerate(r.routes):
            m = walk(child, here, f"{path}.{i}")
            if m:
                out.extend(m)
                if not child.continue_:
                    break
        if not out:
            out = [
                RouteMatch(
                    here.receiver,
                    path,
                    here.group_by,
                    here.group_wait,
                    here.group_interval,
                    here.repeat_interval,
                )
            ]
        return out

    base = _Defaults(root.receiver or "", group_by, group_wait, group_interval, repeat_interval)
    return walk(root, base, "0")


def group_labels_for(labels: Mapping[str, str], group_by: Sequence[str]) -> dict[str, str]:
    """The labels that name the group; ``...`` groups by every label (one group per alert)."""
    if "..." in group_by:
        return dict(sorted(labels.items()))
    return {k: labels.get(k, "") for k in sorted(group_by)}


def group_key(path: str, receiver: str, glabels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(glabels.items()))
    return f"{{{path}}}:{receiver}:{{{inner}}}"


# -- inhibit ---------------------------------------------------------------


def _matches(labels: Mapping[str, str], matchers: Mapping[str, str]) -> bool:
    return all(labels.get(k, "") == v for k, v in matchers.items())


class Inhibitor:
    """Alertmanager's inhibition: while an alert matching a rule's source fires, alerts
    matching its target with the same ``equal`` labels are muted. Built once per flush
    (indexed by the ``equal`` values), so checking an alert is O(rules)."""

    def __init__(self, rules: Sequence[InhibitRule], firing: Iterable[Alert]) -> None:
        self.rules = list(rules)
        self._sources: list[dict[tuple[str, ...], set[str]]] = [{} for _ in self.rules]
        for a in firing:
            if a.resolved:
                continue
            for i, rule in enumerate(self.rules):
                if _matches(a.labels, rule.source_match):
                    key = tuple(a.labels.get(k, "") for k in rule.equal)
                    self._sources[i].setdefault(key, set()).add(a.fingerprint)

    def mutes(self, target: Alert) -> bool:
        """An alert never inhibits itself."""
        for i, rule in enumerate(self.rules):
            if not _matches(target.labels, rule.target_match):
                continue
            fps = self._sources[i].get(tuple(target.labels.get(k, "") for k in rule.equal))
            if fps and (len(fps) > 1 or target.fingerprint not in fps):
                return True
        return False


def is_inhibited(target: Alert, firing: Iterable[Alert], rules: Sequence[InhibitRule]) -> bool:
    """True if a firing alert matching a rule's source mutes ``target`` (same ``equal`` labels)."""
    return Inhibitor(rules, firing).mutes(target)


def inhibit(alerts: Sequence[Alert], inhibitor: Inhibitor) -> tuple[list[Alert], int]:
    """The inhibit stage: the alerts left once ``inhibitor`` muted the firing ones it
    mutes (a resolved alert always passes), and how many it muted."""
    kept = [a for a in alerts if a.resolved or not inhibitor.mutes(a)]
    return kept, len(alerts) - len(kept)


# -- silence ---------------------------------------------------------------

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # "=", "!=", "=~", "!~"
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``name=value``, ``name!=value``, ``name=~regex``, ``name!~regex``."""
        m = _MATCHER.match(text)
        if not m:
            raise ValueError(
                f"not a label matcher: {text!r}; write name=value, name!=value, "
                "name=~regex or name!~regex"
            )
        name, op, value = m.groups()
        value = value.strip('"')
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"matcher {text!r}: invalid regular expression: {e}") from None
        return cls(name, op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = re.fullmatch(self.value, v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def mutes(self, alert: Alert, now: datetime) -> bool:
        return self.active(now) and all(m.matches(alert.labels) for m in self.matchers)


def silenced_by(alert: Alert, silences: Iterable[Silence], now: datetime) -> Silence | None:
    for s in silences:
        if s.mutes(alert, now):
            return s
    return None


def silence(
    alerts: Sequence[Alert], silences: Sequence[Silence], now: datetime
) -> tuple[list[Alert], int]:
    """The silence stage: the alerts no silence mutes at ``now``, and how many were muted."""
    kept = [a for a in alerts if silenced_by(a, silences, now) is None]
    return kept, len(alerts) - len(kept)


# -- dedup -----------------------------------------------------------------


@dataclass(frozen=True)
class NflogEntry:
    """What was last notified for a group (Alertmanager's notification log entry)."""

    notified_at: datetime
    firing: frozenset[str]
    resolved: frozenset[str]


def needs_update(
    entry: NflogEntry | None,
    firing: set[str] | frozenset[str],
    resolved: set[str] | frozenset[str],
    *,
    send_resolved: bool,
    repeat_interval: timedelta,
    now: datetime,
) -> bool:
    """Alertmanager's ``DedupStage.needsUpdate``: notify on new firing alerts, on all
    resolved, on newly resolved (if ``send_resolved``), or when ``repeat_interval`` passed."""
    if entry is None:
        return len(firing) > 0
    if not set(firing) <= entry.firing:
        return True
    if not firing:
        # all resolved; if nothing was ever notified as firing the receiver never knew
        return len(entry.firing) > 0
    if send_resolved and not set(resolved) <= entry.resolved:
        return True
    return entry.notified_at <= now - repeat_interval


# -- retry -----------------------------------------------------------------


def backoff(
    attempts: int,
    policy: RetryPolicy,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Exponential backoff with jitter (half to full delay); never sooner than Retry-After."""
    base = policy.initial_backoff.total_seconds() * (2 ** max(0, attempts - 1))
    cap = policy.max_backoff.total_seconds()
    delay = min(cap, base)
    delay = (rng or random).uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap * 4))
    return timedelta(seconds=delay)


def gives_up(attempts: int, created_at: datetime, now: datetime, policy: RetryPolicy) -> bool:
    return attempts >= policy.max_attempts or now - created_at >= policy.max_age


# -- rate limit ------------------------------------------------------------


class TokenBucket:
    """Per-receiver rate limit on injected time: ``take(now)`` or how long to wait."""

    def __init__(self, limit: RateLimit) -> None:
        self.rate = limit.per_second
        self.capacity = float(limit.burst)
        self.tokens = float(limit.burst)
        self.updated: datetime | None = None
        self._lock = threading.Lock()

    def _refill(self, now: datetime) -> None:
        if self.updated is not None and now > self.updated:
            elapsed = (now - self.updated).total_seconds()
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def take(self, now: datetime, n: float = 1.0) -> float:
        """0.0 if ``n`` tokens were taken, else the seconds until they will be available."""
        with self._lock:
            self._refill(now)
            if self.tokens >= n:
                self.tokens -= n
                return 0.0
            return (n - self.tokens) / self.rate
