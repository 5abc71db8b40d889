"""Run as a subprocess by test_notify_crash.py: decide notifications, then (maybe) send.

argv: state_url, config JSON, mode ("before": write the outbox and wait to be killed;
"during": flush, the fake PagerDuty holds the answer until we are killed).
"""

from __future__ import annotations

import json
import sys
import time

from notify_helpers import T0, make_alert

from mlflow_llmops.alerting.dispatch import Dispatcher
from mlflow_llmops.alerting.notify_config import NotificationsConfig
from mlflow_llmops.store.state import StateStore

state_url, config, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
d = Dispatcher(NotificationsConfig.model_validate(config), StateStore(state_url))
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
