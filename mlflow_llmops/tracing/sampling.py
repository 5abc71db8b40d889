"""Sampling: a head ratio (global, per route, per tenant) plus tail rules decided at trace end.

The head decision is a pure function of the trace id (like OpenTelemetry's
``TraceIdRatioBased``), so it is reproducible and can be taken when the root span
ends, together with the tail rules, without recording any extra state. Every
kept trace carries ``llmops.sample_weight`` (1 / P(kept)) and ``llmops.sampling``
(the reason) so volume and cost can be extrapolated from the kept traces alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow_llmops.core import keys
from mlflow_llmops.tracing.config import SamplingConfig

_BOUND = 1 << 64


@dataclass(frozen=True)
class Decision:
    """Whether a finished trace is kept, why, and with what extrapolation weight."""

    keep: bool
    reason: str | None = None  # head, tail:error, tail:slow, tail:cost, tail:tag, always
    weight: str | None = None


SAMPLED_OUT = Decision(False)
ALWAYS = Decision(True, "always", "1")


def format_weight(ratio: float) -> str:
    """``1 / ratio`` as a short decimal string (``10`` for 0.1)."""
    return format(1.0 / ratio, ".10g")


class Sampler:
    """Decides at root-span end; cheap (a few dict look-ups) because it runs on the caller."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self._tail = config.tail
        self._tag_keys = {t for t in self._tail.tags if "=" not in t}
        self._tag_pairs = {tuple(t.split("=", 1)) for t in self._tail.tags if "=" in t}
        self._has_tail = bool(
            self._tail.keep_errors
            or self._tail.slower_than_ms is not None
            or self._tail.cost_above_usd is not None
            or self._tail.tags
        )
        #: every head ratio is 1: ``decide`` returns ``ALWAYS`` whatever the trace (the
        #: caller may then skip reading the trace for it)
        self.always_keeps = (
            config.ratio >= 1.0
            and all(r >= 1.0 for r in config.routes.values())
            and all(r >= 1.0 for r in config.tenants.values())
        )
        #: whether ``decide`` may need the trace's cost (the caller then passes ``cost_usd``)
        self.needs_cost = self._tail.cost_above_usd is not None and (
            config.ratio < 1.0
            or any(r < 1.0 for r in config.routes.values())
            or any(r < 1.0 for r in config.tenants.values())
        )

    def ratio_for(self, route: str | None, tenant: str | None) -> float:
        """The head ratio that applies; a tenant ratio wins over a route ratio."""
        c = self.config
        if tenant is not None and tenant in c.tenants:
            return c.tenants[tenant]
        if route is not None and route in c.routes:
            return c.routes[route]
        return c.ratio

    @staticmethod
    def head_keeps(trace_id_int: int, ratio: float) -> bool:
        """Trace-id ratio test on the low 64 bits (OpenTelemetry's TraceIdRatioBased rule)."""
        if ratio >= 1.0:
            return True
        if ratio <= 0.0:
            return False
        return (trace_id_int & (_BOUND - 1)) < int(ratio * _BOUND)

    def decide(
        self,
        *,
        trace_id_int: int,
        is_error: bool,
        duration_ms: float | None,
        metadata: Mapping[str, str],
        tags: Mapping[str, str],
        cost_usd: Callable[[], float | None] | None = None,
    ) -> Decision:
        """``cost_usd`` prices the trace; called only when the cost rule is reached."""
        ratio = self.ratio_for(metadata.get(keys.ROUTE), metadata.get(keys.TENANT))
        if ratio >= 1.0:
            return ALWAYS
        if self._has_tail:
            reason = self._tail_reason(is_error, duration_ms, metadata, tags, cost_usd)
            if reason is not None:
                return Decision(True, reason, "1")
        if self.head_keeps(trace_id_int, ratio):
            return Decision(True, "head", format_weight(ratio))
        return SAMPLED_OUT

    def _tail_reason(
        self,
        is_error: bool,
        duration_ms: float | None,
        metadata: Mapping[str, str],
        tags: Mapping[str, str],
        cost_usd: Callable[[], float | None] | None = None,
    ) -> str | None:
        t = self._tail
        if t.keep_errors and is_error:
            return "tail:error"
        if t.slower_than_ms is not None and duration_ms is not None:
            if duration_ms > t.slower_than_ms:
                return "tail:slow"
        if t.cost_above_usd is not None:
            cost = trace_cost_usd(metadata)
            if cost is None and cost_usd is not None:
                cost = cost_usd()
            if cost is not None and cost > t.cost_above_usd:
                return "tail:cost"
        if self._tag_keys and any(k in tags for k in self._tag_keys):
            return "tail:tag"
        if self._tag_pairs and any(tags.get(k) == v for k, v in self._tag_pairs):
            return "tail:tag"
        return None


def trace_cost_usd(metadata: Mapping[str, str]) -> float | None:
    """Total cost MLflow computed client side (metadata ``mlflow.trace.cost``), if any: only
    Databricks and SageMaker stores get it; elsewhere the exporter prices the spans."""
    raw = metadata.get("mlflow.trace.cost")
    if not raw:
        return None
    try:
        value = json.loads(raw).get("total_cost")
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None
