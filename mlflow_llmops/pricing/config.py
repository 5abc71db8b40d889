"""Configuration section `pricing:` of mlflow-llmops.yaml. Import-light: models only."""

from __future__ import annotations

from pydantic import Field

from mlflow_llmops.core.config import Section as _Section


class PricingConfig(_Section):
    """Settings for pricing; every field has a working default."""

    #: Start from MLflow's bundled catalog (offline, never fetched).
    include_mlflow_catalog: bool = True
    #: A copy of that catalog's directory (``mlflow-llmops costs export-catalog DIR``), for a
    #: service install: ``mlflow-tracing`` does not ship the catalog files, full MLflow does.
    mlflow_catalog_dir: str | None = None
    #: Extra catalog files in MLflow's per-provider JSON format.
    catalog_files: list[str] = Field(default_factory=list)
    #: LiteLLM ``model_prices_and_context_window.json`` files (win over the catalogs).
    litellm_files: list[str] = Field(default_factory=list)
    #: YAML overrides: own models, fine-tunes, discounts, aliases, patterns (win over all).
    overrides_file: str | None = None
    #: The re-pricing job re-reads traces this far behind its watermark (late arrivals).
    lookback_s: float = Field(default=900.0, ge=0)
    #: Spans per database round trip in the re-pricing job.
    batch_size: int = Field(default=2000, ge=1)
