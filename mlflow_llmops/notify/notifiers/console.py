"""Print notifications (the demo, trying a route before wiring Slack)."""

from __future__ import annotations

import sys
from typing import TextIO

from mlflow_llmops.notify.config import ConsoleReceiver
from mlflow_llmops.notify.notifiers.base import (
    Notification,
    SendResult,
    describe_alert,
    target_desc,
)


def render_text(n: Notification) -> str:
    lines = [f"[{n.receiver}] {n.title}  (group {n.group_key}, #{n.seq})"]
    if n.kind == "rollback" and n.rollback:
        r = n.rollback
        lines.append(
            f"    {r.get('outcome')}: {r.get('target_desc')} v{r.get('from_version')} -> "
            f"v{r.get('to_version')} mode={r.get('mode')} ({r.get('reason')})"
        )
    elif n.kind == "test":
        lines.append(f"    {n.text}")
    for a in n.firing + n.resolved_alerts:
        tgt = target_desc(a)
        state = "RESOLVED" if a.resolved else a.severity.value.upper()
        lines.append(f"    {state:<9} {a.name}{' ' + tgt if tgt else ''}: {describe_alert(a)}")
    return "\n".join(lines)


class ConsoleNotifier:
    def __init__(self, cfg: ConsoleReceiver, stream: TextIO | None = None) -> None:
        self.name = cfg.name
        self.stream = stream

    def send(self, n: Notification) -> SendResult:
        print(render_text(n), file=self.stream or sys.stdout, flush=True)
        return SendResult(requests=0)
