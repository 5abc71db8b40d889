"""Configuration section `pricing:` of mlflow-llmops.yaml. Import-light: models only."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from pydantic import Field

from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import Duration


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
    lookback: Duration = timedelta(minutes=15)
    #: Spans per database round trip in the re-pricing job.
    batch_size: int = Field(default=2000, ge=1)

    deprecated_keys: ClassVar[dict[str, str]] = {"lookback_s": "lookback"}
