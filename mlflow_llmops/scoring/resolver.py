"""Turn a registered ``ScorerSpec`` into something that scores one MLflow trace."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Feedback, Trace

from mlflow_llmops.scoring.builtin import BUILTIN_SCORERS, answer_text, question_text
from mlflow_llmops.scoring.judge import JudgeSpec, LlmJudge
from mlflow_llmops.scoring.ratelimit import RateLimiter
from mlflow_llmops.scoring.registry import ScorerRegistryError, ScorerSpec


@dataclass
class ScoreOutput:
    """What one scorer said about one trace (empty ``feedbacks``: not applicable)."""

    feedbacks: list[Feedback]
    cost_usd: float | None = None
    extra_metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ResolvedScorer:
    """A runnable scorer: ``score(trace)`` may raise; the runner records the error."""

    spec: ScorerSpec
    source_type: str  # CODE | LLM_JUDGE
    score: Callable[[Trace], ScoreOutput]
    #: Expected USD to score one trace from its request/response previews (judges only).
    estimate: Callable[[str, str], float | None] | None = None
    pass_threshold: float = 0.5


def root_io(trace: Trace) -> tuple[Any, Any]:
    """Inputs and outputs of the trace's root span (what evaluate() passes to scorers)."""
    spans = trace.data.spans
    root = next((s for s in spans if s.parent_id is None), spans[0] if spans else None)
    if root is None:
        return _loads(trace.info.request_preview), _loads(trace.info.response_preview)
    return root.inputs, root.outputs


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def expectations_of(trace: Trace) -> dict[str, Any] | None:
    out = {}
    for a in trace.info.assessments or []:
        if getattr(a, "expectation", None) is not None:
            out[a.name] = a.expectation.value
    return out or None


def _normalise(result: Any) -> list[Feedback]:
    if result is None:
        return []
    if isinstance(result, list):
        return [r for r in result if r is not None]
    if isinstance(result, Feedback):
        return [result]
    if isinstance(result, bool | int | float | str):
        return [Feedback(value=result)]
    if hasattr(result, "value") and hasattr(result, "name"):  # a legacy Assessment
        return [
            Feedback(
                name=result.name, value=result.value, rationale=getattr(result, "rationale", None)
            )
        ]
    raise TypeError(
        f"scorer returned {type(result).__name__}; expected Feedback, bool, number or str"
    )


def _mlflow_scorer(obj: Any, spec: ScorerSpec) -> Any:
    from mlflow.genai.scorers import Scorer, scorer

    if isinstance(obj, Scorer):
        if spec.params:
            raise ScorerRegistryError(
                f"scorer {spec.name!r}: {spec.ref} is already a scorer object, so it takes no "
                "params; remove them or point ref at a factory function"
            )
        return obj
    if spec.params or inspect.isclass(obj):
        made = obj(**dict(spec.params))
        if isinstance(made, Scorer):
            return made
        if callable(made):
            return scorer(made, name=spec.name)
        raise ScorerRegistryError(
            f"scorer {spec.name!r}: {spec.ref}(**params) returned {type(made).__name__}, "
            "not a scorer"
        )
    if callable(obj):
        return scorer(obj, name=spec.name)
    raise ScorerRegistryError(f"scorer {spec.name!r}: {spec.ref} is not callable")


def _is_llm_scorer(obj: Any) -> bool:
    from mlflow.genai.judges.base import Judge

    return isinstance(obj, Judge)


def resolve(
    spec: ScorerSpec,
    *,
    judge_defaults: Mapping[str, Any] | None = None,
    limiter: RateLimiter | None = None,
    calculator: Any = None,
) -> ResolvedScorer:
    """Import and build the scorer named by ``spec.ref``; errors say what to fix."""
    threshold = float(spec.params.get("pass_threshold", 0.5)) if spec.kind == "judge" else 0.5
    if spec.kind == "judge":
        jspec = JudgeSpec.from_params(dict(spec.params), judge_defaults)
        judge = LlmJudge(jspec, limiter=limiter, calculator=calculator)

        def score_judge(trace: Trace) -> ScoreOutput:
            inputs, outputs = root_io(trace)
            exp = expectations_of(trace)
            r = judge.judge(
                question_text(inputs),
                answer_text(outputs),
                json.dumps(exp, default=str) if exp else "",
            )
            meta = {f"llmops.judge.{k}": f"{v:g}" for k, v in r.scores.items()}
            meta.update(
                {
                    "mlflow.assessment.judgeInputTokens": str(r.input_tokens),
                    "mlflow.assessment.judgeOutputTokens": str(r.output_tokens),
                    "llmops.judge.model": jspec.model,
                    "llmops.judge.cost_status": r.cost_status,
                }
            )
            if r.cost_usd is not None:
                meta["mlflow.assessment.judgeCost"] = f"{r.cost_usd:.10f}"
            return ScoreOutput([Feedback(value=r.value, rationale=r.rationale)], r.cost_usd, meta)

        def estimate(inputs: str, outputs: str) -> float | None:
            return judge.estimate_cost(inputs, outputs)

        return ResolvedScorer(spec, "LLM_JUDGE", score_judge, estimate, jspec.pass_threshold)

    prefix, _, target = spec.ref.partition(":")
    if spec.kind == "builtin":
        factory = BUILTIN_SCORERS.get(target)
        if factory is None:
            raise ScorerRegistryError(
                f"scorer {spec.name!r}: no built-in {target!r}; choose one of "
                f"{sorted(BUILTIN_SCORERS)}"
            )
        try:
            obj = factory(**dict(spec.params))
        except TypeError as e:
            raise ScorerRegistryError(f"scorer {spec.name!r}: params for {target}: {e}") from None
    elif spec.kind == "mlflow":
        import mlflow.genai.scorers as mlflow_scorers

        cls = getattr(mlflow_scorers, target, None)
        if cls is None:
            raise ScorerRegistryError(
                f"scorer {spec.name!r}: mlflow.genai.scorers has no {target!r} "
                "(e.g. Safety, RelevanceToQuery, Correctness, Guidelines)"
            )
        params = dict(spec.params)
        params.pop("pass_threshold", None)
        obj = cls(**params)
    else:
        try:
            module = importlib.import_module(prefix)
        except ImportError as e:
            raise ScorerRegistryError(
                f"scorer {spec.name!r}: cannot import module {prefix!r} of ref {spec.ref!r}: {e}"
            ) from None
        obj = module
        for part in target.split("."):
            if not hasattr(obj, part):
                raise ScorerRegistryError(
                    f"scorer {spec.name!r}: module {prefix!r} has no {target!r}"
                )
            obj = getattr(obj, part)
        obj = _mlflow_scorer(obj, spec)
    threshold = (
        float(spec.params.get("pass_threshold", threshold)) if spec.kind == "code" else threshold
    )
    source = "LLM_JUDGE" if _is_llm_scorer(obj) else "CODE"

    def score_code(trace: Trace) -> ScoreOutput:
        inputs, outputs = root_io(trace)
        result = obj.run(
            inputs=inputs, outputs=outputs, expectations=expectations_of(trace), trace=trace
        )
        return ScoreOutput(_normalise(result))

    return ResolvedScorer(spec, source, score_code, None, threshold)
