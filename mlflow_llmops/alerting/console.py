"""``ConsoleSink``: the default ``AlertSink`` until notifications are configured.

Prints one line when an instance starts firing (per episode) or resolves, and
again every ``repeat_interval`` while it keeps firing, like Alertmanager's
repeat interval; the monitor re-submits every firing alert each cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

from mlflow_llmops.alerting.model import Alert, AlertState


@dataclass
class ConsoleReport:
    """What one flush printed (``sent``) and held back as already shown (``deduplicated``)."""

    sent: int = 0
    deduplicated: int = 0
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"console: {self.sent} printed, {self.deduplicated} already shown"


def format_alert(alert: Alert) -> str:
    """One human line: state, severity, name, group labels, value vs threshold, summary."""
    group = ",".join(
        f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in ("alertname", "severity")
    )
    when = alert.ends_at if alert.resolved and alert.ends_at else alert.starts_at
    head = "RESOLVED" if alert.resolved else "FIRING"
    return (
        f"[{head}:{alert.severity.value}] {alert.name}{{{group}}} episode {alert.episode} "
        f"since {when:%Y-%m-%d %H:%M:%S}Z: {alert.annotations.get('summary', '')}"
    )


class ConsoleSink:
    """Writes alerts to a text stream (stdout by default), de-duplicated."""

    def __init__(
        self, stream: TextIO | None = None, *, repeat_interval: timedelta = timedelta(hours=4)
    ) -> None:
        self.stream = stream
        self.repeat_interval = repeat_interval
        self._queue: list[Alert] = []
        self._shown: dict[tuple[str, int, str], datetime] = {}
        self.history: list[Alert] = []

    def submit(self, alerts: Sequence[Alert], now: datetime) -> None:
        self._queue.extend(alerts)

    def flush(self, now: datetime) -> ConsoleReport:
        report = ConsoleReport()
        out = self.stream or sys.stdout
        for alert in self._queue:
            key = (alert.fingerprint, alert.episode, alert.state.value)
            last = self._shown.get(key)
            if last is not None and (
                alert.state == AlertState.RESOLVED or now - last < self.repeat_interval
            ):
                report.deduplicated += 1
                continue
            self._shown[key] = now
            line = format_alert(alert)
            print(line, file=out, flush=True)
            report.lines.append(line)
            report.sent += 1
            self.history.append(alert)
        self._queue.clear()
        return report
