"""State-store tables of the dispatch pipeline (component ``notify``).

The aggregation groups and their notification log survive a restart, and the
outbox holds every notification from the moment it is decided until it is
delivered or given up: a crash between deciding and sending loses nothing.
"""

from __future__ import annotations

import sqlalchemy as sa

from mlflow_llmops.statestore.state import Migration, create_tables

notify_metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

#: The alerts of each aggregation group, latest state per fingerprint.
group_alerts = sa.Table(
    "llmops_notify_group_alerts",
    notify_metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(32), primary_key=True),
    sa.Column("alert_json", sa.Text, nullable=False),
    sa.Column("resolved", sa.Boolean, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

#: One row per aggregation group: its timers and its notification log entry.
groups = sa.Table(
    "llmops_notify_groups",
    notify_metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("receiver", sa.String(200), nullable=False),
    sa.Column("group_key", sa.Text, nullable=False),
    sa.Column("group_labels", sa.Text, nullable=False),
    sa.Column("send_resolved", sa.Boolean, nullable=False),
    sa.Column("group_wait_s", sa.Float, nullable=False),
    sa.Column("group_interval_s", sa.Float, nullable=False),
    sa.Column("repeat_interval_s", sa.Float, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("next_flush_at", TS, nullable=False),
    # false once every alert of the group is gone; the row keeps the log and sequence
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    # the notification log (Alertmanager's nflog entry)
    sa.Column("notified_at", TS, nullable=True),
    sa.Column("notified_firing", sa.Text, nullable=False, default="[]"),
    sa.Column("notified_resolved", sa.Text, nullable=False, default="[]"),
    sa.Column("seq", sa.Integer, nullable=False, default=0),
    sa.Index("ix_llmops_notify_groups_due", "next_flush_at"),
)

#: Notifications written before they are sent; one per (receiver, group, sequence).
outbox = sa.Table(
    "llmops_notify_outbox",
    notify_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("receiver", sa.String(200), nullable=False),
    sa.Column("group_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # alert | rollback | test
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | sending | sent | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("next_attempt_at", TS, nullable=False),
    sa.Column("claimed_until", TS, nullable=True),
    sa.Column("sent_at", TS, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("external_ref", sa.Text, nullable=True),
    sa.UniqueConstraint("receiver", "group_id", "seq", name="uq_llmops_notify_outbox_seq"),
    sa.Index("ix_llmops_notify_outbox_due", "status", "next_attempt_at"),
)

#: Slack Web API threads: the first message of a group, edited when it resolves.
threads = sa.Table(
    "llmops_notify_threads",
    notify_metadata,
    sa.Column("receiver", sa.String(200), primary_key=True),
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(200), nullable=False),
    sa.Column("ts", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

#: Silences: label matchers muted between two times.
silences = sa.Table(
    "llmops_notify_silences",
    notify_metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("matchers", sa.Text, nullable=False),
    sa.Column("starts_at", TS, nullable=False),
    sa.Column("ends_at", TS, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

NOTIFY_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "notify",
        1,
        "aggregation groups, notification outbox, Slack threads, silences",
        create_tables(group_alerts, groups, outbox, threads, silences),
    ),
)
