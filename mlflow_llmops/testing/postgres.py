"""Fresh databases on the local PostgreSQL server for tests and benchmarks."""

from __future__ import annotations

import os
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
