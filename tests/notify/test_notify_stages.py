"""Each pipeline stage on its own: routing, inhibit, silence, dedup, backoff, rate limit."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from notify_helpers import T0, make_alert, resolved

from mlflow_llmops.notify.config import InhibitRule, RateLimit, RetryPolicy, Route
from mlflow_llmops.notify.stages import (
    Inhibitor,
    Matcher,
    NflogEntry,
    Silence,
    TokenBucket,
    backoff,
    gives_up,
    group_labels_for,
    inhibit,
    is_inhibited,
    match_routes,
    needs_update,
    silence,
    silenced_by,
)

D = {
    "group_by": ("alertname",),
    "group_wait": timedelta(seconds=30),
    "group_interval": timedelta(minutes=5),
    "repeat_interval": timedelta(hours=4),
}


def test_routing_first_match_wins_continue_and_inheritance():
    root = Route.model_validate(
        {
            "receiver": "default",
            "group_by": ["alertname", "model"],
            "routes": [
                {"match": {"severity": "critical"}, "receiver": "pager", "continue": True,
                 "group_wait": "5s"},
                {"match_re": {"model": "gpt-4.*"}, "receiver": "openai-team"},
                {"match": {"team": "search"}, "receiver": "search"},
            ],
        }
    )  # fmt: skip
    crit = match_routes({"alertname": "X", "severity": "critical", "model": "gpt-4o"}, root, **D)
    assert [m.receiver for m in crit] == ["pager", "openai-team"]
    assert crit[0].group_wait == timedelta(seconds=5)
    assert crit[1].group_wait == timedelta(seconds=30)
    assert crit[0].group_by == ("alertname", "model")
    other = match_routes({"alertname": "X", "severity": "warning", "model": "claude"}, root, **D)
    assert [(m.receiver, m.path) for m in other] == [("default", "0")]
    # first matching child without continue stops the search
    both = match_routes({"alertname": "X", "model": "gpt-4", "team": "search"}, root, **D)
    assert [m.receiver for m in both] == ["openai-team"]


def test_group_labels_and_group_by_all():
    labels = {"alertname": "A", "model": "m", "route": "/chat"}
    assert group_labels_for(labels, ("alertname", "team")) == {"alertname": "A", "team": ""}
    assert group_labels_for(labels, ("...",)) == dict(sorted(labels.items()))


def test_critical_inhibits_warning_with_equal_labels_only():
    rules = [InhibitRule(source_match={"severity": "critical"}, target_match={"severity": "warning"},
                         equal=("alertname", "model"))]  # fmt: skip
    crit = make_alert("Latency", "critical", model="a")
    warn_same = make_alert("Latency", "warning", model="a")
    warn_other = make_alert("Latency", "warning", model="b")
    assert is_inhibited(warn_same, [crit], rules)
    assert not is_inhibited(warn_other, [crit], rules)
    assert not is_inhibited(warn_same, [resolved(crit, T0)], rules)  # only firing sources
    assert not is_inhibited(crit, [crit], rules)


def test_silence_matchers():
    s = Silence(
        "s1",
        (Matcher.parse("alertname=HighCost"), Matcher.parse("model=~gpt-4.*"),
         Matcher.parse("env!=dev")),
        T0, T0 + timedelta(hours=1), "me", "deploy",
    )  # fmt: skip
    a = make_alert("HighCost", model="gpt-4o", env="prod")
    assert silenced_by(a, [s], T0 + timedelta(minutes=1)) is s
    assert silenced_by(a, [s], T0 + timedelta(hours=1)) is None  # expired
    assert silenced_by(make_alert("HighCost", model="claude"), [s], T0) is None
    assert silenced_by(make_alert("HighCost", model="gpt-4o", env="dev"), [s], T0) is None
    with pytest.raises(ValueError, match="name=value"):
        Matcher.parse("just words")
    with pytest.raises(ValueError, match="regular expression"):
        Matcher.parse("model=~(")


def test_inhibit_and_silence_stages_keep_the_rest_in_order_and_count_what_they_mute():
    rules = [InhibitRule(source_match={"severity": "critical"}, target_match={"severity": "warning"},
                         equal=("alertname",))]  # fmt: skip
    crit = make_alert("Latency", "critical", model="a")
    warn = make_alert("Latency", "warning", model="b")
    gone = resolved(make_alert("Latency", "warning", model="c"), T0)
    cost = make_alert("HighCost", "warning", model="a")
    kept, muted = inhibit([crit, warn, gone, cost], Inhibitor(rules, [crit, warn, cost]))
    assert (kept, muted) == ([crit, gone, cost], 1)  # a resolved alert is never inhibited
    s = Silence("s1", (Matcher.parse("alertname=HighCost"),), T0, T0 + timedelta(hours=1),
                "me", "deploy")  # fmt: skip
    assert silence(kept, [s], T0) == ([crit, gone], 1)
    assert silence(kept, [s], T0 + timedelta(hours=1)) == (kept, 0)  # expired


def test_needs_update_follows_alertmanager():
    now = T0 + timedelta(hours=1)
    rep = timedelta(hours=4)
    kw = {"send_resolved": True, "repeat_interval": rep, "now": now}
    assert needs_update(None, {"a"}, set(), **kw)
    assert not needs_update(None, set(), {"a"}, **kw)  # never notified, only resolved
    e = NflogEntry(now - timedelta(minutes=5), frozenset({"a"}), frozenset())
    assert not needs_update(e, {"a"}, set(), **kw)  # nothing new
    assert needs_update(e, {"a", "b"}, set(), **kw)  # a new firing alert
    assert needs_update(e, set(), {"a"}, **kw)  # all resolved
    e2 = NflogEntry(now - timedelta(minutes=5), frozenset({"a", "b"}), frozenset())
    assert needs_update(e2, {"a"}, {"b"}, **kw)  # newly resolved, send_resolved
    assert not needs_update(e2, {"a"}, {"b"}, **{**kw, "send_resolved": False})
    old = NflogEntry(now - rep, frozenset({"a"}), frozenset())
    assert needs_update(old, {"a"}, set(), **kw)  # repeat interval passed
    empty = NflogEntry(now, frozenset(), frozenset({"a"}))
    assert not needs_update(empty, set(), {"a"}, **kw)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    p = RetryPolicy(initial_backoff=timedelta(seconds=1), max_backoff=timedelta(seconds=60))
    rng = random.Random(1)
    d1 = [backoff(1, p, rng=rng).total_seconds() for _ in range(50)]
    d4 = [backoff(4, p, rng=rng).total_seconds() for _ in range(50)]
    assert all(0.5 <= d <= 1 for d in d1) and len(set(d1)) > 10
    assert all(4 <= d <= 8 for d in d4)
    assert all(backoff(20, p, rng=rng).total_seconds() <= 60 for _ in range(20))
    assert backoff(1, p, retry_after=7, rng=rng).total_seconds() == 7
    assert gives_up(p.max_attempts, T0, T0, p)
    assert gives_up(1, T0, T0 + p.max_age, p)
    assert not gives_up(1, T0, T0, p)


def test_token_bucket_on_injected_time():
    b = TokenBucket(RateLimit(per_second=1, burst=2))
    assert b.take(T0) == 0 and b.take(T0) == 0
    assert b.take(T0) == pytest.approx(1.0)
    assert b.take(T0 + timedelta(seconds=0.5)) == pytest.approx(0.5)
    assert b.take(T0 + timedelta(seconds=1)) == 0
    assert b.take(T0 + timedelta(seconds=10)) == 0  # refilled, capped at burst
    assert b.take(T0 + timedelta(seconds=10)) == 0
    assert b.take(T0 + timedelta(seconds=10)) > 0


def test_the_readme_route_example_pages_and_posts_critical_alerts():
    """The example users copy: critical to PagerDuty and Slack, the rest to Slack."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)
                 if "receivers:" in b and "route:" in b)  # fmt: skip
    route = yaml.safe_load(block)["alerting"]["notifications"]["route"]
    root = Route.model_validate(route)
    crit = match_routes({"alertname": "X", "severity": "critical"}, root, **D)
    assert [m.receiver for m in crit] == ["oncall", "team-slack"]
    warn = match_routes({"alertname": "X", "severity": "warning"}, root, **D)
    assert [m.receiver for m in warn] == ["team-slack"]
