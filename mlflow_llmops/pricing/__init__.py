"""Cost keyed by model: versioned price catalogs, usage normalisation, the
``CostCalculator`` (scalar and vectorised) and the re-pricing job.

Names are imported lazily so ``mlflow_llmops.config`` (which imports
``pricing.config``) stays cheap.
"""

from __future__ import annotations

from mlflow_llmops.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CostCalculator": "mlflow_llmops.pricing.calculator",
    "CostResult": "mlflow_llmops.pricing.calculator",
    "sum_usd": "mlflow_llmops.pricing.calculator",
    "TokenUsage": "mlflow_llmops.pricing.usage",
    "UsageError": "mlflow_llmops.pricing.usage",
    "PriceCatalog": "mlflow_llmops.pricing.catalog",
    "PriceEntry": "mlflow_llmops.pricing.catalog",
    "CatalogError": "mlflow_llmops.pricing.catalog",
    "build_catalog": "mlflow_llmops.pricing.catalog",
    "reprice": "mlflow_llmops.pricing.job",
    "RepriceResult": "mlflow_llmops.pricing.job",
    "RepriceParams": "mlflow_llmops.pricing.job",
    "run_reprice": "mlflow_llmops.pricing.job",
    "unpriced_models": "mlflow_llmops.pricing.job",
    "cost_by_model": "mlflow_llmops.pricing.job",
    "PRICING_MIGRATIONS": "mlflow_llmops.pricing.job",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = list(_EXPORTS)
