"""Alert rules: threshold, baseline and multi-window multi-burn-rate SLO rules.

Rules are pydantic models so a YAML mistake is reported with the rule's name
and the field to fix. Import-light (pydantic and yaml only): the config loads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from mlflow_llmops.alerting.catalog import signal as signal_def
from mlflow_llmops.alerting.catalog import signal_kind
from mlflow_llmops.alerting.model import Severity
from mlflow_llmops.core.config import Section as _Model
from mlflow_llmops.core.configfile import merge
from mlflow_llmops.core.duration import Duration
from mlflow_llmops.errors import ConfigError

#: Columns of ``llmops_traces`` a rule may group or filter by (bounded labels).
LABEL_COLUMNS: tuple[str, ...] = (
    "model",
    "route",
    "task_type",
    "environment",
    "service",
    "service_version",
    "tenant",
    "trace_name",
    "experiment_id",
)
#: Extra label of assessment-based signals: the assessment (scorer) name.
SCORER_LABEL = "scorer"


class SignalSpec(_Model):
    """What to measure: a windowed aggregate, optionally grouped and filtered."""

    signal: str
    window: Duration = timedelta(minutes=5)
    group_by: tuple[str, ...] = ()
    where: dict[str, str] = Field(default_factory=dict)
    #: assessment signals: the scorer / feedback name (all of them when unset)
    scorer: str | None = None
    #: scorer_pass_rate / scorer_fail_rate: a score at or above this passes
    pass_threshold: float = 0.5
    #: latency_over: the share of requests slower than this
    latency_threshold_ms: float | None = Field(default=None, validate_default=True)
    #: groups with fewer traces (or scores) than this are not evaluated
    min_samples: int = Field(default=1, ge=0)

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str) -> str:
        signal_kind(v)
        return v

    @field_validator("window")
    @classmethod
    def _positive_window(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("window must be positive, e.g. 5m")
        return v

    @field_validator("group_by", mode="before")
    @classmethod
    def _labels_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("group_by", "where")
    @classmethod
    def _check_labels(cls, v: Any, info: ValidationInfo) -> Any:
        # validated field by field, so an error names query.group_by or query.where
        return _allowed_labels(v, info.data.get("signal"))

    @field_validator("latency_threshold_ms")
    @classmethod
    def _latency_threshold(cls, v: float | None, info: ValidationInfo) -> float | None:
        name = info.data.get("signal")
        if v is None and name is not None and "latency_threshold_ms" in signal_def(name).params:
            raise ValueError(f"signal {name} needs latency_threshold_ms")
        return v


def _allowed_labels(labels: Iterable[str], signal: str | None) -> Any:
    """``labels`` if a rule on ``signal`` may group or filter by all of them."""
    try:
        assessment = signal is not None and signal_kind(signal) == "assessment"
    except ValueError:
        assessment = False  # the signal's own error is reported under its field
    allowed = LABEL_COLUMNS + ((SCORER_LABEL,) if assessment else ())
    for label in labels:
        if label not in allowed:
            raise ValueError(
                f"cannot group or filter by {label!r}; use one of {', '.join(allowed)}"
            )
    return labels


class _RuleBase(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_:.-]*$", max_length=120)
    severity: Severity = Severity.WARNING
    enabled: bool = True
    #: the condition must hold this long before the alert fires (pending until then)
    for_: Duration = Field(default=timedelta(0), alias="for")
    #: keep firing this long after the condition is gone (flapping guard)
    keep_firing_for: Duration = timedelta(0)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    #: what to do when it fires (``{alertname}`` and label templates allowed); default:
    #: ``alerting.notifications.runbook_url``
    runbook_url: str | None = None
    #: no data at all: ``ok`` (resolve), ``alerting`` (fire a no-data alert), ``keep_state``
    no_data: Literal["ok", "alerting", "keep_state"] = "ok"
    #: the query fails: ``keep_state`` (never resolves) or ``alerting`` (fire an error alert)
    on_error: Literal["keep_state", "alerting"] = "keep_state"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("labels")
    @classmethod
    def _reserved(cls, v: dict[str, str]) -> dict[str, str]:
        for k in ("alertname", "severity"):
            if k in v:
                raise ValueError(f"label {k!r} is set by the engine; use the rule's name/severity")
        return v


class ThresholdRule(_RuleBase):
    """Fires when a signal crosses a static threshold (with hysteresis if asked)."""

    type: Literal["threshold"] = "threshold"
    query: SignalSpec
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    #: once firing, stay firing until the value is back beyond this (default: threshold)
    recovery_threshold: float | None = None

    @field_validator("recovery_threshold")
    @classmethod
    def _recovery_side(cls, r: float | None, info: ValidationInfo) -> float | None:
        op, threshold = info.data.get("op"), info.data.get("threshold")
        if r is not None and op is not None and threshold is not None:
            above = op in (">", ">=")
            if (above and r > threshold) or (not above and r < threshold):
                raise ValueError(
                    f"recovery_threshold {r} must be on the healthy side of threshold "
                    f"{threshold} (op {op!r})"
                )
        return r


class BaselineRule(_RuleBase):
    """Fires when a signal departs from its own history (same window earlier)."""

    type: Literal["baseline"] = "baseline"
    query: SignalSpec
    #: compare with the same window this long ago (e.g. 1d, 7d)
    offset: Duration = timedelta(days=1)
    #: instead of one offset: the median of the same window over the last N days
    median_of_days: int | None = Field(default=None, ge=2, le=60)
    #: ``above``: value > factor * baseline; ``below``: value < baseline / factor
    direction: Literal["above", "below"] = "above"
    factor: float = Field(default=2.0, gt=1.0)
    #: absolute floor: never fire while the value is below it (above) / above it (below)
    floor: float | None = None
    #: fewer samples than this in the baseline window means "insufficient baseline"
    min_baseline_samples: int = Field(default=10, ge=1)


class BurnRateTier(_Model):
    """One long/short window pair of a multi-window multi-burn-rate alert."""

    long: Duration
    short: Duration
    factor: float = Field(gt=0)
    severity: Severity = Severity.CRITICAL

    @field_validator("short")
    @classmethod
    def _shorter(cls, v: timedelta, info: ValidationInfo) -> timedelta:
        long = info.data.get("long")
        if long is not None and v >= long:
            raise ValueError(f"tier short window {v} must be shorter than long {long}")
        return v


#: The SRE workbook's table for a 30-day SLO: 2% of the budget in 1h, 5% in 6h, 10% in 3d.
DEFAULT_TIERS: tuple[BurnRateTier, ...] = (
    BurnRateTier(long=timedelta(hours=1), short=timedelta(minutes=5), factor=14.4),
    BurnRateTier(long=timedelta(hours=6), short=timedelta(minutes=30), factor=6.0),
    BurnRateTier(
        long=timedelta(days=3), short=timedelta(hours=6), factor=1.0, severity=Severity.WARNING
    ),
)


class BurnRateRule(_RuleBase):
    """Multi-window multi-burn-rate SLO alert on errors, latency or quality."""

    type: Literal["burn_rate"] = "burn_rate"
    sli: Literal["errors", "latency", "quality"]
    #: the SLO, e.g. 0.999 = 99.9% of requests good
    objective: float = Field(gt=0.0, lt=1.0)
    period: Duration = timedelta(days=30)
    #: latency SLI: a request slower than this is bad
    latency_threshold_ms: float | None = Field(default=None, validate_default=True)
    #: quality SLI: the scorer whose failures are bad, and its pass threshold
    scorer: str | None = None
    pass_threshold: float = 0.5
    group_by: tuple[str, ...] = ()
    where: dict[str, str] = Field(default_factory=dict)
    min_samples: int = Field(default=1, ge=0)
    tiers: tuple[BurnRateTier, ...] = DEFAULT_TIERS

    @field_validator("group_by", mode="before")
    @classmethod
    def _labels_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("latency_threshold_ms")
    @classmethod
    def _latency(cls, v: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("sli") == "latency" and v is None:
            raise ValueError("sli latency needs latency_threshold_ms (a slower request is bad)")
        return v

    @field_validator("group_by", "where")
    @classmethod
    def _labels(cls, v: Any, info: ValidationInfo) -> Any:
        sli = info.data.get("sli")
        return _allowed_labels(v, "scorer_fail_rate" if sli == "quality" else "error_rate")

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: tuple[BurnRateTier, ...]) -> tuple[BurnRateTier, ...]:
        if not v:
            raise ValueError("tiers must not be empty")
        return v

    @property
    def error_budget(self) -> float:
        return 1.0 - self.objective

    def query_for(self, window: timedelta) -> SignalSpec:
        """The bad-event fraction over ``window`` as a signal query."""
        common = {
            "window": window,
            "group_by": self.group_by,
            "where": self.where,
            "min_samples": self.min_samples,
        }
        if self.sli == "errors":
            return SignalSpec(signal="error_rate", **common)
        if self.sli == "latency":
            return SignalSpec(
                signal="latency_over", latency_threshold_ms=self.latency_threshold_ms, **common
            )
        return SignalSpec(
            signal="scorer_fail_rate",
            scorer=self.scorer,
            pass_threshold=self.pass_threshold,
            **common,
        )


Rule = Annotated[ThresholdRule | BaselineRule | BurnRateRule, Field(discriminator="type")]
_RULE = TypeAdapter(Rule)


def budget_consumed(burn_rate: float, window: timedelta, period: timedelta) -> float:
    """Fraction of the error budget a constant ``burn_rate`` uses up in ``window``."""
    return burn_rate * window / period


def burn_rate_for_budget(fraction: float, window: timedelta, period: timedelta) -> float:
    """The burn rate that consumes ``fraction`` of the budget in ``window`` (workbook table)."""
    return fraction * period / window


def _field_path(loc: Sequence[Any]) -> str:
    """``('query', 'group_by', 0)`` -> ``query.group_by[0]``."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def describe_errors(err: ValidationError) -> list[str]:
    """One ``field 'path': message`` per error of a rule, with the exact field path."""
    parts = []
    for e in err.errors():
        loc = list(e["loc"])
        # The discriminated union adds the rule type as the first location element.
        if loc and loc[0] in ("threshold", "baseline", "burn_rate"):
            loc = loc[1:]
        field = _field_path(loc) or "(rule)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = "required; add it"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field = "type"
            msg = "must be one of threshold, baseline, burn_rate"
        parts.append(f"field {field!r}: {msg}")
    return parts


def _describe_error(err: ValidationError) -> str:
    return "; ".join(describe_errors(err))


def _parse_rules(
    items: Any, source: str
) -> tuple[list[ThresholdRule | BaselineRule | BurnRateRule], list[str]]:
    """The valid rules and one message per error of every rule (none stops at the first)."""
    if items is None:
        return [], []
    if not isinstance(items, list | tuple):
        return [], [f"{source}: 'rules' must be a list of rules, got {type(items).__name__}"]
    rules, errors = [], []
    seen: dict[str, int] = {}
    for i, raw in enumerate(items):
        label = f"rule #{i + 1}"
        if isinstance(raw, Mapping) and raw.get("name"):
            label = f"rule {raw['name']!r} (#{i + 1})"
        if isinstance(raw, ThresholdRule | BaselineRule | BurnRateRule):
            rule = raw
        elif not isinstance(raw, Mapping):
            errors.append(f"{source}: {label}: must be a mapping with name, type, ...")
            continue
        else:
            data = dict(raw)
            data.setdefault("type", "threshold")
            try:
                rule = _RULE.validate_python(data)
            except ValidationError as e:
                errors.extend(f"{source}: {label}: {m}" for m in describe_errors(e))
                continue
        if rule.name in seen:
            errors.append(
                f"{source}: rule {rule.name!r} (#{i + 1}) has the same name as rule "
                f"#{seen[rule.name] + 1}; rule names must be unique"
            )
            continue
        seen[rule.name] = i
        rules.append(rule)
    return rules, errors


def parse_rules(items: Any, *, source: str) -> list[ThresholdRule | BaselineRule | BurnRateRule]:
    """Validate a list of rule mappings; the error lists every error of every rule, one per
    line, each naming the source, the rule and the field."""
    rules, errors = _parse_rules(items, source)
    if errors:
        raise ConfigError("\n".join(errors))
    return rules


def load_rule_file(path: str | Path) -> list[ThresholdRule | BaselineRule | BurnRateRule]:
    """Rules from a YAML file holding ``rules: [...]`` (or a bare list)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: rule file not found; fix alerting.rule_files")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    errors = []
    if isinstance(data, Mapping):
        extra = set(data) - {"rules", "description", "name"}
        if extra:
            errors.append(f"{p}: unknown top-level key(s) {sorted(extra)}; expected 'rules'")
        data = data.get("rules")
    rules, rule_errors = _parse_rules(data, str(p))
    if errors or rule_errors:
        raise ConfigError("\n".join(errors + rule_errors))
    return rules


PACKS_DIR = Path(__file__).resolve().parent / "packs"


def available_packs() -> list[str]:
    return sorted(p.stem for p in PACKS_DIR.glob("*.yaml"))


class PackRef(_Model):
    """Enable a ready-made rule pack and tune it without copying it."""

    name: str
    #: per rule name: fields to replace (e.g. ``{threshold: 8000, for: 5m}``)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    disable: tuple[str, ...] = ()
    #: labels added to every rule of the pack (e.g. team, environment filter)
    labels: dict[str, str] = Field(default_factory=dict)
    #: ``where`` filter added to every rule's query (e.g. ``{environment: prod}``)
    where: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _exists(cls, v: str) -> str:
        if v not in available_packs():
            raise ValueError(f"unknown rule pack {v!r}; available: {', '.join(available_packs())}")
        return v


def load_pack(
    ref: PackRef | str | Mapping[str, Any],
) -> list[ThresholdRule | BaselineRule | BurnRateRule]:
    """The rules of a pack with the ref's overrides, disabled rules, labels and filter."""
    if isinstance(ref, str):
        ref = PackRef(name=ref)
    elif not isinstance(ref, PackRef):
        try:
            ref = PackRef.model_validate(ref)
        except ValidationError as e:
            raise ConfigError(f"alerting.packs: {_describe_error(e)}") from None
    path = PACKS_DIR / f"{ref.name}.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]
    names = {r["name"] for r in raw}
    for unknown in (set(ref.overrides) | set(ref.disable)) - names:
        raise ConfigError(
            f"rule pack {ref.name!r}: no rule named {unknown!r} to override or disable; "
            f"its rules are {', '.join(sorted(names))}"
        )
    items = []
    for r in raw:
        if r["name"] in ref.disable:
            continue
        r = merge(r, ref.overrides.get(r["name"], {}))
        if ref.labels:
            r["labels"] = {**r.get("labels", {}), **ref.labels}
        if ref.where:
            if "query" in r:
                r["query"] = {**r["query"], "where": {**r["query"].get("where", {}), **ref.where}}
            else:
                r["where"] = {**r.get("where", {}), **ref.where}
        items.append(r)
    return parse_rules(items, source=f"rule pack {ref.name!r}")


def collect_rules(
    inline: Sequence[Any],
    rule_files: Iterable[str | Path] = (),
    packs: Iterable[PackRef | str | Mapping[str, Any]] = (),
    *,
    base_dir: Path | None = None,
    include_disabled: bool = False,
) -> list[ThresholdRule | BaselineRule | BurnRateRule]:
    """All rules of a config: packs, then rule files (globs allowed), then inline rules.

    Every error of every pack, file and rule is reported (one per line), not the first."""
    rules: list[ThresholdRule | BaselineRule | BurnRateRule] = []
    errors: list[str] = []

    def add(load: Any, *args: Any) -> None:
        try:
            rules.extend(load(*args))
        except ConfigError as e:
            errors.extend(str(e).splitlines())

    for ref in packs:
        add(load_pack, ref)
    for pattern in rule_files:
        pat = Path(pattern)
        if not pat.is_absolute() and base_dir is not None:
            pat = base_dir / pat
        if any(c in str(pat) for c in "*?["):
            matches = sorted(pat.parent.glob(pat.name))
            if not matches:
                errors.append(f"alerting.rule_files: {pattern!r} matches no file")
        else:
            matches = [pat]
        for m in matches:
            add(load_rule_file, m)
    add(lambda: parse_rules(list(inline), source="alerting.rules"))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            errors.append(
                f"rule {r.name!r} is defined twice (packs, rule files, inline rules); "
                "rename one or disable the pack's rule"
            )
        seen.add(r.name)
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    return rules if include_disabled else [r for r in rules if r.enabled]
