"""The one duration grammar of the configuration and the CLI: ``90`` (seconds), ``"30s"``,
``"5m"``, ``"1h30m"``, ``"3d"``, ``"1w"``, ``"250ms"``; Prometheus's spelling."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """``90``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"3d"`` -> timedelta (numbers are seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}; use e.g. 30s, 5m, 1h, 3d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative (got {value})")
        return timedelta(seconds=value)
    if isinstance(value, str):
        s = value.strip().replace(" ", "")
        if s in ("0", ""):
            return timedelta(0)
        if re.fullmatch(r"\d+(?:\.\d+)?", s):  # a bare number: seconds
            return timedelta(seconds=float(s))
        pos, total = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(s) and pos > 0:
            return timedelta(seconds=total)
    raise ValueError(f"invalid duration {value!r}; use e.g. 30s, 5m, 1h, 3d")


def format_duration(td: timedelta) -> str:
    """Shortest Prometheus-style spelling (``1h``, ``90s``, ``1d``, ``500ms``)."""
    ms = round(td.total_seconds() * 1000, 3)
    if ms % 1000:  # below a second: parsed back to the same value
        return f"{int(ms) if ms == int(ms) else ms}ms"
    secs = int(td.total_seconds())
    if secs == 0:
        return "0s"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _positive(td: timedelta) -> timedelta:
    if td <= timedelta(0):
        raise ValueError("must be longer than 0 (e.g. 10s, 500ms; a number means seconds)")
    return td


#: A :data:`Duration` that must be longer than zero (timeouts, intervals, leases).
PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
]
