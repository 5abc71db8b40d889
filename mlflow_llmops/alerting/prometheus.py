"""Export rules as Prometheus alerting rules over the OTel GenAI metrics, and a Grafana
dashboard for the same metrics.

Tracing records ``gen_ai.client.operation.duration`` (seconds) and
``gen_ai.client.token.usage`` for 100% of calls; through the OTel Prometheus
exporter or an OTLP->Prometheus pipeline they are named
``gen_ai_client_operation_duration_seconds_{bucket,sum,count}`` and
``gen_ai_client_token_usage_{bucket,sum,count}``, with labels
``gen_ai_request_model``, ``gen_ai_provider_name``, ``gen_ai_operation_name``,
``gen_ai_token_type`` and ``error_type`` (``tracing/metrics.py`` keeps them
bounded and adds nothing else). Of the rule labels only ``model`` is on those
metrics: a rule grouping or filtering by route, task type, environment,
service, tenant, ... would export PromQL that matches nothing, so it is left
out, like the signals the metrics cannot express (cost, unpriced share,
scores); the file header lists every rule left out and why: the monitor
evaluates them from traces.

A rule that is exported but cannot mean exactly what the monitor evaluates (the
metrics count LLM calls where the monitor counts traces; a latency threshold between
two histogram buckets; hysteresis and no-data policies PromQL has no word for) is
listed in the header too, and carries the same notes in its ``export_notes``
annotation, so nobody mistakes the exported rule for the monitor's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml

from mlflow_llmops.alerting import catalog
from mlflow_llmops.alerting.catalog import percentile_of
from mlflow_llmops.alerting.rules import BaselineRule, BurnRateRule, SignalSpec, ThresholdRule
from mlflow_llmops.core.duration import format_duration
from mlflow_llmops.tracing.metrics import DURATION_BUCKETS  # the GenAI semconv buckets

DURATION = "gen_ai_client_operation_duration_seconds"
TOKENS = "gen_ai_client_token_usage"
#: rule label -> Prometheus label of the GenAI metrics: only what tracing/metrics.py records
#: (``gen_ai.request.model``); ``service.name`` is a resource attribute, not a series label.
LABEL_MAP = {
    "model": "gen_ai_request_model",
}


class NotExportable(Exception):
    """The rule uses a signal or label the GenAI metrics do not carry."""


def _labels(spec_labels: Sequence[str]) -> list[str]:
    out = []
    for label in spec_labels:
        if label not in LABEL_MAP:
            raise NotExportable(
                f"label {label!r} is not on the GenAI metrics (only {', '.join(LABEL_MAP)} is)"
            )
        out.append(LABEL_MAP[label])
    return out


def _matchers(where: dict[str, str], extra: str = "") -> str:
    parts = [f'{lbl}="{v}"' for lbl, v in zip(_labels(list(where)), where.values(), strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}" if parts else ""


def _by(groups: list[str], *extra: str) -> str:
    cols = [*extra, *groups]
    return f" by ({', '.join(cols)})" if cols else ""


#: signals whose value is a share (0..1): shown as percentages (0.12 -> "12%")
RATIO_SIGNALS = frozenset(catalog.names(unit="ratio"))
#: signals the GenAI metrics count per LLM call, where the monitor counts traces
_PER_CALL = {
    "request_count": "counts LLM calls (gen_ai_client_operation_duration_seconds_count) where "
    "the monitor counts traces; a trace with several LLM calls counts several times",
    "error_rate": "the share of failed LLM calls (error_type set) where the monitor takes the "
    "share of failed traces; a trace with several LLM calls counts several times",
    "latency_over": "the share of LLM calls slower than the threshold where the monitor takes "
    "the share of traces (a trace's latency includes all its calls and its own work)",
    "latency": "the latency of single LLM calls where the monitor takes the latency of traces "
    "(a trace's latency includes all its calls and its own work)",
}


def latency_bucket(threshold_ms: float) -> float | None:
    """The histogram bucket boundary (seconds) a latency threshold is counted against: the
    smallest ``le`` at or above it (None above the largest bucket)."""
    thr = threshold_ms / 1000.0
    return next((b for b in DURATION_BUCKETS if b >= thr - 1e-9), None)


def signal_expr(
    spec: SignalSpec, window: timedelta | None = None, offset: timedelta | None = None
) -> str:
    """PromQL for one signal over its window (or ``window``), optionally ``offset`` back."""
    w = format_duration(window or spec.window)
    rng = f"[{w}]" + (f" offset {format_duration(offset)}" if offset else "")
    g = _labels(spec.group_by)
    m = _matchers(spec.where)
    s = spec.signal
    if s == "request_count":
        return f"sum{_by(g)} (increase({DURATION}_count{m}{rng}))"
    if s == "error_rate":
        bad = _matchers(spec.where, 'error_type!=""')
        return (
            f"sum{_by(g)} (rate({DURATION}_count{bad}{rng})) / "
            f"sum{_by(g)} (rate({DURATION}_count{m}{rng}))"
        )
    if s == "latency_over":
        le = latency_bucket(spec.latency_threshold_ms or 0)
        if le is None:
            thr = (spec.latency_threshold_ms or 0) / 1000.0
            raise NotExportable(f"latency threshold {thr:g}s is above the largest bucket")
        good = _matchers(spec.where, f'le="{le:g}"')
        return (
            f"1 - (sum{_by(g)} (rate({DURATION}_bucket{good}{rng})) / "
            f"sum{_by(g)} (rate({DURATION}_count{m}{rng})))"
        )
    if s in ("tokens", "input_tokens", "output_tokens"):
        kind = {
            "input_tokens": 'gen_ai_token_type="input"',
            "output_tokens": 'gen_ai_token_type="output"',
        }.get(s, "")
        return f"sum{_by(g)} (increase({TOKENS}_sum{_matchers(spec.where, kind)}{rng}))"
    if s.startswith("latency_p"):
        _, q = percentile_of(s)
        return (
            f"histogram_quantile({q:g}, sum{_by(g, 'le')} (rate({DURATION}_bucket{m}{rng}))) * 1000"
        )
    raise NotExportable(f"signal {s!r} is computed from traces only (no GenAI metric carries it)")


def _volume(
    spec: SignalSpec, window: timedelta | None = None, offset: timedelta | None = None
) -> str:
    w = format_duration(window or spec.window)
    rng = f"[{w}]" + (f" offset {format_duration(offset)}" if offset else "")
    return (
        f"sum{_by(_labels(spec.group_by))} (increase({DURATION}_count{_matchers(spec.where)}{rng}))"
    )


_TEMPLATE = re.compile(r"\{(\w+)\}")


def _annotations(
    rule: Any,
    threshold: str,
    window: timedelta,
    baseline: str = "n/a",
    *,
    value: str = "{{ $value | humanize }}",
    notes: Sequence[str] = (),
) -> dict[str, str]:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "value":
            return value
        if key == "threshold":
            return threshold
        if key == "window":
            return format_duration(window)
        if key == "baseline":
            return baseline
        if key == "alertname":
            return rule.name
        if key in LABEL_MAP:
            return "{{ $labels." + LABEL_MAP[key] + " }}"
        if key == "group":
            groups = rule.group_by if isinstance(rule, BurnRateRule) else rule.query.group_by
            return (
                ", ".join(f"{g}={{{{ $labels.{LABEL_MAP.get(g, g)} }}}}" for g in groups)
                or "all traffic"
            )
        return m.group(0)

    out = {k: _TEMPLATE.sub(sub, v) for k, v in rule.annotations.items()}
    if rule.runbook_url and "runbook_url" not in out:
        out["runbook_url"] = _TEMPLATE.sub(sub, rule.runbook_url)
    out.setdefault("summary", f"{rule.name}: {value} (threshold {threshold})")
    out["source"] = "exported by mlflow-llmops alerts export-prometheus"
    if notes:
        out["export_notes"] = "Differs from the monitor's rule: " + "; ".join(notes)
    return out


def _ratio(rule: Any) -> bool:
    return not isinstance(rule, BurnRateRule) and rule.query.signal in RATIO_SIGNALS


def _fmt_threshold(rule: Any, v: float) -> str:
    return f"{v * 100:.4g}%" if _ratio(rule) else f"{v:g}"


def _alert(
    rule: Any,
    expr: str,
    *,
    severity: str,
    extra_labels: dict[str, str] | None = None,
    threshold: str,
    window: timedelta,
    baseline: str = "n/a",
) -> dict[str, Any]:
    out: dict[str, Any] = {"alert": rule.name, "expr": expr}
    if rule.for_:
        out["for"] = format_duration(rule.for_)
    if rule.keep_firing_for:
        out["keep_firing_for"] = format_duration(rule.keep_firing_for)
    out["labels"] = {**rule.labels, **(extra_labels or {}), "severity": severity}
    value = "{{ $value | humanizePercentage }}" if _ratio(rule) else "{{ $value | humanize }}"
    out["annotations"] = _annotations(
        rule, threshold, window, baseline, value=value, notes=translation_notes(rule)
    )
    return out


def translation_notes(rule: Any) -> list[str]:
    """What the exported form of ``rule`` changes or approximates, and why (empty: exact)."""
    notes: list[str] = []
    if isinstance(rule, BurnRateRule):
        signal = "error_rate" if rule.sli == "errors" else "latency_over"
        threshold_ms = rule.latency_threshold_ms
    else:
        signal, threshold_ms = rule.query.signal, rule.query.latency_threshold_ms
    kind = "latency" if signal.startswith("latency_p") else signal
    if kind in _PER_CALL:
        notes.append(_PER_CALL[kind])
    if signal.startswith("latency_p"):
        notes.append(
            f"{signal} is estimated from the histogram buckets (histogram_quantile interpolates "
            "linearly inside a bucket) where the monitor computes it exactly from traces"
        )
    if signal == "latency_over" and threshold_ms is not None:
        le = latency_bucket(threshold_ms)
        if le is not None and abs(le * 1000.0 - threshold_ms) > 1e-6:
            notes.append(
                f"latency threshold {threshold_ms / 1000.0:g} s moved to the {le:g} s bucket "
                f'boundary (le="{le:g}"): the histogram has no {threshold_ms / 1000.0:g} s '
                f"bucket, so calls between {threshold_ms / 1000.0:g} s and {le:g} s count as fast"
            )
    min_samples = rule.min_samples if isinstance(rule, BurnRateRule) else rule.query.min_samples
    if min_samples > 1 or isinstance(rule, BaselineRule):
        what = (
            f"min_samples ({min_samples})"
            if min_samples > 1
            else f"min_baseline_samples ({rule.min_baseline_samples})"
        )
        if isinstance(rule, BaselineRule) and min_samples > 1:
            what += f" and min_baseline_samples ({rule.min_baseline_samples})"
        notes.append(f"{what} counted in LLM calls, not traces")
    if isinstance(rule, ThresholdRule) and rule.recovery_threshold is not None:
        notes.append(
            f"recovery_threshold {_fmt_threshold(rule, rule.recovery_threshold)} dropped: "
            "Prometheus alerts have no hysteresis, so this one resolves as soon as the value "
            f"is back past the threshold {_fmt_threshold(rule, rule.threshold)} "
            "(keep_firing_for is the closest guard)"
        )
    if rule.no_data == "alerting":
        notes.append(
            "no_data: alerting dropped: an expression without series fires nothing in "
            "Prometheus; add an absent() rule to page on missing data"
        )
    elif rule.no_data == "keep_state":
        notes.append("no_data: keep_state dropped: without series Prometheus resolves the alert")
    if rule.on_error == "alerting":
        notes.append(
            "on_error: alerting dropped: Prometheus keeps the state of a rule whose query "
            "fails and fires no error alert"
        )
    return notes


def rule_to_prometheus(rule: Any) -> list[dict[str, Any]]:
    """One mlflow-llmops rule as Prometheus alerting rules (raises NotExportable)."""
    sev = str(rule.severity)
    if isinstance(rule, ThresholdRule):
        spec = rule.query
        expr = f"({signal_expr(spec)}) {rule.op} {rule.threshold:g}"
        if spec.min_samples > 1:
            expr += f" and on({', '.join(_labels(spec.group_by))}) ({_volume(spec)} >= {spec.min_samples})"  # noqa: E501
        return [
            _alert(
                rule,
                expr,
                severity=sev,
                threshold=_fmt_threshold(rule, rule.threshold),
                window=spec.window,
            )
        ]
    if isinstance(rule, BaselineRule):
        if rule.median_of_days:
            raise NotExportable("median_of_days baselines have no direct PromQL equivalent")
        spec = rule.query
        cur = signal_expr(spec)
        past = f"({signal_expr(spec, offset=rule.offset)})"
        on = f" on({', '.join(_labels(spec.group_by))})"
        if rule.direction == "above":
            expr = f"({cur}) > {rule.factor:g} * {past}"
            if rule.floor is not None:
                expr += f" and ({cur}) >= {rule.floor:g}"
        else:
            expr = f"({cur}) < {past} / {rule.factor:g}"
            if rule.floor is not None:
                expr += f" and ({cur}) <= {rule.floor:g}"
        vol_past = _volume(spec, offset=rule.offset)
        expr += f" and{on} ({vol_past} >= {rule.min_baseline_samples})"
        return [
            _alert(
                rule,
                expr,
                severity=sev,
                threshold=f"{rule.factor:g}x the baseline",
                window=spec.window,
                baseline=f"the same {format_duration(spec.window)} "
                f"{format_duration(rule.offset)} earlier",
            )
        ]
    if isinstance(rule, BurnRateRule):
        if rule.sli == "quality":
            raise NotExportable("quality SLIs come from scorer assessments, not metrics")
        out = []
        budget = rule.error_budget
        for tier in rule.tiers:
            long_spec, short_spec = rule.query_for(tier.long), rule.query_for(tier.short)
            on = f" on({', '.join(_labels(long_spec.group_by))})"
            expr = (
                f"({signal_expr(long_spec)}) / {budget:g} > {tier.factor:g}\nand{on}\n"
                f"({signal_expr(short_spec)}) / {budget:g} > {tier.factor:g}"
            )
            if rule.min_samples > 1:
                expr += f"\nand{on} ({_volume(long_spec)} >= {rule.min_samples})"
            out.append(
                _alert(
                    rule,
                    expr,
                    severity=str(tier.severity),
                    extra_labels={"slo_window": format_duration(tier.long)},
                    threshold=f"{tier.factor:g}",
                    window=tier.long,
                )
            )
        return out
    raise NotExportable(f"unknown rule type {type(rule).__name__}")


@dataclass
class PrometheusExport:
    groups: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    #: exported rules that differ from the monitor's: rule name -> what and why
    changed: dict[str, list[str]] = field(default_factory=dict)

    def to_yaml(self) -> str:
        head = "# Generated by `mlflow-llmops alerts export-prometheus`; check with promtool.\n"
        if self.changed:
            head += (
                "# Rules changed or approximated in translation (also in each rule's "
                "export_notes annotation):\n"
            )
            for name, notes in sorted(self.changed.items()):
                head += f"#   {name}:\n" + "".join(f"#     - {n}\n" for n in notes)
        if self.skipped:
            head += "# Rules left out (evaluated by `mlflow-llmops monitor` instead):\n"
            head += "".join(f"#   {n}: {why}\n" for n, why in sorted(self.skipped.items()))
        return head + yaml.safe_dump(self.groups, sort_keys=False, width=120)


def export_prometheus_rules(
    rules: Sequence[Any],
    *,
    group: str = "mlflow-llmops",
    interval: timedelta = timedelta(minutes=1),
) -> PrometheusExport:
    """Prometheus rule groups for every exportable rule; the others are listed as skipped."""
    alerts: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    changed: dict[str, list[str]] = {}
    for rule in rules:
        try:
            alerts.extend(rule_to_prometheus(rule))
        except NotExportable as e:
            skipped[rule.name] = str(e)
            continue
        if notes := translation_notes(rule):
            changed[rule.name] = notes
    groups = {"groups": [{"name": group, "interval": format_duration(interval), "rules": alerts}]}
    return PrometheusExport(groups, skipped, changed)


def _panel(
    pid: int,
    title: str,
    exprs: list[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": "red", "value": t} for t in thresholds or []]
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "targets": [
            {"refId": chr(65 + i), "expr": e, "legendFormat": legend}
            for i, (e, legend) in enumerate(exprs)
        ],
    }


def grafana_dashboard(title: str = "LLM operations (mlflow-llmops)") -> dict[str, Any]:
    """A Grafana dashboard over the same GenAI metrics as the exported rules."""
    sel = '{gen_ai_request_model=~"$model"}'
    by = "sum by (gen_ai_request_model)"
    panels = [
        _panel(
            1,
            "Requests per second by model",
            [(f"{by} (rate({DURATION}_count{sel}[$__rate_interval]))", "{{gen_ai_request_model}}")],
            "reqps",
            0,
            0,
        ),
        _panel(
            2,
            "Error rate by model",
            [
                (
                    f'{by} (rate({DURATION}_count{{gen_ai_request_model=~"$model", error_type!=""}}'
                    f"[$__rate_interval])) / {by} (rate({DURATION}_count{sel}[$__rate_interval]))",
                    "{{gen_ai_request_model}}",
                )
            ],
            "percentunit",
            12,
            0,
            [0.05],
        ),
        _panel(
            3,
            "Latency P50 / P95 / P99",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate({DURATION}_bucket{sel}"
                    f"[$__rate_interval])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            0,
            8,
            [5.0],
        ),
        _panel(
            4,
            "P95 latency by model",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, gen_ai_request_model) "
                    f"(rate({DURATION}_bucket{sel}[$__rate_interval])))",
                    "{{gen_ai_request_model}}",
                )
            ],
            "s",
            12,
            8,
            [5.0],
        ),
        _panel(
            5,
            "Tokens per second by type",
            [
                (
                    f"sum by (gen_ai_token_type) (rate({TOKENS}_sum{sel}[$__rate_interval]))",
                    "{{gen_ai_token_type}}",
                )
            ],
            "short",
            0,
            16,
        ),
        _panel(
            6,
            "Tokens per second by model",
            [(f"{by} (rate({TOKENS}_sum{sel}[$__rate_interval]))", "{{gen_ai_request_model}}")],
            "short",
            12,
            16,
        ),
    ]
    return {
        "title": title,
        "uid": "mlflow-llmops",
        "tags": ["llm", "mlflow-llmops", "gen_ai"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "model",
                    "type": "query",
                    "label": "Model",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": f"label_values({DURATION}_count, gen_ai_request_model)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(grafana_dashboard(), indent=2) + "\n"
