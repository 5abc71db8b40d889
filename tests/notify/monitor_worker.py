"""Run as a subprocess by test_notify_fencing.py: one ``Monitor.run`` until SIGTERM.

argv: config overrides (JSON), holder name. Rules fire at once (no data, ``no_data:
alerting``); the signal source is empty and in memory.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from mlflow_llmops.alerting.signals import MemorySignalSource
from mlflow_llmops.config import load_config
from mlflow_llmops.monitor.cycle import Monitor


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    cfg = load_config(overrides=json.loads(sys.argv[1]), env={})
    mon = Monitor(cfg, source=MemorySignalSource(), steps={}, holder=sys.argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("READY", flush=True)
    mon.run(stop=stop)


if __name__ == "__main__":
    main()
