"""Trace cost at root-span end, for the tail rule ``cost_above_usd``.

MLflow 3.17 sets ``mlflow.trace.cost`` on the client only for Databricks and
SageMaker; SQL and HTTP stores price spans when they store them, which is after
our sampling decision. So the rule prices the trace's LLM spans itself, from the
attributes MLflow reads for cost, with our ``CostCalculator``: built once, off
the request path when possible, and cached per price configuration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow_llmops.core import keys

if TYPE_CHECKING:
    from mlflow_llmops.pricing.calculator import CostCalculator
    from mlflow_llmops.pricing.config import PricingConfig

_logger = logging.getLogger("mlflow_llmops.tracing")
_CALCULATORS: dict[str, CostCalculator] = {}
_BUILD_LOCK = threading.Lock()


def _calculator_for(pricing: PricingConfig | None) -> CostCalculator:
    """One calculator per price configuration and process: building one reads every
    catalog file (about 0.3 s), pricing a span with it takes microseconds."""
    key = pricing.model_dump_json() if pricing is not None else ""
    calc = _CALCULATORS.get(key)
    if calc is not None:
        return calc
    with _BUILD_LOCK:
        calc = _CALCULATORS.get(key)
        if calc is None:
            from mlflow_llmops.pricing.calculator import CostCalculator

            calc = CostCalculator.from_config(pricing) if pricing else CostCalculator.default()
            _CALCULATORS[key] = calc
        return calc


class TraceCoster:
    """Prices a finished in-memory trace; never raises (an unpriced trace is ``None``)."""

    def __init__(self, pricing: PricingConfig | None = None) -> None:
        self.pricing = pricing
        self._calc: CostCalculator | None = None
        self._failed = False

    def warm_up(self) -> None:
        """Build the calculator in a background thread, so the first trace does not wait."""
        threading.Thread(target=self.calculator, name="llmops-price-catalog", daemon=True).start()

    def calculator(self) -> CostCalculator | None:
        if self._calc is None and not self._failed:
            try:
                self._calc = _calculator_for(self.pricing)
            except Exception as e:  # noqa: BLE001 - a bad price file must not break requests
                self._failed = True
                _logger.warning(
                    "tail rule cost_above_usd disabled: cannot build the price catalog: %s", e
                )
        return self._calc

    def span_cost_usd(self, attrs: Mapping[str, Any]) -> float | None:
        """From a span's raw attributes: an explicit ``mlflow.llm.cost`` wins; else the
        span is read and priced exactly as the re-pricing job reads and prices it."""
        from mlflow_llmops.pricing.spans import (
            PRICING_ATTRIBUTES,
            decode_attr,
            span_from_attributes,
        )

        explicit = decode_attr(attrs.get(keys.LLM_COST))
        if isinstance(explicit, dict):
            total = explicit.get("total_cost")
            if isinstance(total, int | float):
                return float(total)
        decoded = {k: decode_attr(attrs[k]) for k in PRICING_ATTRIBUTES if k in attrs}
        span = span_from_attributes("", "", "", 0, decoded)
        if span is None or span.usage is None or not span.model:
            return None
        calc = self.calculator()
        if calc is None:
            return None
        result = calc.cost(
            model=span.model,
            provider=span.provider,
            usage=span.usage,
            service_tier=span.service_tier,
        )
        return float(result.total) if result.total is not None else None

    def trace_cost_usd(self, trace: Any) -> float | None:
        """Sum over priced spans, skipping a span whose ancestor is priced (MLflow's rule:
        a wrapper span with its own cost already includes its children's). Reads the raw
        OpenTelemetry spans: MLflow's accessors decode every attribute they touch."""
        try:
            spans: Iterable[Any] = (
                trace.span_dict.values() if hasattr(trace, "span_dict") else trace.data.spans
            )
            parents: dict[int, int | None] = {}
            costs: dict[int, float] = {}
            for span in spans:
                otel = span._span
                sid = otel.context.span_id
                parents[sid] = otel.parent.span_id if otel.parent is not None else None
                attrs = otel.attributes
                if keys.LLM_COST in attrs or keys.MODEL in attrs:
                    cost = self.span_cost_usd(attrs)
                    if cost is not None:
                        costs[sid] = cost
            if not costs:
                return None
            total = 0.0
            for sid, cost in costs.items():
                parent = parents.get(sid)
                while parent is not None and parent not in costs:
                    parent = parents.get(parent)
                if parent is None:
                    total += cost
            return total
        except Exception:  # noqa: BLE001 - instrumentation must never break the request
            _logger.debug("trace cost estimate failed", exc_info=True)
            return None
