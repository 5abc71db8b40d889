"""The state store: our own tables (watermarks, leases, and each component's tables).

SQLAlchemy over a SQLite file by default, PostgreSQL by URL. The schema is
versioned per component: each package ships an ordered list of ``Migration``
and calls ``StateStore.ensure_schema`` before use; applied versions are kept in
``llmops_schema_versions`` and applied under a lock, so several processes
starting together migrate once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mlflow_llmops.core.clock import utc
from mlflow_llmops.errors import StoreError
from mlflow_llmops.secrets import mask_secrets_in_writes

metadata = sa.MetaData()

schema_versions = sa.Table(
    "llmops_schema_versions",
    metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

watermarks = sa.Table(
    "llmops_watermarks",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

leases = sa.Table(
    "llmops_leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    # +1 each time the lease changes hands: the fencing token of its holder
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
)


@dataclass(frozen=True)
class Migration:
    """One schema step of one component; ``upgrade`` runs inside a transaction."""

    component: str
    version: int
    description: str
    upgrade: Callable[[Connection], None]


def create_tables(*tables: sa.Table) -> Callable[[Connection], None]:
    """A migration step that creates the given tables (and their indexes)."""

    def upgrade(conn: Connection) -> None:
        for t in tables:
            t.create(conn, checkfirst=True)

    return upgrade


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """An engine with the settings we want everywhere (SQLite: WAL, busy timeout).

    ``immediate=True`` makes every SQLite transaction ``BEGIN IMMEDIATE`` (the
    SQLAlchemy recipe), so concurrent writers queue on the busy timeout instead of
    failing with "database is locked" when a read transaction upgrades.
    """
    try:
        parsed = sa.engine.make_url(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises several types here
        raise StoreError(
            f"not a database URL: {url!r}; use sqlite:///path.db or postgresql://user@host/db"
        ) from e
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            if immediate:
                dbapi_conn.isolation_level = None

        if immediate:

            @sa.event.listens_for(engine, "begin")
            def _begin(conn):  # noqa: ANN001
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _add_lease_epoch(conn: Connection) -> None:
    cols = {c["name"] for c in sa.inspect(conn).get_columns("llmops_leases")}
    if "epoch" not in cols:
        conn.execute(
            sa.text("ALTER TABLE llmops_leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
        )


CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration("core", 1, "watermarks and leases", create_tables(watermarks, leases)),
    Migration("core", 2, "lease epochs (fencing tokens)", _add_lease_epoch),
)


class FencedOut(StoreError):
    """A newer holder has the lease this process writes under: it must stop writing."""


@dataclass(frozen=True)
class LeaseFence:
    """The lease (and epoch) every transaction of a fenced store is checked against."""

    name: str
    holder: str
    epoch: int
    #: the lease TTL; on PostgreSQL a fenced transaction idle for twice this (at least
    #: ``IDLE_TX_TIMEOUT_MIN_S``; its process frozen) is aborted by the server, so a frozen
    #: holder cannot keep the lease row locked
    ttl_s: float


IDLE_TX_TIMEOUT_MIN_S = 30.0


class StateStore:
    """Handle on the state store database."""

    def __init__(
        self, url: str = "sqlite:///.mlflow-llmops/state.db", *, engine: Engine | None = None
    ):
        self.url = url
        self.engine = engine or make_engine(url, immediate=True)
        if engine is None:
            mask_secrets_in_writes(self.engine)  # no stored error, payload or audit in clear
        self._ensured: set[tuple[str, int]] = set()
        #: set by a lease holder (``set_fence``): then every transaction first checks, in
        #: itself, that the lease is still its own at its epoch
        self.fence: LeaseFence | None = None
        self._fence_listening = False
        try:
            self.ensure_schema(CORE_MIGRATIONS)
        except sa.exc.OperationalError as e:
            raise StoreError(
                f"cannot open the state store at {self.safe_url}: {e.orig}. "
                "Check state_store.url (and that the database server is running)."
            ) from e

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return self.engine.url.render_as_string(hide_password=True)

    def _lock(self, conn: Connection, key: str) -> None:
        if self.dialect == "postgresql":
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode())}
            )

    def ensure_schema(self, migrations: Sequence[Migration]) -> None:
        """Apply the migrations not yet applied, in version order, once across processes."""
        by_component: dict[str, list[Migration]] = {}
        for m in migrations:
            by_component.setdefault(m.component, []).append(m)
        for component, steps in by_component.items():
            steps.sort(key=lambda m: m.version)
            latest = steps[-1].version
            if (component, latest) in self._ensured:
                continue
            with self.engine.begin() as conn:
                self._lock(conn, "llmops_schema")
                schema_versions.create(conn, checkfirst=True)
                row = conn.execute(
                    sa.select(schema_versions.c.version).where(
                        schema_versions.c.component == component
                    )
                ).first()
                current = row[0] if row else 0
                if current > latest:
                    raise StoreError(
                        f"state store component {component!r} is at schema version {current}, newer "
                        f"than this mlflow-llmops knows ({latest}); upgrade mlflow-llmops"
                    )
                for m in steps:
                    if m.version > current:
                        m.upgrade(conn)
                        current = m.version
                now = datetime.now(UTC)
                if row:
                    conn.execute(
                        schema_versions.update()
                        .where(schema_versions.c.component == component)
                        .values(version=current, applied_at=now)
                    )
                else:
                    conn.execute(
                        schema_versions.insert().values(
                            component=component, version=current, applied_at=now
                        )
                    )
            self._ensured.add((component, latest))

    def schema_version(self, component: str) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(schema_versions.c.version).where(schema_versions.c.component == component)
            ).first()
        return row[0] if row else 0

    # -- watermarks -------------------------------------------------------
    def get_watermark(self, name: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(watermarks.c.value).where(watermarks.c.name == name)
            ).first()
        return row[0] if row else None

    def set_watermark(self, name: str, value: str, *, conn: Connection | None = None) -> None:
        """Upsert a watermark; pass ``conn`` to make it part of a larger transaction."""
        now = datetime.now(UTC)

        def _do(c: Connection) -> None:
            updated = c.execute(
                watermarks.update()
                .where(watermarks.c.name == name)
                .values(value=value, updated_at=now)
            ).rowcount
            if not updated:
                c.execute(watermarks.insert().values(name=name, value=value, updated_at=now))

        if conn is not None:
            _do(conn)
        else:
            with self.engine.begin() as c:
                _do(c)

    # -- leases (leader election, work ownership) -------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew the lease ``name`` for ``holder``; True if ``holder`` holds it now."""
        return self.take_lease(name, holder, ttl_s, now) is not None

    def _unfenced(self) -> Connection:
        return self.engine.connect().execution_options(llmops_unfenced=True)

    def take_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> int | None:
        """Take or renew the lease ``name`` for ``holder``: its epoch (one more than the
        previous holder's) if ``holder`` holds it now, else None."""
        expires = now + timedelta(seconds=ttl_s)
        with self._unfenced() as conn, conn.begin():
            self._idle_timeout(conn, ttl_s)
            self._lock(conn, f"lease:{name}")
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires_at, leases.c.epoch).where(
                    leases.c.name == name
                )
            ).first()
            if row is None:
                conn.execute(
                    leases.insert().values(
                        name=name, holder=holder, expires_at=expires, acquired_at=now, epoch=1
                    )
                )
                return 1
            current_holder, current_expiry, epoch = row
            if current_expiry.tzinfo is None:
                current_expiry = current_expiry.replace(tzinfo=UTC)
            if current_holder == holder and current_expiry > now:
                conn.execute(
                    leases.update().where(leases.c.name == name).values(expires_at=expires)
                )
                return int(epoch)
            if current_holder == holder or current_expiry <= now:
                # a new term, even for the same holder after its lease lapsed: whatever it
                # started under the old epoch must not write any more
                conn.execute(
                    leases.update()
                    .where(leases.c.name == name)
                    .values(holder=holder, expires_at=expires, acquired_at=now, epoch=epoch + 1)
                )
                return int(epoch) + 1
            return None

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease lapse now (the row and its epoch stay, so epochs only grow)."""
        with self._unfenced() as conn, conn.begin():
            conn.execute(
                leases.update()
                .where(leases.c.name == name, leases.c.holder == holder)
                .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )

    def lease_epoch(self, name: str) -> int:
        """The current epoch of the lease ``name`` (0 if it never had a holder)."""
        with self._unfenced() as conn:
            row = conn.execute(sa.select(leases.c.epoch).where(leases.c.name == name)).first()
        return int(row[0]) if row else 0

    # -- fencing ----------------------------------------------------------------
    def set_fence(self, fence: LeaseFence | None) -> None:
        """Fence this store: from now on every transaction (the alert engine's state, the
        dispatcher's groups and outbox claims, the cycle log) first checks, inside itself,
        that ``fence.holder`` still holds the lease at ``fence.epoch`` and raises
        ``FencedOut`` otherwise. On PostgreSQL the lease row is read ``FOR SHARE``, so a
        new holder cannot take over while such a transaction is open: a write commits
        before the next epoch starts or not at all."""
        self.fence = fence
        if fence is not None and not self._fence_listening:
            sa.event.listen(self.engine, "begin", self._check_fence)
            self._fence_listening = True

    def _idle_timeout(self, conn: Connection, ttl_s: float) -> None:
        """Bound how long a frozen process can keep the lease row locked (and so delay the
        next holder); generous, so that no live transaction is cut short."""
        if self.dialect == "postgresql":
            ms = int(max(IDLE_TX_TIMEOUT_MIN_S, 2 * ttl_s) * 1000)
            conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {ms}")

    def _check_fence(self, conn: Connection) -> None:
        f = self.fence
        if f is None or conn.get_execution_options().get("llmops_unfenced"):
            return
        self._idle_timeout(conn, f.ttl_s)
        q = sa.select(leases.c.holder, leases.c.epoch).where(leases.c.name == f.name)
        if self.dialect == "postgresql":
            q = q.with_for_update(read=True)
        row = conn.execute(q).first()
        if row is None or row[0] != f.holder or int(row[1]) != f.epoch:
            now_held = f"{row[0]} at epoch {row[1]}" if row else "nobody"
            raise FencedOut(
                f"lease {f.name!r} is now held by {now_held}; {f.holder} (epoch {f.epoch}) "
                "must not write: a newer leader took over"
            )

    def lease_holder(self, name: str, now: datetime) -> str | None:
        with self._unfenced() as conn:
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
            ).first()
        if row is None:
            return None
        exp = utc(row[1])
        return row[0] if exp > now else None

    def dispose(self) -> None:
        self.engine.dispose()
