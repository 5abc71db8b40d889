"""Fresh databases on the local PostgreSQL server for tests and benchmarks."""

from __future__ import annotations

import os
import re
import uuid

import sqlalchemy as sa

ADMIN_URL = os.environ.get("LLMOPS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available(admin_url: str = ADMIN_URL) -> bool:
    try:
        eng = sa.create_engine(admin_url, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(sa.text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def create_database(prefix: str = "llmops", admin_url: str = ADMIN_URL) -> str:
    """Create an empty database and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return str(
        sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    )


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = sa.engine.make_url(url).database
    eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


def named_database(name: str, *, fresh: bool, admin_url: str = ADMIN_URL) -> str:
    """The URL of database ``name`` on the benchmark server; ``fresh`` drops and recreates it."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise SystemExit(f"--keep-db/--reuse-db: {name!r} is not a plain lower-case name")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        q = sa.text("SELECT 1 FROM pg_database WHERE datname = :n")
        exists = c.execute(q, {"n": name}).scalar()
        if fresh:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        elif not exists:
            raise SystemExit(f"--reuse-db: no database {name!r}; seed it with --keep-db {name}")
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
