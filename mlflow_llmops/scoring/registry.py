"""The scorer registry, persisted in the state store (component ``scoring``).

A scorer is a name, a version, a reference to code and how to run it (sample
rate, ``search_traces`` filter, schedule). Changing what it computes (its
reference or parameters) makes a new version, and a new version is due for
re-scoring: the runner keeps one watermark and one ledger key per version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from mlflow_llmops.core.clock import to_ms
from mlflow_llmops.core.duration import parse_duration as _parse_duration
from mlflow_llmops.errors import LlmopsError
from mlflow_llmops.statestore.state import Migration, StateStore, create_tables

scoring_metadata = sa.MetaData()

scorers_table = sa.Table(
    "llmops_scorers",
    scoring_metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ref", sa.String(500), nullable=False),
    sa.Column("params_json", sa.Text, nullable=False, default="{}"),
    sa.Column("sample_rate", sa.Float, nullable=False),
    sa.Column("filter_string", sa.Text, nullable=True),
    sa.Column("schedule_s", sa.Float, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

#: One row per (trace, scorer, version): the idempotency key of scoring and backfill.
ledger_table = sa.Table(
    "llmops_scoring_ledger",
    scoring_metadata,
    sa.Column("trace_id", sa.String(64), primary_key=True),
    sa.Column("scorer", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    # claimed | done | error (tried again later) | failed (gave up: an error Feedback is logged)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("claimed_ms", sa.BigInteger, nullable=False),
    sa.Column("experiment_id", sa.String(32), nullable=True),
    sa.Column("trace_timestamp_ms", sa.BigInteger, nullable=False),
    sa.Column("value_num", sa.Float, nullable=True),
    sa.Column("passed", sa.Boolean, nullable=True),
    sa.Column("assessment_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("scored_ms", sa.BigInteger, nullable=True),
    sa.Column("job_id", sa.String(64), nullable=True),
    #: Attempts finished so far (NULL on rows written before schema version 2).
    sa.Column("attempts", sa.Integer, nullable=True),
    sa.Index("ix_llmops_scoring_ledger_ts", "scorer", "trace_timestamp_ms"),
    sa.Index("ix_llmops_scoring_ledger_job", "job_id"),
)

backfill_jobs_table = sa.Table(
    "llmops_backfill_jobs",
    scoring_metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("scorer", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("since_ms", sa.BigInteger, nullable=True),
    sa.Column("until_ms", sa.BigInteger, nullable=True),
    sa.Column("filter_string", sa.Text, nullable=True),
    sa.Column("sample_rate", sa.Float, nullable=False),
    sa.Column("max_cost_usd", sa.Float, nullable=True),
    sa.Column("estimate_usd", sa.Float, nullable=True),
    sa.Column("spent_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("total_items", sa.Integer, nullable=False),
    sa.Column("status", sa.String(24), nullable=False),  # running | done | budget_exhausted
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

#: The work list of a backfill; workers lease batches of it (the checkpoint).
backfill_items_table = sa.Table(
    "llmops_backfill_items",
    scoring_metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("trace_id", sa.String(64), primary_key=True),
    sa.Column("trace_timestamp_ms", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | leased | done | error
    sa.Column("holder", sa.String(200), nullable=True),
    sa.Column("lease_expires_ms", sa.BigInteger, nullable=True),
    # (job_id, state) prefix: counts by state; the time order: the next items to lease
    sa.Index("ix_llmops_backfill_items_next", "job_id", "state", "trace_timestamp_ms"),
)


def _add_ledger_attempts(conn: sa.Connection) -> None:
    """Version 1 tables created by this code already have the column."""
    if "attempts" not in {c["name"] for c in sa.inspect(conn).get_columns(ledger_table.name)}:
        conn.execute(sa.text(f"ALTER TABLE {ledger_table.name} ADD COLUMN attempts INTEGER"))


def _index_ledger_jobs(conn: sa.Connection) -> None:
    """A backfill's spend is the sum of its ledger rows' costs: index them by job; a lease
    takes the next pending items in time order: index them so."""
    for table, name, cols in (
        (ledger_table, "ix_llmops_scoring_ledger_job", "job_id"),
        (
            backfill_items_table,
            "ix_llmops_backfill_items_next",
            "job_id, state, trace_timestamp_ms",
        ),
    ):
        insp = sa.inspect(conn)
        if not insp.has_table(table.name):
            table.create(conn)  # with its indexes
        elif name not in {i["name"] for i in insp.get_indexes(table.name)}:
            conn.execute(sa.text(f"CREATE INDEX {name} ON {table.name} ({cols})"))
    # its prefix: a planner that took it instead sorted every pending item on each lease
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_llmops_backfill_items_state"))


SCORING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "scoring",
        1,
        "scorer registry, scoring ledger, backfill jobs and items",
        create_tables(scorers_table, ledger_table, backfill_jobs_table, backfill_items_table),
    ),
    Migration("scoring", 2, "ledger attempts (errors are retried)", _add_ledger_attempts),
    Migration(
        "scoring",
        3,
        "ledger rows by backfill job (spend), backfill items by time",
        _index_ledger_jobs,
    ),
)

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,199}$")


class ScorerRegistryError(LlmopsError, ValueError):
    """A scorer definition is invalid or the named scorer does not exist."""


def parse_duration(value: str | float | int, *, what: str = "schedule") -> float:
    """``"5m"``, ``"1h"``, ``"30s"``, ``90`` -> seconds (positive); the grammar of
    :func:`mlflow_llmops.core.duration.parse_duration`."""
    try:
        seconds = _parse_duration(value).total_seconds()
    except ValueError:
        raise ScorerRegistryError(
            f"{what}: {value!r} is not a duration; use e.g. 30s, 5m, 1h or 1d"
        ) from None
    if seconds <= 0:
        raise ScorerRegistryError(f"{what}: must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True)
class ScorerSpec:
    """One registered scorer.

    ``ref`` is ``module:function`` (an MLflow ``@scorer`` or a factory of one),
    ``builtin:<name>`` (our code scorers), ``mlflow:<Class>`` (an MLflow built-in
    such as ``Safety``) or ``judge`` (our OpenAI-compatible LLM judge); ``params``
    are passed to factories, classes and the judge.
    """

    name: str
    ref: str
    version: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    sample_rate: float = 1.0
    filter_string: str | None = None
    schedule_s: float = 60.0
    active: bool = True
    created_ms: int = 0
    updated_ms: int = 0

    def validate(self) -> ScorerSpec:
        if not _NAME.match(self.name):
            raise ScorerRegistryError(
                f"scorer name {self.name!r}: use letters, digits, '_', '-', '.' "
                "and start with a letter"
            )
        if not (0.0 < self.sample_rate <= 1.0):
            raise ScorerRegistryError(
                f"scorer {self.name!r}: sample_rate must be in (0, 1], got {self.sample_rate}"
            )
        if self.schedule_s <= 0:
            raise ScorerRegistryError(f"scorer {self.name!r}: schedule must be positive")
        if not self.ref or not (
            self.ref == "judge" or ":" in self.ref and all(self.ref.split(":", 1))
        ):
            raise ScorerRegistryError(
                f"scorer {self.name!r}: ref {self.ref!r} must be 'module:function', "
                "'builtin:<name>', 'mlflow:<Class>' or 'judge'"
            )
        try:
            json.dumps(dict(self.params))
        except TypeError as e:
            raise ScorerRegistryError(
                f"scorer {self.name!r}: params must be JSON values ({e})"
            ) from None
        return self

    @property
    def kind(self) -> str:
        """``judge``, ``builtin``, ``mlflow`` or ``code``."""
        if self.ref == "judge":
            return "judge"
        prefix = self.ref.split(":", 1)[0]
        return prefix if prefix in ("builtin", "mlflow") else "code"

    @property
    def source_id(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "params": dict(self.params),
            "sample_rate": self.sample_rate,
            "filter_string": self.filter_string,
            "schedule_s": self.schedule_s,
            "active": self.active,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


def _row_to_spec(row: Any) -> ScorerSpec:
    return ScorerSpec(
        name=row.name,
        ref=row.ref,
        version=row.version,
        params=json.loads(row.params_json or "{}"),
        sample_rate=row.sample_rate,
        filter_string=row.filter_string,
        schedule_s=row.schedule_s,
        active=bool(row.active),
        created_ms=row.created_ms,
        updated_ms=row.updated_ms,
    )


_UNSET: Any = object()


class ScorerRegistry:
    """CRUD on registered scorers; ``update`` keeps every field it is not given."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        store.ensure_schema(SCORING_MIGRATIONS)

    def register(self, spec: ScorerSpec, *, now: datetime) -> ScorerSpec:
        """Add a new scorer at version 1 (or the given version); error if the name exists."""
        ms = to_ms(now)
        spec = replace(spec, created_ms=ms, updated_ms=ms).validate()
        with self.store.engine.begin() as conn:
            if conn.execute(
                sa.select(scorers_table.c.name).where(scorers_table.c.name == spec.name)
            ).first():
                raise ScorerRegistryError(
                    f"scorer {spec.name!r} is already registered; use update to change it "
                    "(a changed ref or params makes a new version)"
                )
            conn.execute(scorers_table.insert().values(**self._row(spec)))
        return spec

    def list(self, *, active_only: bool = False) -> list[ScorerSpec]:
        q = sa.select(scorers_table).order_by(scorers_table.c.name)
        if active_only:
            q = q.where(scorers_table.c.active.is_(True))
        with self.store.engine.connect() as conn:
            return [_row_to_spec(r) for r in conn.execute(q)]

    def get(self, name: str) -> ScorerSpec:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(scorers_table).where(scorers_table.c.name == name)).first()
        if row is None:
            raise ScorerRegistryError(f"no scorer named {name!r}; see `mlflow-llmops scorers list`")
        return _row_to_spec(row)

    def update(
        self,
        name: str,
        *,
        now: datetime,
        ref: str = _UNSET,
        params: Mapping[str, Any] = _UNSET,
        sample_rate: float = _UNSET,
        filter_string: str | None = _UNSET,
        schedule_s: float = _UNSET,
        new_version: bool = False,
    ) -> ScorerSpec:
        """Change the given fields only. A changed ``ref`` or ``params`` (or
        ``new_version=True``) bumps the version, which makes re-scoring due."""
        current = self.get(name)
        changes: dict[str, Any] = {}
        for key, value in (
            ("ref", ref),
            ("params", params),
            ("sample_rate", sample_rate),
            ("filter_string", filter_string),
            ("schedule_s", schedule_s),
        ):
            if value is not _UNSET:
                changes[key] = dict(value) if key == "params" else value
        logic_changed = any(
            k in changes
            and changes[k] != (dict(getattr(current, k)) if k == "params" else getattr(current, k))
            for k in ("ref", "params")
        )
        version = current.version + 1 if (logic_changed or new_version) else current.version
        spec = replace(current, **changes, version=version, updated_ms=to_ms(now)).validate()
        self._write(spec)
        return spec

    def start(self, name: str, *, now: datetime) -> ScorerSpec:
        return self._set_active(name, True, now)

    def stop(self, name: str, *, now: datetime) -> ScorerSpec:
        return self._set_active(name, False, now)

    def delete(self, name: str) -> None:
        """Remove the scorer; its assessments in MLflow and its ledger rows stay."""
        self.get(name)
        with self.store.engine.begin() as conn:
            conn.execute(scorers_table.delete().where(scorers_table.c.name == name))

    def _set_active(self, name: str, active: bool, now: datetime) -> ScorerSpec:
        spec = replace(self.get(name), active=active, updated_ms=to_ms(now))
        self._write(spec)
        return spec

    def _write(self, spec: ScorerSpec) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                scorers_table.update()
                .where(scorers_table.c.name == spec.name)
                .values(**self._row(spec))
            )

    @staticmethod
    def _row(spec: ScorerSpec) -> dict[str, Any]:
        return {
            "name": spec.name,
            "version": spec.version,
            "ref": spec.ref,
            "params_json": json.dumps(dict(spec.params), sort_keys=True),
            "sample_rate": spec.sample_rate,
            "filter_string": spec.filter_string,
            "schedule_s": spec.schedule_s,
            "active": spec.active,
            "created_ms": spec.created_ms,
            "updated_ms": spec.updated_ms,
        }
