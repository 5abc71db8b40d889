"""The fixed times of the SQL tests' seeded data (a module of its own: ``from conftest
import`` is ambiguous when several test folders' conftests are loaded in one run)."""

from datetime import UTC, datetime

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
START = datetime(2026, 3, 1, tzinfo=UTC)
PRICED_UNTIL = datetime(2026, 3, 8, tzinfo=UTC)
