"""Run as a subprocess by test_notify_crash.py: decide notifications, then (maybe) send.

argv: state_url, config JSON, mode:
- "before": write the outbox and wait to be killed;
- "during": flush, the fake PagerDuty holds the answer until we are killed;
- "firing:N" / "resolved:N": the crash storm. Submit N groups of two alerts (firing, or
  resolved) as a monitor does on every start, flush on the wall clock until every group
  has been notified of that state and the outbox is empty, print DONE.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from notify_helpers import T0, make_alert, resolved

from mlflow_llmops.notify import Dispatcher
from mlflow_llmops.notify import tables as t
from mlflow_llmops.notify.config import NotificationsConfig
from mlflow_llmops.statestore.state import StateStore


def storm_alerts(groups: int, state: str) -> list:
    alerts = [make_alert(f"G{g:02d}", model=f"m{i}") for g in range(groups) for i in range(2)]
    return [resolved(a, T0) for a in alerts] if state == "resolved" else alerts


def settled(store: StateStore, state: str, groups: int) -> bool:
    with store.engine.connect() as c:
        busy = c.execute(
            sa.select(sa.func.count()).where(t.outbox.c.status.in_(("pending", "sending")))
        ).scalar_one()
        if state == "firing":
            done = c.execute(sa.select(sa.func.count()).where(t.groups.c.seq >= 1)).scalar_one()
        else:
            done = c.execute(
                sa.select(sa.func.count()).where(t.groups.c.active.is_(False))
            ).scalar_one()
    return busy == 0 and done >= groups


def main() -> None:
    state_url, config, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    store = StateStore(state_url)
    d = Dispatcher(NotificationsConfig.model_validate(config), store)
    if ":" in mode:
        state, n = mode.split(":")
        receivers = len(config["receivers"])
        d.submit(storm_alerts(int(n), state), datetime.now(UTC))
        print("STARTED", flush=True)
        while not settled(store, state, int(n) * receivers):
            d.flush(datetime.now(UTC))
            time.sleep(0.02)
        print("DONE", flush=True)
        return
    alerts = [make_alert("HighCost", model=f"m{i}") for i in range(3)] + [make_alert("Latency")]
    d.submit(alerts, T0)
    if mode == "before":
        r = d.decide(T0)
        print(f"WRITTEN {r.notifications_enqueued}", flush=True)
        time.sleep(600)
    else:
        print("SENDING", flush=True)
        d.flush(T0)
        print("DONE", flush=True)


if __name__ == "__main__":
    main()
