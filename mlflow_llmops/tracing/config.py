"""Configuration section `tracing:` of mlflow-llmops.yaml. Import-light: models only."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from mlflow_llmops.core.config import Section as _Section
from mlflow_llmops.core.duration import PositiveDuration


def _ratio(v: float, what: str) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be between 0.0 and 1.0 (0.0 keeps none, 1.0 keeps all)")
    return v


class TailRules(_Section):
    """Decided when the root span ends: these traces are kept whatever the head ratio says."""

    keep_errors: bool = True
    #: keep traces slower than this many milliseconds (None: no latency rule)
    slower_than_ms: float | None = None
    #: keep traces whose LLM spans cost more than this (USD): an explicit ``mlflow.llm.cost``
    #: on a span, else priced from model, provider and token usage with our price catalog
    cost_above_usd: float | None = None
    #: keep traces carrying any of these tag keys, or ``key=value`` pairs
    tags: tuple[str, ...] = ()

    @field_validator("slower_than_ms", "cost_above_usd")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("must be >= 0, or omitted to disable the rule")
        return v


class SamplingConfig(_Section):
    """Head ratio (global, per route, per tenant) plus tail rules."""

    ratio: float = 1.0
    routes: dict[str, float] = Field(default_factory=dict)
    tenants: dict[str, float] = Field(default_factory=dict)
    tail: TailRules = Field(default_factory=TailRules)
    #: record traces the head ratio drops without span inputs/outputs (cheaper for the
    #: caller); a tail rule that keeps such a trace then stores it without them
    light_when_dropped: bool = False
    #: record traces the head ratio drops outside MLflow (it sees a no-op span, as under its
    #: own sampling): only what the tail rules and the GenAI metrics read, plus references
    #: to inputs/outputs; a trace a tail rule keeps is then replayed through MLflow in full
    #: (without inputs/outputs with ``light_when_dropped``)
    minimal_when_dropped: bool = False

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, v: float) -> float:
        return _ratio(v, "sampling.ratio")

    @field_validator("routes", "tenants")
    @classmethod
    def _check_map(cls, v: dict[str, float]) -> dict[str, float]:
        for k, r in v.items():
            _ratio(r, f"ratio for {k!r}")
        return v


class RedactionConfig(_Section):
    """PII and secrets removed from span inputs, outputs and trace previews."""

    enabled: bool = True
    emails: bool = True
    phones: bool = True
    cards: bool = True  # digit runs that pass the Luhn check
    api_keys: bool = True
    #: extra regular expressions; each match is replaced by ``[REDACTED]``
    patterns: tuple[str, ...] = ()
    replacement: str = "[REDACTED:{kind}]"

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, p in enumerate(v):
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(
                    f"patterns[{i}] {p!r} is not a valid regular expression: {e}"
                ) from None
        return v


class OtlpConfig(_Section):
    """OTLP export of traces (beside MLflow) and of GenAI metrics."""

    #: e.g. http://collector:4318/v1/traces; None: no OTLP trace export
    traces_endpoint: str | None = None
    #: e.g. http://collector:4318/v1/metrics; None: metrics not exported by OTLP
    metrics_endpoint: str | None = None
    protocol: Literal["http/protobuf"] = "http/protobuf"
    #: auth headers (values may be ${ENV}); never logged
    headers: dict[str, str] = Field(default_factory=dict)
    metrics_headers: dict[str, str] | None = None
    metrics_enabled: bool = True
    metrics_export_interval: PositiveDuration = timedelta(seconds=15)
    timeout: PositiveDuration = timedelta(seconds=10)

    deprecated_keys: ClassVar[dict[str, str]] = {
        "metrics_export_interval_s": "metrics_export_interval",
        "timeout_s": "timeout",
    }

    @field_validator("traces_endpoint", "metrics_endpoint")
    @classmethod
    def _url(cls, v: str | None, info: Any) -> str | None:
        if v is None:
            return v
        signal = "traces" if info.field_name == "traces_endpoint" else "metrics"
        m = re.match(r"^https?://[^/\s?#]+(?P<path>/[^\s?#]*)?", v)
        if not m:
            raise ValueError(
                f"must be an http:// or https:// URL, e.g. http://127.0.0.1:4318/v1/{signal}"
            )
        if not (m.group("path") or "").strip("/"):
            # the OTLP/HTTP exporter posts to the URL as given: a bare host gets 404s
            raise ValueError(
                f"needs the signal's path: OTLP over HTTP posts to the URL as given, so "
                f"write {v.rstrip('/')}/v1/{signal}"
            )
        return v


class MetricsConfig(_Section):
    """GenAI metrics on a Prometheus scrape endpoint (``pip install 'mlflow-llmops[prometheus]'``)."""

    #: serve ``/metrics`` on this port; None: no endpoint (metrics leave by OTLP only)
    prometheus_port: int | None = None
    prometheus_host: str = "0.0.0.0"
    #: shared by the worker processes of one service (gunicorn/uvicorn workers): each writes
    #: its metrics there, the one holding the port serves them all. Default:
    #: ``<tmp>/mlflow-llmops-metrics-<port>``
    prometheus_dir: str | None = None
    #: how often each worker publishes its metrics for the others to serve
    prometheus_interval: PositiveDuration = timedelta(seconds=2)

    deprecated_keys: ClassVar[dict[str, str]] = {"prometheus_interval_s": "prometheus_interval"}

    @field_validator("prometheus_port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError("must be a TCP port between 1 and 65535 (e.g. 9464), or omitted")
        return v


class MetadataConfig(_Section):
    """Static trace metadata; unset values are detected (host, git commit) or left out."""

    environment: str | None = None
    service_version: str | None = None
    git_commit: str | None = None
    host: str | None = None
    deployment: str | None = None


class SpoolConfig(_Section):
    """The on-disk spool: where traces go when the store is down, the queue is full, or the
    shutdown deadline passes; replayed in order once the store answers (see ``spool.py``)."""

    enabled: bool = True
    #: one sub-directory per (store, experiment), one ``proc-`` directory per process
    directory: str = ".mlflow-llmops/spool"
    #: per process; beyond it traces are counted in ``spool_dropped`` (and dropped/unsent)
    max_bytes: int = 512 * 1024 * 1024
    #: fsync each file and its directory (survives power loss); false: survives a process
    #: crash or SIGKILL only
    fsync: bool = True

    @field_validator("max_bytes")
    @classmethod
    def _size(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("must be at least 1024 bytes (e.g. 536870912 for 512 MiB)")
        return v


class TracingConfig(_Section):
    """Settings for tracing; every field has a working default."""

    #: used when setup_production_tracing is called without service_name
    service_name: str | None = None
    #: traces held in memory waiting for export; beyond this, traces are dropped and counted
    queue_capacity: int = 10_000
    #: traces written to the store per batch (at most queue_capacity)
    batch_size: int = 100
    #: first retry delay when the store fails; doubles up to ``max_backoff``
    retry_backoff: PositiveDuration = timedelta(milliseconds=500)
    max_backoff: PositiveDuration = timedelta(seconds=30)
    #: flush deadline at exit / SIGTERM
    shutdown_timeout: PositiveDuration = timedelta(seconds=10)
    install_signal_handlers: bool = True
    #: MLflow's HTTP client retries inside one call with long backoff, which would hold the
    #: export worker (and shutdown) for minutes while a server is down; our worker retries
    #: forever itself. Applied as MLFLOW_HTTP_REQUEST_MAX_RETRIES (process-wide, so only
    #: when that variable is unset); None leaves MLflow's default.
    http_max_retries: int | None = 1
    #: wait at most this long at start-up for the tracking store to resolve the experiment;
    #: a store that is down (or slower) only gets a warning: set-up goes on, traces queue
    #: and the experiment is resolved when the store answers
    startup_timeout: PositiveDuration = timedelta(seconds=10)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    redaction: RedactionConfig = Field(default_factory=RedactionConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    otlp: OtlpConfig = Field(default_factory=OtlpConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)

    deprecated_keys: ClassVar[dict[str, str]] = {
        "retry_backoff_s": "retry_backoff",
        "max_backoff_s": "max_backoff",
        "shutdown_timeout_s": "shutdown_timeout",
        "startup_timeout_s": "startup_timeout",
    }

    @field_validator("queue_capacity", "batch_size")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v
