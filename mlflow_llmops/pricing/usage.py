"""One canonical token vector from every usage shape we meet.

Why one vector: providers disagree on whether cached tokens sit inside the
input count. Pricing needs disjoint buckets, so everything is converted to
:class:`TokenUsage`, whose buckets never overlap (except ``reasoning``, a
subset of ``output`` kept for reporting).

Conventions, checked in MLflow 3.17.2's source:

* ``mlflow.chat.tokenUsage`` (``SpanAttributeKey.CHAT_USAGE``): ``input_tokens``
  INCLUDES cache reads and cache writes for every provider. The Anthropic
  autolog (``mlflow/anthropic/autolog.py:_parse_usage``) and the gateway add
  ``cache_read_input_tokens + cache_creation_input_tokens`` to Anthropic's
  ``input_tokens`` before storing it, and so do the Bedrock autolog
  (``mlflow/bedrock/utils.py``) and the gateway
  (``gateway/providers/anthropic.py:_normalize_anthropic_input_tokens``);
  OpenAI and Gemini report cached tokens inside the prompt count already.
  ``cache_creation_input_tokens_above_1hr``
  is a subset of ``cache_creation_input_tokens``. ``output_tokens`` includes
  reasoning tokens.
* OpenTelemetry GenAI semconv (``gen_ai.usage.*``) and OpenAI's own usage
  (``prompt_tokens`` with ``prompt_tokens_details.cached_tokens``): cached
  tokens are inside the input count.
* Anthropic's native API usage: ``input_tokens`` EXCLUDES cache reads and
  writes (use :meth:`TokenUsage.from_provider_usage` with ``"anthropic"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mlflow_llmops.errors import LlmopsError

_INT_ONLY = {int}


class UsageError(LlmopsError, ValueError):
    """A usage record cannot be read as token counts."""


BUCKETS: tuple[str, ...] = (
    "input",
    "cache_read",
    "cache_write_5m",
    "cache_write_1h",
    "output",
    "audio_input",
    "audio_output",
    "image_input",
)
"""Disjoint priced buckets, in the order used everywhere (breakdown, frames)."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Disjoint token counts of one LLM call.

    ``input`` is uncached text input; ``output`` includes reasoning;
    ``reasoning`` is the part of ``output`` spent reasoning (reported, and priced
    separately only when a price entry has a reasoning rate).
    """

    input: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    reasoning: int = 0
    audio_input: int = 0
    audio_output: int = 0
    image_input: int = 0

    def __post_init__(self) -> None:
        vals = (
            self.input,
            self.cache_read,
            self.cache_write_5m,
            self.cache_write_1h,
            self.output,
            self.reasoning,
            self.audio_input,
            self.audio_output,
            self.image_input,
        )
        if set(map(type, vals)) != _INT_ONLY or min(vals) < 0:
            for name in _FIELD_NAMES:
                v = getattr(self, name)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise UsageError(
                        f"token count {name!r} must be a non-negative integer, got {v!r}"
                    )
        if self.reasoning > self.output:
            raise UsageError(
                f"reasoning tokens ({self.reasoning}) cannot exceed output tokens ({self.output})"
            )

    @property
    def prompt_tokens(self) -> int:
        """Every input token, cached or not: what long-context thresholds compare."""
        return (
            self.input
            + self.cache_read
            + self.cache_write_5m
            + self.cache_write_1h
            + self.audio_input
            + self.image_input
        )

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output + self.audio_output

    def is_empty(self) -> bool:
        return self.total_tokens == 0

    # -- constructors -----------------------------------------------------
    @classmethod
    def from_inclusive(
        cls,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        reasoning: int = 0,
        audio_input: int = 0,
        audio_output: int = 0,
        image_input: int = 0,
    ) -> TokenUsage:
        """From counts where ``input_tokens`` includes cache reads/writes and media tokens.

        ``cache_write_1h`` is a subset of ``cache_write``; ``audio_output`` a subset
        of ``output_tokens``. Inconsistent counts (parts larger than the whole) are
        an error rather than silently clamped.
        """
        cache_write_1h = min(cache_write_1h, cache_write) if cache_write else cache_write_1h
        cache_write = max(cache_write, cache_write_1h)
        parts = cache_read + cache_write + audio_input + image_input
        if parts > input_tokens:
            raise UsageError(
                f"input_tokens ({input_tokens}) is smaller than its cached/media parts "
                f"(cache read {cache_read} + cache write {cache_write} + audio {audio_input} "
                f"+ image {image_input}); the usage record is inconsistent"
            )
        if audio_output > output_tokens:
            raise UsageError(
                f"output_tokens ({output_tokens}) is smaller than audio output ({audio_output})"
            )
        return cls(
            input=input_tokens - parts,
            cache_read=cache_read,
            cache_write_5m=cache_write - cache_write_1h,
            cache_write_1h=cache_write_1h,
            output=output_tokens - audio_output,
            reasoning=min(reasoning, output_tokens - audio_output),
            audio_input=audio_input,
            audio_output=audio_output,
            image_input=image_input,
        )

    @classmethod
    def from_mlflow(cls, usage: Mapping[str, Any] | str) -> TokenUsage:
        """From MLflow's ``mlflow.chat.tokenUsage`` (a dict or its JSON text).

        Also accepts the ``gen_ai.usage.reasoning.output_tokens`` key that our
        tracing adds next to it.
        """
        if isinstance(usage, str):
            try:
                usage = json.loads(usage)
            except json.JSONDecodeError as e:
                raise UsageError(f"token usage is not valid JSON: {e}") from None
        if type(usage) is not dict and not isinstance(usage, Mapping):
            raise UsageError(f"token usage must be a mapping, got {type(usage).__name__}")
        fast = _from_mlflow_fast(usage, cls)
        if fast is not None:
            return fast
        return cls.from_inclusive(
            input_tokens=_int(usage, "input_tokens"),
            output_tokens=_int(usage, "output_tokens"),
            cache_read=_int(usage, "cache_read_input_tokens"),
            cache_write=_int(usage, "cache_creation_input_tokens"),
            cache_write_1h=_int(usage, "cache_creation_input_tokens_above_1hr"),
            reasoning=_int(usage, "reasoning_tokens")
            or _int(usage, "gen_ai.usage.reasoning.output_tokens"),
        )

    @classmethod
    def from_otel(cls, attributes: Mapping[str, Any]) -> TokenUsage:
        """From OpenTelemetry GenAI semconv span attributes (cached inside input)."""
        return cls.from_inclusive(
            input_tokens=_int(attributes, "gen_ai.usage.input_tokens"),
            output_tokens=_int(attributes, "gen_ai.usage.output_tokens"),
            cache_read=_int(attributes, "gen_ai.usage.cache_read.input_tokens"),
            cache_write=_int(attributes, "gen_ai.usage.cache_creation.input_tokens"),
            reasoning=_int(attributes, "gen_ai.usage.reasoning.output_tokens"),
        )

    @classmethod
    def from_provider_usage(cls, provider: str, usage: Any) -> TokenUsage:
        """From a provider SDK's native usage object or dict, with that provider's rule.

        OpenAI (and OpenAI-compatible): cached tokens inside ``prompt_tokens``;
        Anthropic: cache reads and writes outside ``input_tokens``.
        """
        u = _as_mapping(usage)
        p = (provider or "").lower()
        if p in ("anthropic", "bedrock", "vertex_ai") and "input_tokens" in u:
            cache_read = _int(u, "cache_read_input_tokens")
            cache_write = _int(u, "cache_creation_input_tokens")
            detail = _as_mapping(u.get("cache_creation") or {})
            one_hour = _int(detail, "ephemeral_1h_input_tokens")
            return cls(
                input=_int(u, "input_tokens"),
                cache_read=cache_read,
                cache_write_5m=max(cache_write - one_hour, 0),
                cache_write_1h=min(one_hour, cache_write) if cache_write else one_hour,
                output=_int(u, "output_tokens"),
            )
        if "prompt_tokens" in u or "completion_tokens" in u:
            pd_ = _as_mapping(u.get("prompt_tokens_details") or {})
            cd = _as_mapping(u.get("completion_tokens_details") or {})
            return cls.from_inclusive(
                input_tokens=_int(u, "prompt_tokens"),
                output_tokens=_int(u, "completion_tokens"),
                cache_read=_int(pd_, "cached_tokens"),
                reasoning=_int(cd, "reasoning_tokens"),
                audio_input=_int(pd_, "audio_tokens"),
                audio_output=_int(cd, "audio_tokens"),
            )
        if "input_tokens" in u:  # OpenAI Responses API shape
            idt = _as_mapping(u.get("input_tokens_details") or {})
            odt = _as_mapping(u.get("output_tokens_details") or {})
            return cls.from_inclusive(
                input_tokens=_int(u, "input_tokens"),
                output_tokens=_int(u, "output_tokens"),
                cache_read=_int(idt, "cached_tokens") or _int(u, "cache_read_input_tokens"),
                cache_write=_int(u, "cache_creation_input_tokens"),
                reasoning=_int(odt, "reasoning_tokens"),
            )
        raise UsageError(f"unrecognised {provider!r} usage shape with keys {sorted(u)}")


_FIELD_NAMES = tuple(f.name for f in fields(TokenUsage))


def _from_mlflow_fast(usage: Mapping[str, Any], cls: type[TokenUsage]) -> TokenUsage | None:
    """``from_mlflow`` for the common record: plain non-negative ``int`` counts whose
    cached parts fit in the input. None: take the general path (conversions, errors)."""
    g = usage.get
    it = g("input_tokens") or 0
    ot = g("output_tokens") or 0
    cr = g("cache_read_input_tokens") or 0
    cw = g("cache_creation_input_tokens") or 0
    c1 = g("cache_creation_input_tokens_above_1hr") or 0
    rs = g("reasoning_tokens") or g("gen_ai.usage.reasoning.output_tokens") or 0
    if not (
        type(it) is int
        and type(ot) is int
        and type(cr) is int
        and type(cw) is int
        and type(c1) is int
        and type(rs) is int
        and it >= 0
        and ot >= 0
        and cr >= 0
        and cw >= 0
        and c1 >= 0
        and rs >= 0
    ):
        return None
    if cw:
        if c1 > cw:
            c1 = cw
    else:
        cw = c1
    if cr + cw > it:
        return None
    if rs > ot:
        rs = ot
    if cls is TokenUsage:  # counts checked above: skip the re-validation
        return _CheckedUsage(it - cr - cw, cr, cw - c1, c1, ot, rs)
    return cls(it - cr - cw, cr, cw - c1, c1, ot, rs)


class _CheckedUsage:
    """``_CheckedUsage(...)`` returns a real :class:`TokenUsage` from text-token counts
    the caller has already checked (non-negative ``int``, reasoning <= output).

    A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``
    and ``__post_init__`` validates again: several times the cost of the rest of
    ``from_mlflow`` on the pricing hot path. This twin has the same slots, so its
    instances are filled with plain attribute stores and then retagged as
    ``TokenUsage`` (``__class__`` assignment between identical slot layouts): the
    result is indistinguishable from ``TokenUsage(...)`` and just as immutable.
    """

    __slots__ = TokenUsage.__slots__

    def __init__(
        self,
        input: int,
        cache_read: int,
        cache_write_5m: int,
        cache_write_1h: int,
        output: int,
        reasoning: int,
    ) -> None:
        self.input = input
        self.cache_read = cache_read
        self.cache_write_5m = cache_write_5m
        self.cache_write_1h = cache_write_1h
        self.output = output
        self.reasoning = reasoning
        self.audio_input = 0
        self.audio_output = 0
        self.image_input = 0
        self.__class__ = TokenUsage  # type: ignore[assignment]


def coerce_usage(usage: TokenUsage | Mapping[str, Any] | str) -> TokenUsage:
    """Accept a :class:`TokenUsage`, MLflow's usage dict/JSON, or GenAI/OpenAI shapes."""
    if isinstance(usage, TokenUsage):
        return usage
    if type(usage) is dict and "input_tokens" in usage:
        if "input_tokens_details" in usage or "output_tokens_details" in usage:
            return TokenUsage.from_provider_usage("openai", usage)  # Responses API shape
        fast = _from_mlflow_fast(usage, TokenUsage)
        return fast if fast is not None else TokenUsage.from_mlflow(usage)
    if isinstance(usage, str):
        return TokenUsage.from_mlflow(usage)
    if not isinstance(usage, Mapping):
        raise UsageError(f"usage must be TokenUsage or a mapping, got {type(usage).__name__}")
    if any(k.startswith("gen_ai.usage.") for k in usage) and "input_tokens" not in usage:
        return TokenUsage.from_otel(usage)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return TokenUsage.from_provider_usage("openai", usage)
    if set(usage) & {f.name for f in fields(TokenUsage)} and not set(usage) & {
        "input_tokens",
        "output_tokens",
    }:
        return TokenUsage(**{k: _int(usage, k) for k in usage if k in TokenUsage.__slots__})
    return TokenUsage.from_mlflow(usage)


def usage_from_span_attributes(attributes: Mapping[str, Any]) -> TokenUsage | None:
    """The usage of one span from its (decoded) attributes, or None if it has none.

    Prefers MLflow's ``mlflow.chat.tokenUsage``; falls back to GenAI semconv keys.
    """
    raw = attributes.get("mlflow.chat.tokenUsage")
    if raw is not None:
        u = TokenUsage.from_mlflow(raw)
        reasoning = _int(attributes, "gen_ai.usage.reasoning.output_tokens")
        if reasoning and not u.reasoning:
            u = _replace_reasoning(u, reasoning)
        return u
    if any(k in attributes for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")):
        return TokenUsage.from_otel(attributes)
    return None


def _replace_reasoning(u: TokenUsage, reasoning: int) -> TokenUsage:
    return TokenUsage(
        input=u.input,
        cache_read=u.cache_read,
        cache_write_5m=u.cache_write_5m,
        cache_write_1h=u.cache_write_1h,
        output=u.output,
        reasoning=min(reasoning, u.output),
        audio_input=u.audio_input,
        audio_output=u.audio_output,
        image_input=u.image_input,
    )


def _as_mapping(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    raise UsageError(f"cannot read usage from {type(obj).__name__}")


def _int(m: Mapping[str, Any], key: str) -> int:
    v = m.get(key)
    if v is None:
        return 0
    if isinstance(v, bool):
        raise UsageError(f"token count {key!r} must be an integer, got {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise UsageError(f"token count {key!r} must not be negative, got {v}")
        return v
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    raise UsageError(f"token count {key!r} must be a non-negative integer, got {v!r}")
