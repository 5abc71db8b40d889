"""Test data: real MLflow traces with explicit timestamps, for tests, the demo and benchmarks.

Two ways to put the same :class:`SeedTrace` values into an MLflow tracking store:

* :func:`seed_traces` logs them through MLflow's public API (``MlflowClient.start_trace``
  / ``start_span`` / ``end_span`` / ``end_trace``) with synchronous logging, so they are in
  the store when it returns. About 0.1 s per trace: use it for tests.
* :func:`bulk_load` inserts rows straight into MLflow's tables (``trace_info``,
  ``trace_request_metadata``, ``trace_tags``, ``spans``) in MLflow's own format (span
  ``content`` JSON, denormalised token and cost columns), in batches (PostgreSQL: COPY).
  ``mlflow.search_traces`` and ``MlflowClient.get_trace`` read the result exactly like
  API-logged traces (tested). Use it for million-trace benchmarks.

:func:`synthetic_traffic` generates a realistic stream of SeedTraces (daily and weekly
pattern, noise, several models, users, routes and task types, optional incidents).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = [
    "Incident",
    "SeedSpan",
    "SeedTrace",
    "bulk_load",
    "seed_traces",
    "synthetic_traffic",
]


@dataclass(frozen=True)
class SeedSpan:
    """One LLM call inside a trace. ``input_tokens`` includes cached tokens (MLflow's
    convention); ``output_tokens`` includes reasoning tokens."""

    model: str = "gpt-4o-mini"
    provider: str | None = "openai"
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    start_offset_ms: int = 1
    latency_ms: int = 100
    status: Literal["OK", "ERROR"] = "OK"
    name: str = "chat_completion"
    span_type: str = "CHAT_MODEL"
    ttft_ms: float | None = None
    service_tier: str | None = None

    def token_usage(self) -> dict[str, int]:
        """The ``mlflow.chat.tokenUsage`` attribute MLflow's autologgers write."""
        usage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if self.cache_read_tokens:
            usage["cache_read_input_tokens"] = self.cache_read_tokens
        if self.cache_write_tokens:
            usage["cache_creation_input_tokens"] = self.cache_write_tokens
        return usage

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "mlflow.llm.model": self.model,
            "mlflow.chat.tokenUsage": self.token_usage(),
        }
        if self.provider:
            attrs["mlflow.llm.provider"] = self.provider
        if self.reasoning_tokens:
            attrs["gen_ai.usage.reasoning.output_tokens"] = self.reasoning_tokens
        if self.ttft_ms is not None:
            attrs["llmops.ttft_ms"] = self.ttft_ms
        if self.service_tier:
            attrs["llmops.service_tier"] = self.service_tier
        return attrs


@dataclass(frozen=True)
class SeedTrace:
    """One request: a root span (``name``) with its LLM spans as children.

    ``timestamp_ms`` is the trace start (epoch milliseconds); ``status`` is the root
    span's status. The per-request fields become the metadata keys of docs/contracts.md.
    """

    timestamp_ms: int
    latency_ms: int = 500
    status: Literal["OK", "ERROR"] = "OK"
    name: str = "handle_request"
    user: str | None = None
    session: str | None = None
    task_type: str | None = None
    route: str | None = None
    tenant: str | None = None
    environment: str | None = "production"
    service: str | None = None
    sample_weight: str | None = None
    spans: tuple[SeedSpan, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    request: str = "hello"
    response: str = "hi"
    #: 32 hex digits; :func:`bulk_load` stores the trace as ``tr-<trace_id>`` (a sampling
    #: test decides on the same id tracing would). None: random. ``seed_traces`` ignores it
    #: (MLflow's API picks the id).
    trace_id: str | None = None

    def trace_metadata(self) -> dict[str, str]:
        """Metadata keys as ``setup_production_tracing`` writes them (docs/contracts.md)."""
        md = dict(self.metadata)
        for key, value in (
            ("mlflow.trace.user", self.user),
            ("mlflow.trace.session", self.session),
            ("llmops.task_type", self.task_type),
            ("llmops.route", self.route),
            ("llmops.tenant", self.tenant),
            ("llmops.environment", self.environment),
            ("llmops.service", self.service),
            ("llmops.sample_weight", self.sample_weight),
        ):
            if value is not None:
                md[key] = str(value)
        return md


# ---------------------------------------------------------------------------
# Through MLflow's public API
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _mlflow_env(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's global tracing at ``tracking_uri`` with synchronous logging; restore
    the tracking URI and environment afterwards (tests share worker processes)."""
    import mlflow

    saved_env = {
        k: os.environ.get(k)
        for k in (
            "MLFLOW_TRACKING_URI",
            "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING",
            "MLFLOW_MODEL_CATALOG_URI",
            "LITELLM_LOCAL_MODEL_COST_MAP",
        )
    }
    saved_uri = mlflow.get_tracking_uri()
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # Changing the URI makes MLflow re-create its exporter, now with synchronous logging.
    # (Same URI as before: the existing exporter is kept and flushed below.)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.flush_trace_async_logging()
        mlflow.set_tracking_uri(saved_uri)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ensure_experiment(client: Any, experiment_name: str) -> str:
    exp = client.get_experiment_by_name(experiment_name)
    return exp.experiment_id if exp else client.create_experiment(experiment_name)


def seed_traces(tracking_uri: str, experiment_name: str, traces: Iterable[SeedTrace]) -> list[str]:
    """Log ``traces`` through MLflow's public API with their own timestamps; return the
    trace ids in order. Synchronous: the traces are in the store when this returns."""
    import mlflow
    from mlflow import MlflowClient

    ids: list[str] = []
    with _mlflow_env(tracking_uri):
        client = MlflowClient(tracking_uri)
        exp_id = _ensure_experiment(client, experiment_name)
        for t in traces:
            t0 = t.timestamp_ms * 1_000_000
            with mlflow.tracing.context(metadata=t.trace_metadata(), tags=t.tags or None):
                root = client.start_trace(
                    t.name,
                    span_type="CHAIN",
                    inputs={"request": t.request},
                    experiment_id=exp_id,
                    start_time_ns=t0,
                )
            for s in t.spans:
                start = t0 + s.start_offset_ms * 1_000_000
                span = client.start_span(
                    s.name,
                    trace_id=root.trace_id,
                    parent_id=root.span_id,
                    span_type=s.span_type,
                    inputs={"messages": [{"role": "user", "content": t.request}]},
                    attributes=s.attributes(),
                    start_time_ns=start,
                )
                client.end_span(
                    root.trace_id,
                    span.span_id,
                    outputs={"content": t.response},
                    status=s.status,
                    end_time_ns=start + s.latency_ms * 1_000_000,
                )
            client.end_trace(
                root.trace_id,
                outputs={"response": t.response},
                status=t.status,
                end_time_ns=t0 + t.latency_ms * 1_000_000,
            )
            ids.append(root.trace_id)
    return ids


# ---------------------------------------------------------------------------
# Straight into MLflow's tables
# ---------------------------------------------------------------------------
def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def _attr(v: Any) -> str:
    return json.dumps(v)


class _MlflowCost:
    """MLflow's own write-time cost (``calculate_cost_by_model_and_token_usage``) as linear
    per-token rates per model, probed once, so a million spans cost no catalog look-ups."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str | None], tuple[float, ...] | None] = {}

    def rates(self, model: str, provider: str | None) -> tuple[float, ...] | None:
        key = (model, provider)
        if key not in self._rates:
            from mlflow.tracing.utils import calculate_cost_by_model_and_token_usage as calc

            m = 1_000_000
            base = calc(model, {"input_tokens": m, "output_tokens": m}, provider)
            if not base:
                self._rates[key] = None
            else:
                cr = (
                    calc(
                        model,
                        {"input_tokens": m, "output_tokens": m, "cache_read_input_tokens": m},
                        provider,
                    )
                    or base
                )
                cw = (
                    calc(
                        model,
                        {"input_tokens": m, "output_tokens": m, "cache_creation_input_tokens": m},
                        provider,
                    )
                    or base
                )
                self._rates[key] = (
                    base["input_cost"] / m,
                    (cr["input_cost"] - base["input_cost"]) / m,
                    (cw["input_cost"] - base["input_cost"]) / m,
                    base["output_cost"] / m,
                )
        return self._rates[key]

    def cost(self, s: SeedSpan) -> dict[str, float] | None:
        r = self.rates(s.model, s.provider)
        if r is None or (s.input_tokens == 0 and s.output_tokens == 0):
            return None
        inp = s.input_tokens * r[0] + s.cache_read_tokens * r[1] + s.cache_write_tokens * r[2]
        out = s.output_tokens * r[3]
        return {"input_cost": inp, "output_cost": out, "total_cost": inp + out}


def _span_content(
    trace_hex: str,
    span_hex: str,
    parent_hex: str | None,
    name: str,
    start_ns: int,
    end_ns: int,
    status: str,
    attrs: dict[str, str],
) -> str:
    return json.dumps(
        {
            "trace_id": _b64(trace_hex),
            "span_id": _b64(span_hex),
            "parent_span_id": _b64(parent_hex) if parent_hex else None,
            "name": name,
            "start_time_unix_nano": start_ns,
            "end_time_unix_nano": end_ns,
            "events": [],
            "status": {"code": f"STATUS_CODE_{status}", "message": ""},
            "attributes": attrs,
            "links": [],
        },
        ensure_ascii=False,
    )


def _rows_for(
    t: SeedTrace,
    experiment_id: int,
    artifact_location: str,
    rng: random.Random,
    costs: _MlflowCost,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    trace_hex = f"{rng.getrandbits(128):032x}"  # drawn either way: same stream for all
    if t.trace_id is not None:
        trace_hex = t.trace_id
    trace_id = f"tr-{trace_hex}"
    root_hex = f"{rng.getrandbits(64):016x}"
    t0 = t.timestamp_ms * 1_000_000
    t1 = t0 + t.latency_ms * 1_000_000
    tid_attr = _attr(trace_id)
    inputs = _attr({"request": t.request})
    outputs = _attr({"response": t.response})
    spans: list[dict[str, Any]] = [
        {
            "trace_id": trace_id,
            "experiment_id": experiment_id,
            "span_id": root_hex,
            "parent_span_id": None,
            "name": t.name,
            "type": "CHAIN",
            "status": t.status,
            "start_time_unix_nano": t0,
            "end_time_unix_nano": t1,
            "content": _span_content(
                trace_hex,
                root_hex,
                None,
                t.name,
                t0,
                t1,
                t.status,
                {
                    "mlflow.spanStartTimeNs": str(t0),
                    "mlflow.experimentId": _attr(str(experiment_id)),
                    "mlflow.traceRequestId": tid_attr,
                    "mlflow.spanType": _attr("CHAIN"),
                    "mlflow.spanInputs": inputs,
                    "mlflow.spanOutputs": outputs,
                    "mlflow.spanLogLevel": "10",
                },
            ),
            "input_cost": None,
            "output_cost": None,
            "total_cost": None,
            "model_name": None,
            "model_provider": None,
        }
    ]
    tokens = dict.fromkeys(
        (
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ),
        0,
    )
    cost_sum = {"input_cost": 0.0, "output_cost": 0.0, "total_cost": 0.0}
    any_cost = False
    for s in t.spans:
        span_hex = f"{rng.getrandbits(64):016x}"
        s0 = t0 + s.start_offset_ms * 1_000_000
        s1 = s0 + s.latency_ms * 1_000_000
        usage = s.token_usage()
        for k, v in usage.items():
            tokens[k] += v
        attrs = {
            "mlflow.spanStartTimeNs": str(s0),
            "mlflow.traceRequestId": tid_attr,
            "mlflow.spanType": _attr(s.span_type),
            "mlflow.spanInputs": _attr({"messages": [{"role": "user", "content": t.request}]}),
        }
        attrs.update({k: _attr(v) for k, v in s.attributes().items()})
        attrs["mlflow.spanOutputs"] = _attr({"content": t.response})
        attrs["mlflow.spanLogLevel"] = "20"
        c = costs.cost(s)
        if c:
            attrs["mlflow.llm.cost"] = _attr(c)
            any_cost = True
            for k in cost_sum:
                cost_sum[k] += c[k]
        spans.append(
            {
                "trace_id": trace_id,
                "experiment_id": experiment_id,
                "span_id": span_hex,
                "parent_span_id": root_hex,
                "name": s.name,
                "type": s.span_type,
                "status": s.status,
                "start_time_unix_nano": s0,
                "end_time_unix_nano": s1,
                "content": _span_content(
                    trace_hex, span_hex, root_hex, s.name, s0, s1, s.status, attrs
                ),
                "input_cost": c["input_cost"] if c else None,
                "output_cost": c["output_cost"] if c else None,
                "total_cost": c["total_cost"] if c else None,
                "model_name": s.model,
                "model_provider": s.provider,
            }
        )
    has_tokens = bool(t.spans)
    info = {
        "request_id": trace_id,
        "experiment_id": experiment_id,
        "timestamp_ms": t.timestamp_ms,
        "execution_time_ms": t.latency_ms,
        "status": t.status,
        "client_request_id": None,
        "request_preview": inputs,
        "response_preview": outputs,
        "db_payload_generation": 1,
        "trace_name": t.name,
        "session_id": t.session,
        "input_tokens": tokens["input_tokens"] if has_tokens else None,
        "output_tokens": tokens["output_tokens"] if has_tokens else None,
        "total_tokens": tokens["total_tokens"] if has_tokens else None,
        "cache_read_input_tokens": tokens["cache_read_input_tokens"] or None,
        "cache_creation_input_tokens": tokens["cache_creation_input_tokens"] or None,
        "cache_creation_input_tokens_above_1hr": None,
        "input_cost": cost_sum["input_cost"] if any_cost else None,
        "output_cost": cost_sum["output_cost"] if any_cost else None,
        "total_cost": cost_sum["total_cost"] if any_cost else None,
    }
    md = {k: v for k, v in t.trace_metadata().items() if k != "mlflow.trace.session"}
    md.update(
        {
            "mlflow.trace_schema.version": "3",
            "mlflow.trace.infoFinalized": "true",
            "mlflow.traceInputs": inputs,
            "mlflow.traceOutputs": outputs,
        }
    )
    metadata = [{"request_id": trace_id, "key": k, "value": v} for k, v in sorted(md.items())]
    tags = {**t.tags, "mlflow.trace.spansLocation": "TRACKING_STORE"}
    tags["mlflow.artifactLocation"] = f"{artifact_location}/traces/{trace_id}/artifacts"
    tag_rows = [{"request_id": trace_id, "key": k, "value": v} for k, v in tags.items()]
    return info, metadata, tag_rows, spans


_TABLES = ("trace_info", "trace_request_metadata", "trace_tags", "spans")


def _copy_pg(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    cols = [c.name for c in table.columns if c.computed is None and c.name in rows[0]]
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        with cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row([r[c] for c in cols])


def bulk_load(
    engine: Engine,
    experiment_id: str | int,
    traces: Iterable[SeedTrace],
    *,
    batch_size: int = 5000,
    seed: int | None = None,
    progress: Any | None = None,
) -> int:
    """Insert ``traces`` straight into MLflow's tables on ``engine`` (an MLflow tracking
    database whose schema MLflow created); return how many were inserted.

    Rows are exactly what MLflow's SQL store writes for the same traces (span content
    JSON, denormalised tokens, MLflow's own cost), so MLflow's readers see no difference.
    ``progress`` is called with the running count after each batch.
    """
    md = sa.MetaData()
    md.reflect(engine, only=[*_TABLES, "experiments"])
    exp_id = int(experiment_id)
    with engine.connect() as conn:
        loc = conn.execute(
            sa.select(md.tables["experiments"].c.artifact_location).where(
                md.tables["experiments"].c.experiment_id == exp_id
            )
        ).scalar_one_or_none()
    if loc is None:
        raise ValueError(f"experiment {experiment_id} does not exist in {engine.url}")
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    costs = _MlflowCost()
    pg = engine.dialect.name == "postgresql"
    n = 0
    batch: dict[str, list[dict[str, Any]]] = {t: [] for t in _TABLES}

    def flush() -> None:
        if not batch["trace_info"]:
            return
        with engine.begin() as conn:
            for name in _TABLES:
                rows = batch[name]
                if not rows:
                    continue
                if pg and engine.dialect.driver == "psycopg":
                    _copy_pg(conn, md.tables[name], rows)
                else:
                    conn.execute(md.tables[name].insert(), rows)
        for rows in batch.values():
            rows.clear()
        if progress is not None:
            progress(n)

    for t in traces:
        info, metadata, tag_rows, spans = _rows_for(t, exp_id, loc, rng, costs)
        batch["trace_info"].append(info)
        batch["trace_request_metadata"].extend(metadata)
        batch["trace_tags"].extend(tag_rows)
        batch["spans"].extend(spans)
        n += 1
        if len(batch["trace_info"]) >= batch_size:
            flush()
    flush()
    return n


# ---------------------------------------------------------------------------
# Synthetic production traffic
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Incident:
    """A period of abnormal traffic, for alerting tests.

    ``kind``: ``errors`` (error probability becomes ``factor``, e.g. 0.3), ``latency``
    (latency multiplied by ``factor``), ``cost`` (tokens multiplied by ``factor``),
    ``traffic`` (rate multiplied by ``factor``). ``model`` / ``route`` narrow it.
    """

    start: datetime
    end: datetime
    kind: Literal["errors", "latency", "cost", "traffic"]
    factor: float
    model: str | None = None
    route: str | None = None

    def active(self, when: datetime, model: str | None = None, route: str | None = None) -> bool:
        return (
            self.start <= when < self.end
            and (self.model is None or model is None or self.model == model)
            and (self.route is None or route is None or self.route == route)
        )


#: (model, provider, weight, (mean input, mean output), base latency ms)
MODELS: tuple[tuple[str, str, float, tuple[int, int], int], ...] = (
    ("gpt-4o-mini", "openai", 0.55, (900, 180), 700),
    ("gpt-4o", "openai", 0.2, (1500, 350), 1400),
    ("claude-sonnet-4-20250514", "anthropic", 0.15, (2000, 400), 1800),
    ("o3-mini", "openai", 0.07, (1200, 900), 2500),
    ("acme-internal-llm", "acme", 0.03, (600, 150), 500),  # not in any catalog: unpriced
)
#: (route, task type, weight, LLM calls per request)
ROUTES: tuple[tuple[str, str, float, int], ...] = (
    ("/chat", "chat", 0.5, 1),
    ("/summarize", "summarization", 0.2, 1),
    ("/extract", "extraction", 0.15, 2),
    ("/agent", "agent", 0.15, 3),
)


def _diurnal(when: datetime) -> float:
    """Traffic multiplier: peak around 14:00 UTC, trough at night, quieter weekends."""
    hour = when.hour + when.minute / 60
    day = 0.25 + 0.75 * (0.5 + 0.5 * math.cos((hour - 14) / 24 * 2 * math.pi))
    return day * (0.6 if when.weekday() >= 5 else 1.0)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def synthetic_traffic(
    start: datetime,
    days: float,
    rate_per_min: float,
    seed: int = 0,
    incidents: Sequence[Incident] = (),
    *,
    users: int = 200,
    environment: str = "production",
    error_rate: float = 0.02,
) -> Iterator[SeedTrace]:
    """Yield SeedTraces from ``start`` for ``days`` at about ``rate_per_min`` on average
    (noisy daily and weekly pattern), in time order. Deterministic for a given ``seed``."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rng = random.Random(seed)
    model_weights = [m[2] for m in MODELS]
    route_weights = [r[2] for r in ROUTES]
    user_weights = [1 / (i + 1) ** 0.8 for i in range(users)]  # a few heavy users
    user_ids = [f"user-{i:04d}" for i in range(users)]
    # The pattern's mean over a week is about 0.55; scale so the average is rate_per_min.
    scale = rate_per_min / 0.55
    minutes = int(days * 24 * 60)
    sessions: dict[str, tuple[str, int]] = {}
    for minute in range(minutes):
        when = start + timedelta(minutes=minute)
        lam = scale * _diurnal(when) * rng.lognormvariate(0, 0.15)
        for inc in incidents:
            if inc.kind == "traffic" and inc.active(when):
                lam *= inc.factor
        base_ms = int(when.timestamp() * 1000)
        for ts in sorted(base_ms + rng.randrange(60_000) for _ in range(_poisson(rng, lam))):
            route, task, _, calls = rng.choices(ROUTES, route_weights)[0]
            model, provider, _, (mi, mo), base_lat = rng.choices(MODELS, model_weights)[0]
            user = rng.choices(user_ids, user_weights)[0]
            sid, left = sessions.get(user, ("", 0))
            if left <= 0:
                sid, left = f"sess-{rng.getrandbits(48):012x}", rng.randint(1, 8)
            sessions[user] = (sid, left - 1)
            err_p, lat_f, tok_f = error_rate, 1.0, 1.0
            for inc in incidents:
                if inc.active(when, model, route):
                    if inc.kind == "errors":
                        err_p = inc.factor
                    elif inc.kind == "latency":
                        lat_f *= inc.factor
                    elif inc.kind == "cost":
                        tok_f *= inc.factor
            failed = rng.random() < err_p
            spans = []
            offset = 5
            for i in range(calls):
                inp = max(1, int(rng.lognormvariate(math.log(mi * tok_f), 0.5)))
                out = max(1, int(rng.lognormvariate(math.log(mo * tok_f), 0.6)))
                cached = int(inp * rng.choice((0, 0, 0.3, 0.6))) if provider != "acme" else 0
                lat = max(20, int(rng.lognormvariate(math.log(base_lat * lat_f), 0.35)))
                last = i == calls - 1
                spans.append(
                    SeedSpan(
                        model=model,
                        provider=provider,
                        input_tokens=inp,
                        output_tokens=out if not (failed and last) else 0,
                        cache_read_tokens=cached,
                        reasoning_tokens=int(out * 0.6) if model.startswith("o3") else 0,
                        start_offset_ms=offset,
                        latency_ms=lat,
                        status="ERROR" if failed and last else "OK",
                        ttft_ms=round(lat * 0.3, 1),
                    )
                )
                offset += lat + 5
            yield SeedTrace(
                timestamp_ms=ts,
                latency_ms=offset + rng.randint(5, 40),
                status="ERROR" if failed else "OK",
                name=f"POST {route}",
                user=user,
                session=sid,
                task_type=task,
                route=route,
                tenant=f"tenant-{int(user[-4:]) % 7}",
                environment=environment,
                service="assistant-api",
                sample_weight="1",
                spans=tuple(spans),
            )
