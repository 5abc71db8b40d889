"""A seeded SQLite MLflow tracking database shared by the alerting tests of a module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from binaries import require_binary  # noqa: E402
from seeded import make_seeded  # noqa: E402


@pytest.fixture(scope="session")
def seeded_sqlite(tmp_path_factory):
    root = tmp_path_factory.mktemp("alerting-seeded")
    s = make_seeded(f"sqlite:///{root / 'mlflow.db'}", root)
    yield s
    s.engine.dispose()


@pytest.fixture
def promtool() -> str:
    return require_binary("promtool")
