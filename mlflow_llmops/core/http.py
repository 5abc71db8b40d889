"""HTTP answers every client of ours reads the same way."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any


def header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """Header ``name``, case-insensitive; the first value when a client gives a list."""
    if not headers or not hasattr(headers, "items"):
        return None
    want = name.lower()
    for k, v in headers.items():
        if str(k).lower() == want:
            if isinstance(v, list | tuple):
                return str(v[0]) if v else None
            return None if v is None else str(v)
    return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` value in seconds from ``now``: delay-seconds or an HTTP date
    (RFC 9110); None when absent or unreadable."""
    if value is None or not str(value).strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
