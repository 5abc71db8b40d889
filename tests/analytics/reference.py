"""An independent pandas computation of the SQL analyses over ``mlflow.search_traces``.

It shares no code with ``mlflow_llmops.analytics``: traces and spans come from MLflow's
public API, our prices from the ``llmops_span_costs`` table read as-is.
"""

from __future__ import annotations

import json
import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow.entities import Span
from mlflow_state import use_tracking_uri

DAY = 86_400_000


def load(uri: str, exp_id: str, engine: sa.Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(traces, llm spans) as DataFrames, costs resolved like the contract says."""
    with use_tracking_uri(uri):
        df = mlflow.search_traces(locations=[exp_id], return_type="pandas", max_results=100_000)
    with engine.connect() as conn:
        costs = pd.read_sql(sa.text("SELECT * FROM llmops_span_costs"), conn)
    costs["total"] = costs["total_cost_usd"].astype(float)
    ours = {(r.trace_id, r.span_id): r for r in costs.itertuples()}
    traces, spans = [], []
    for row in df.itertuples():
        md, tags = row.trace_metadata, row.tags
        usage = json.loads(md.get("mlflow.trace.tokenUsage", "{}"))
        first_model, our_rows, our_sum, mlflow_sum = None, 0, None, None
        row_spans = [Span.from_dict(d) if isinstance(d, dict) else d for d in row.spans]
        for s in sorted(row_spans, key=lambda s: (s.start_time_ns, s.span_id)):
            a = s.attributes
            if s.span_type not in ("LLM", "CHAT_MODEL"):
                continue
            model = a.get("mlflow.llm.model")
            first_model = first_model or model
            mine = ours.get((row.trace_id, s.span_id))
            mcost = (a.get("mlflow.llm.cost") or {}).get("total_cost")
            if mine is not None:
                our_rows += 1
                cost, source = (None if pd.isna(mine.total) else mine.total), "llmops"
                if cost is not None:
                    our_sum = (our_sum or 0.0) + cost
            else:
                cost, source = mcost, ("mlflow" if mcost is not None else None)
                if mcost is not None:
                    mlflow_sum = (mlflow_sum or 0.0) + mcost
            u = a.get("mlflow.chat.tokenUsage") or {}
            spans.append({
                "trace_id": row.trace_id, "span_id": s.span_id, "model": model,
                "provider": a.get("mlflow.llm.provider"), "status": s.status.status_code.value,
                "start_ms": s.start_time_ns // 1_000_000,
                "latency_ms": (s.end_time_ns - s.start_time_ns) // 1_000_000,
                "input_tokens": u.get("input_tokens", 0), "output_tokens": u.get("output_tokens", 0),
                "cost_usd": cost, "cost_source": source,
            })  # fmt: skip
        if our_rows:
            cost = our_sum
        else:
            cost = mlflow_sum
        traces.append({
            "trace_id": row.trace_id, "timestamp_ms": int(row.request_time),
            "status": str(row.state), "latency_ms": row.execution_duration,
            "user_id": md.get("mlflow.trace.user"), "session_id": md.get("mlflow.trace.session"),
            "task_type": md.get("llmops.task_type"), "trace_name": tags.get("mlflow.traceName"),
            "model": first_model, "input_tokens": usage.get("input_tokens", 0),
            "output_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0), "cost_usd": cost,
            "cache_read_tokens": usage.get("cache_read_input_tokens", 0),
        })  # fmt: skip
    t = pd.DataFrame(traces)
    t["status"] = t["status"].str.replace("TraceState.", "", regex=False)
    t.attrs["costs"] = costs  # our span prices, for cache_savings
    return t, pd.DataFrame(spans)


def _rows(df: pd.DataFrame, cols: list[str]) -> list[tuple[Any, ...]]:
    out = []
    for r in df[cols].itertuples(index=False):
        out.append(tuple(None if (isinstance(v, float) and math.isnan(v)) else v for v in r))
    return out


def _sum(s: pd.Series) -> float | None:
    s = s.dropna()
    return float(s.sum()) if len(s) else None


def daily_totals(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi)].copy()
    t["day_ms"] = t.timestamp_ms - t.timestamp_ms % DAY
    g = t.groupby("day_ms")
    out = pd.DataFrame({
        "requests": g.size(), "errors": g.status.apply(lambda s: int((s == "ERROR").sum())),
        "total_tokens": g.total_tokens.sum(), "cost_usd": g.cost_usd.apply(_sum),
    }).reset_index()  # fmt: skip
    return _rows(out, ["day_ms", "requests", "errors", "total_tokens", "cost_usd"])


def cost_by_model_day(s: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    s = s[(s.start_ms >= lo) & (s.start_ms < hi) & s.model.notna()].copy()
    s["day_ms"] = s.start_ms - s.start_ms % DAY
    g = s.groupby(["day_ms", "model", "provider"])
    out = pd.DataFrame({
        "llm_calls": g.size(), "cost_usd": g.cost_usd.apply(_sum),
        "unpriced_spans": g.apply(
            lambda x: int((x.cost_usd.isna() & (x.input_tokens + x.output_tokens > 0)).sum())
        ),
    }).reset_index()  # fmt: skip
    return sorted(_rows(out, ["day_ms", "model", "provider", "llm_calls", "cost_usd",
                              "unpriced_spans"]), key=str)  # fmt: skip


def cost_by_task_type(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi)]
    g = t.groupby("task_type", dropna=False)
    out = pd.DataFrame({
        "requests": g.size(), "users": g.user_id.nunique(), "cost_usd": g.cost_usd.apply(_sum),
    }).reset_index()  # fmt: skip
    return sorted(_rows(out, ["task_type", "requests", "users", "cost_usd"]), key=str)


def top_traces(t: pd.DataFrame, lo: int, hi: int, n: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi) & t.cost_usd.notna()]
    t = t.sort_values(["cost_usd", "trace_id"], ascending=[False, True]).head(n)
    return _rows(t, ["trace_id", "user_id", "model", "cost_usd"])


def cost_per_success(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi) & t.model.notna()]
    out = []
    for model, g in t.groupby("model"):
        ok = int((g.status == "OK").sum())
        cost = _sum(g.cost_usd)
        tok = int(g.total_tokens.sum())
        out.append((model, len(g), ok, cost, None if cost is None or not ok else cost / ok,
                    None if cost is None or not tok else cost * 1000 / tok))  # fmt: skip
    return sorted(out, key=str)


def latency_errors_by_model(s: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    s = s[(s.start_ms >= lo) & (s.start_ms < hi) & s.model.notna()]
    out = []
    for model, g in s.groupby("model"):
        lat = np.sort(g.latency_ms.to_numpy())
        n = len(lat)
        p50, p90, p99 = (int(lat[math.ceil(p * n / 100) - 1]) for p in (50, 90, 99))
        errors = int((g.status == "ERROR").sum())
        out.append((model, n, errors, errors / n, p50, p90, p99, int(lat[-1])))
    return sorted(out, key=str)


def unpriced_usage(s: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    s = s[(s.start_ms >= lo) & (s.start_ms < hi) & s.cost_usd.isna()
          & (s.input_tokens + s.output_tokens > 0)]  # fmt: skip
    out = []
    for (model, provider), g in s.groupby(["model", "provider"]):
        out.append((model, provider, len(g), g.trace_id.nunique(), int(g.input_tokens.sum()),
                    int(g.output_tokens.sum()), int(g.start_ms.min()), int(g.start_ms.max())))  # fmt: skip
    return sorted(out, key=str)


def hourly_cost_anomaly(t: pd.DataFrame, hour: int) -> dict[str, tuple[float, float]]:
    """model -> (cost in the hour, mean of the same hour over the 7 previous days)."""
    out: dict[str, list[float]] = {}
    for k in range(8):
        lo = hour - (7 - k) * DAY
        w = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < lo + 3_600_000)]
        for model, g in w.groupby("model", dropna=False):
            key = None if pd.isna(model) else model
            out.setdefault(key, [0.0, 0.0])
            out[key][1 if k == 7 else 0] += float(g.cost_usd.fillna(0).sum())
    return {m: (v[1], v[0] / 7) for m, v in out.items()}


def month_spend(t: pd.DataFrame, lo: int, hi: int) -> float:
    return float(t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi)].cost_usd.fillna(0).sum())


def _div(a: float | None, b: float) -> float | None:
    return None if a is None or not b else a / b


def cost_by_user(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi)]
    out = []
    for user, g in t.groupby("user_id", dropna=False):
        cost = _sum(g.cost_usd)
        out.append((None if pd.isna(user) else user, len(g), g.session_id.nunique(),
                    int(g.total_tokens.sum()), cost, _div(cost, len(g))))  # fmt: skip
    return sorted(out, key=str)


def cost_by_session(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi) & t.session_id.notna()]
    out = []
    for sess, g in t.groupby("session_id"):
        users = g.user_id.dropna()
        out.append((sess, min(users) if len(users) else None, len(g), int(g.timestamp_ms.min()),
                    int(g.timestamp_ms.max()), _sum(g.cost_usd)))  # fmt: skip
    return sorted(out, key=str)


def token_efficiency(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    t = t[(t.timestamp_ms >= lo) & (t.timestamp_ms < hi) & (t.total_tokens > 0)]
    out = []
    for (task, name), g in t.groupby(["task_type", "trace_name"], dropna=False):
        n, inp, outp = len(g), int(g.input_tokens.sum()), int(g.output_tokens.sum())
        cost = _sum(g.cost_usd)
        out.append((None if pd.isna(task) else task, None if pd.isna(name) else name, n,
                    inp / n, outp / n, _div(float(outp), inp),
                    _div(float(g.cache_read_tokens.sum()), inp),
                    _div(None if cost is None else cost * 1000.0, outp)))  # fmt: skip
    return sorted(out, key=str)


def cache_savings(t: pd.DataFrame, lo: int, hi: int) -> list[tuple]:
    """From our span prices as stored: cache reads valued at the uncached input rate."""
    c = t.attrs["costs"]
    c = c[(c.trace_timestamp_ms >= lo) & (c.trace_timestamp_ms < hi) & (c.status != "unpriced")]
    out = []
    for (model, provider), g in c.groupby(["model", "provider"], dropna=False):
        inp, cr = int(g.input_tokens.sum()), int(g.cache_read_tokens.sum())
        in_cost = _sum(g.input_cost_usd.astype(float))
        read_cost = _sum(g.cache_read_cost_usd.astype(float))
        rate = _div(in_cost, inp)
        saved = None if rate is None or read_cost is None else cr * rate - read_cost
        out.append((model, None if pd.isna(provider) else provider, inp, cr,
                    _div(float(cr), inp + cr), read_cost,
                    _sum(g.cache_write_cost_usd.astype(float)), saved))  # fmt: skip
    return sorted(out, key=str)
