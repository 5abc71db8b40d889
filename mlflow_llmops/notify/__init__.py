"""The notify pipeline: routing, grouping, inhibition, silences, dedup, outbox, delivery."""

from mlflow_llmops.notify.pipeline import (
    AlertSink,
    Dispatcher,
    DispatchReport,
    Silences,
    SqlThreadStore,
)
from mlflow_llmops.notify.stages import Matcher, Silence, TokenBucket, needs_update
from mlflow_llmops.notify.tables import NOTIFY_MIGRATIONS

__all__ = [
    "NOTIFY_MIGRATIONS",
    "AlertSink",
    "DispatchReport",
    "Dispatcher",
    "Matcher",
    "Silence",
    "Silences",
    "SqlThreadStore",
    "TokenBucket",
    "needs_update",
]
