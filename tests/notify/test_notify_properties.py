"""Property: whatever the monitor submits, a group is notified at most once per
group_interval (until it resolves completely), and every alert that keeps firing is notified within
group_wait + group_interval."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from notify_helpers import T0, Recorder, make_alert, resolved

from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.statestore.state import StateStore

WAIT, INTERVAL = 30, 300
step = st.tuples(
    st.sets(st.integers(0, 5), max_size=6),  # which alerts fire this cycle
    st.integers(10, 200),  # seconds to the next cycle
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(step, min_size=1, max_size=12))
def test_group_notification_spacing_and_eventual_delivery(cycles):
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(f"sqlite:///{tmp}/s.db")
        rec = Recorder()
        conf = NotificationsConfig.model_validate(
            {
                "receivers": [{"type": "console", "name": "rec"}],
                "group_by": ["alertname"],
                "group_wait": f"{WAIT}s",
                "group_interval": f"{INTERVAL}s",
                "repeat_interval": "4h",
                "inhibit_rules": [],
            }  # fmt: skip
        )
        d = Dispatcher(conf, store, notifiers={"rec": rec})
        now, firing, sent_at = T0, set(), []
        first_seen: dict[int, object] = {}
        for fire, gap in cycles:
            batch = [make_alert(f"G{i % 2}", model=str(i)) for i in sorted(fire)]
            batch += [resolved(make_alert(f"G{i % 2}", model=str(i)), now) for i in firing - fire]
            for i in fire:
                first_seen.setdefault(i, now)
            for i in firing - fire:
                first_seen.pop(i, None)
            firing = set(fire)
            before = len(rec.sent)
            d.submit(batch, now)
            d.flush(now)
            sent_at += [(n.group_labels["alertname"], now, n.status) for n in rec.sent[before:]]
            now += timedelta(seconds=gap)
        for g in ("G0", "G1"):
            sends = [(t, status) for name, t, status in sent_at if name == g]
            for (a, status), (b, _) in pairwise(sends):
                # a group that resolved completely starts afresh (new group_wait)
                if status != "resolved":
                    assert b - a >= timedelta(seconds=INTERVAL), sends
        # keep firing long enough and every one of them is notified
        end = now + timedelta(seconds=WAIT + 2 * INTERVAL)
        t = now
        while t <= end:
            d.submit([make_alert(f"G{i % 2}", model=str(i)) for i in sorted(firing)], t)
            d.flush(t)
            t += timedelta(seconds=60)
        notified = {a.labels["model"] for n in rec.sent for a in n.alerts if not a.resolved}
        assert {str(i) for i in firing} <= notified
        store.dispose()
