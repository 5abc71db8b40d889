"""The notify pipeline: routing, grouping, inhibition, silences, dedup, outbox, delivery."""

from mlflow_llmops.alerting.dispatch.pipeline import (
    AlertSink,
    Dispatcher,
    DispatchReport,
    Silences,
    SqlThreadStore,
)
from mlflow_llmops.alerting.dispatch.stages import Matcher, Silence, TokenBucket, needs_update
from mlflow_llmops.alerting.dispatch.tables import NOTIFY_MIGRATIONS

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
