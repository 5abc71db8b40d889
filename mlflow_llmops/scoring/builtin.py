"""Our code scorers: deterministic checks that need no LLM.

Each is a factory returning an MLflow ``Scorer`` (the same object ``@scorer``
makes), so they also work in ``mlflow.genai.evaluate``. Every one returns a
``Feedback`` whose value is ``True`` when the answer is fine, with a rationale
that says why (never the sensitive text itself). A scorer that cannot judge a
trace (no token usage recorded, no price) returns ``None``: no assessment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mlflow.entities import Feedback
from mlflow.genai.scorers import Scorer, scorer


def answer_text(outputs: Any) -> str:
    """The assistant text of an output: a string, an OpenAI chat response, or a dict."""
    if outputs is None:
        return ""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, dict):
        choices = outputs.get("choices")
        if isinstance(choices, list) and choices:
            first = choices[0] or {}
            msg = first.get("message") or first.get("delta") or {}
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                return content
            if isinstance(first.get("text"), str):
                return first["text"]
        for key in ("content", "answer", "output", "response", "text", "result"):
            if isinstance(outputs.get(key), str):
                return outputs[key]
    if isinstance(outputs, list) and outputs and isinstance(outputs[-1], dict):
        return answer_text(outputs[-1])
    try:
        return json.dumps(outputs, default=str)
    except TypeError:
        return str(outputs)


def question_text(inputs: Any) -> str:
    """The user's question of an input: a string, chat messages, or a dict."""
    if inputs is None:
        return ""
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, dict):
        messages = inputs.get("messages")
        if isinstance(messages, list):
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if users:
                c = users[-1].get("content")
                return c if isinstance(c, str) else json.dumps(c, default=str)
        for key in ("question", "query", "prompt", "input", "text"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        if len(inputs) == 1:
            return question_text(next(iter(inputs.values())))
    return json.dumps(inputs, default=str)


#: MLflow's ``timeout`` for our scorers that only look at the trace in memory with our own
#: patterns (bounded work, no I/O): none. With its default (300 s) ``Scorer.run`` starts a
#: thread for every call, about 0.1 ms, five times what these checks cost. ``cost_budget``
#: (it may load prices) and ``refusal`` with the user's own patterns keep MLflow's default.
NO_TIMEOUT = 0


def _ok(value: bool, rationale: str) -> Feedback:
    return Feedback(value=value, rationale=rationale)


def latency_budget(max_ms: float) -> Scorer:
    """Pass when the whole trace took at most ``max_ms`` milliseconds."""
    if max_ms <= 0:
        raise ValueError(f"latency_budget: max_ms must be positive, got {max_ms}")

    @scorer(name="latency_budget", timeout=NO_TIMEOUT)
    def _latency(trace) -> Feedback | None:  # noqa: ANN001
        took = trace.info.execution_duration
        if took is None:
            return None
        return _ok(took <= max_ms, f"took {took} ms, budget {max_ms:g} ms")

    return _latency


def _trace_tokens(trace: Any) -> int | None:
    usage = trace.info.token_usage
    if usage and usage.get("total_tokens") is not None:
        return int(usage["total_tokens"])
    total, seen = 0, False
    for span in trace.data.spans:
        raw = span.attributes.get("mlflow.chat.tokenUsage")
        if raw:
            u = json.loads(raw) if isinstance(raw, str) else raw
            total += int(
                u.get("total_tokens") or u.get("input_tokens", 0) + u.get("output_tokens", 0)
            )
            seen = True
    return total if seen else None


def token_budget(max_tokens: int) -> Scorer:
    """Pass when the trace used at most ``max_tokens`` tokens (input + output)."""
    if max_tokens <= 0:
        raise ValueError(f"token_budget: max_tokens must be positive, got {max_tokens}")

    @scorer(name="token_budget", timeout=NO_TIMEOUT)
    def _tokens(trace) -> Feedback | None:  # noqa: ANN001
        used = _trace_tokens(trace)
        if used is None:
            return None
        return _ok(used <= max_tokens, f"used {used} tokens, budget {max_tokens}")

    return _tokens


def cost_budget(max_usd: float) -> Scorer:
    """Pass when the trace's LLM calls cost at most ``max_usd``, priced by our
    ``CostCalculator`` (falls back to MLflow's own cost); unpriced: no assessment."""
    if max_usd <= 0:
        raise ValueError(f"cost_budget: max_usd must be positive, got {max_usd}")
    state: dict[str, Any] = {}

    def calculator() -> Any:
        if "calc" not in state:
            try:
                from mlflow_llmops.pricing import CostCalculator

                state["calc"] = CostCalculator.default()
            except ImportError:
                state["calc"] = None
        return state["calc"]

    @scorer(name="cost_budget")
    def _cost(trace) -> Feedback | None:  # noqa: ANN001
        calc = calculator()
        total, priced = 0.0, False
        if calc is not None:
            for span in trace.data.spans:
                raw = span.attributes.get("mlflow.chat.tokenUsage")
                model = span.attributes.get("mlflow.llm.model")
                if not raw or not model:
                    continue
                r = calc.cost(
                    model=model,
                    provider=span.attributes.get("mlflow.llm.provider"),
                    usage=raw,
                    at=trace.info.timestamp_ms,
                )
                if r.total is None:
                    return None  # an unpriced call: the total is unknown, never $0
                total += float(r.total)
                priced = True
        if not priced:
            mlflow_cost = trace.info.cost
            if not mlflow_cost or mlflow_cost.get("total_cost") is None:
                return None
            total = float(mlflow_cost["total_cost"])
        return _ok(total <= max_usd, f"cost ${total:.6f}, budget ${max_usd:g}")

    return _cost


def json_validity() -> Scorer:
    """Pass when the answer is valid JSON (for structured-output endpoints)."""

    @scorer(name="json_validity", timeout=NO_TIMEOUT)
    def _json(outputs) -> Feedback:  # noqa: ANN001
        if isinstance(outputs, dict | list) and not (
            isinstance(outputs, dict) and "choices" in outputs
        ):
            return _ok(True, "output is a JSON object")
        text = answer_text(outputs).strip()
        fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
        if fence:
            text = fence.group(1)
        try:
            json.loads(text)
        except ValueError as e:
            return _ok(False, f"not valid JSON: {e.msg} at position {e.pos}")
        return _ok(True, "answer is valid JSON")

    return _json


_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<!\d)(?:\+\d{1,3}[ \-.]?)?(?:\(\d{2,4}\)[ \-.]?|\d{2,4}[ \-.])\d{3,4}[ \-.]\d{3,4}(?!\d)"
)
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){13,19}(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str) -> list[str]:
    """Kinds of personal data found in ``text`` (email, ssn, card, phone, iban)."""
    kinds = []
    if _EMAIL.search(text):
        kinds.append("email")
    if _SSN.search(text):
        kinds.append("ssn")
    rest = _SSN.sub(" ", text)
    for m in _CARD.finditer(rest):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn(digits):
            if "card" not in kinds:
                kinds.append("card")
        if len(re.sub(r"\D", "", m.group(0))) >= 14:  # card-like numbers are not phones
            rest = rest.replace(m.group(0), " ")
    if _PHONE.search(rest):
        kinds.append("phone")
    if _IBAN.search(text):
        kinds.append("iban")
    return kinds


def pii_leak(allow: list[str] | None = None) -> Scorer:
    """Pass when the answer contains no personal data (kinds in ``allow`` are ignored)."""
    allowed = set(allow or [])

    @scorer(name="pii_leak", timeout=NO_TIMEOUT)
    def _pii(outputs) -> Feedback:  # noqa: ANN001
        kinds = [k for k in find_pii(answer_text(outputs)) if k not in allowed]
        if kinds:
            return _ok(False, "answer contains: " + ", ".join(kinds))
        return _ok(True, "no personal data found")

    return _pii


_REFUSALS = (
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|cannot|won't|am unable|"
    r"'m unable)",
    r"\bI (?:can(?:'|no)t|cannot|won't|am not able to|'m not able to) (?:help|assist|provide|"
    r"comply|do that|answer)",
    r"\bas an AI(?: language model)?,? I",
    r"\bI(?:'m| am) unable to (?:help|assist|provide|comply)",
    r"\bI must decline\b",
)


def refusal(patterns: list[str] | None = None) -> Scorer:
    """Pass when the answer is not a refusal (English phrases; add your own ``patterns``)."""
    compiled = [re.compile(p, re.I) for p in (*_REFUSALS, *(patterns or []))]

    @scorer(name="refusal", timeout=None if patterns else NO_TIMEOUT)
    def _refusal(outputs) -> Feedback:  # noqa: ANN001
        text = answer_text(outputs)
        for p in compiled:
            m = p.search(text)
            if m:
                return _ok(False, f"refusal phrase: {m.group(0)[:80]!r}")
        return _ok(True, "no refusal phrase")

    return _refusal


def empty_answer(min_chars: int = 1) -> Scorer:
    """Pass when the answer has at least ``min_chars`` non-blank characters."""

    @scorer(name="empty_answer", timeout=NO_TIMEOUT)
    def _empty(outputs) -> Feedback:  # noqa: ANN001
        n = len(answer_text(outputs).strip())
        return _ok(n >= min_chars, f"{n} characters")

    return _empty


#: ``builtin:<name>`` references resolve here.
BUILTIN_SCORERS: dict[str, Callable[..., Scorer]] = {
    "latency_budget": latency_budget,
    "token_budget": token_budget,
    "cost_budget": cost_budget,
    "json_validity": json_validity,
    "pii_leak": pii_leak,
    "refusal": refusal,
    "empty_answer": empty_answer,
}
