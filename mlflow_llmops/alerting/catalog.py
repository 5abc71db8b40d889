"""The signals a rule can measure, each declared once.

A ``Signal`` says what a signal is (kind, unit) and how it aggregates which
columns; the SQL query (``signals.SqlSignalSource``), the in-memory evaluation
over trace rows and scores (``signals.MemorySignalSource``, also the SQL
source's short windows), rule validation and the Prometheus export all read
it. Adding a signal over existing columns is one entry in ``SIGNALS``.

Import-light (no SQLAlchemy): the rule models validate signal names with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["trace", "assessment", "percentile"]
Aggregate = Literal["sum", "share", "mean", "percentile"]


@dataclass(frozen=True)
class Test:
    """A row test ``column op operand``, rendered as SQL and evaluated in memory. The
    operand is a constant or, with ``param``, a field of the rule's ``SignalSpec``
    (bound as ``:param``; unset counts as 0). A NULL passes no comparison."""

    column: str
    op: Literal["=", "<>", ">", ">=", "<", "<=", "is not null"]
    operand: str | float | None = None
    param: str | None = None


@dataclass(frozen=True)
class Signal:
    """One signal (or, for percentiles, a family ``<name>_pNN``).

    ``sum``: the weighted sum of ``column`` (of the weight alone when None, i.e. a
    count); ``share``: the weighted share of the rows passing ``counts`` (unweighted
    for assessments); ``mean``: the mean of ``column``; ``percentile``: the weighted
    nearest-rank percentile of ``column``. Only the rows passing ``where`` count at all."""

    name: str
    kind: Kind
    unit: str
    aggregate: Aggregate
    column: str | None = None
    #: sum: a NULL adds 0; when False NULLs are left out, and all NULL gives no value
    nulls_as_zero: bool = True
    where: Test | None = None
    counts: Test | None = None
    #: assessment: HUMAN feedback (``feedback_score``) rather than scorer output
    human: bool = False
    #: percentile: one value per span (joined to its trace) rather than per trace
    per_span: bool = False

    @property
    def tests(self) -> tuple[Test, ...]:
        return tuple(x for x in (self.where, self.counts) if x is not None)

    @property
    def params(self) -> tuple[str, ...]:
        """The ``SignalSpec`` fields the signal's tests read."""
        return tuple(x.param for x in self.tests if x.param is not None)


SIGNALS: tuple[Signal, ...] = (
    Signal("request_count", "trace", "traces", "sum"),
    Signal("error_rate", "trace", "ratio", "share", counts=Test("status", "=", "ERROR")),
    Signal("tokens", "trace", "tokens", "sum", column="total_tokens"),
    Signal("input_tokens", "trace", "tokens", "sum", column="input_tokens"),
    Signal("output_tokens", "trace", "tokens", "sum", column="output_tokens"),
    Signal("cost_usd", "trace", "usd", "sum", column="cost_usd", nulls_as_zero=False),
    Signal(
        "unpriced_share",
        "trace",
        "ratio",
        "share",
        where=Test("model", "is not null"),
        counts=Test("unpriced_spans", ">", 0),
    ),
    Signal(
        "latency_over",
        "trace",
        "ratio",
        "share",
        where=Test("latency_ms", "is not null"),
        counts=Test("latency_ms", ">", param="latency_threshold_ms"),
    ),
    Signal(
        "scorer_pass_rate",
        "assessment",
        "ratio",
        "share",
        counts=Test("value_num", ">=", param="pass_threshold"),
    ),
    Signal(
        "scorer_fail_rate",
        "assessment",
        "ratio",
        "share",
        counts=Test("value_num", "<", param="pass_threshold"),
    ),
    Signal("mean_score", "assessment", "score", "mean", column="value_num"),
    Signal("feedback_score", "assessment", "score", "mean", column="value_num", human=True),
)
#: percentile families: ``latency_p95``, ``ttft_p99.9``, ...
PERCENTILES: tuple[Signal, ...] = (
    Signal("latency", "percentile", "ms", "percentile", column="latency_ms"),
    Signal("ttft", "percentile", "ms", "percentile", column="ttft_ms", per_span=True),
)

_BY_NAME = {s.name: s for s in SIGNALS}
_FAMILIES = {s.name: s for s in PERCENTILES}
_PERCENTILE = re.compile(rf"^({'|'.join(_FAMILIES)})_p(\d{{1,2}}(?:\.\d+)?)$")


def signal(name: str) -> Signal:
    """The declaration of ``name``; ValueError naming the valid signals."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    m = _PERCENTILE.match(name)
    if m:
        return _FAMILIES[m.group(1)]
    families = " or ".join(f"{f}_pNN" for f in _FAMILIES)
    raise ValueError(
        f"unknown signal {name!r}; use one of {', '.join(_BY_NAME)}, {families} (e.g. latency_p95)"
    )


def signal_kind(name: str) -> str:
    """``trace``, ``assessment`` or ``percentile``; ValueError naming the valid signals."""
    return signal(name).kind


def percentile_of(name: str) -> tuple[str, float]:
    """``latency_p95`` -> (``latency``, 0.95)."""
    m = _PERCENTILE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a percentile signal")
    return m.group(1), float(m.group(2)) / 100.0


def names(*, unit: str | None = None) -> tuple[str, ...]:
    """The fixed signal names (percentile families excluded), optionally of one unit."""
    return tuple(s.name for s in SIGNALS if unit is None or s.unit == unit)
