"""Manual instrumentation for LLM clients MLflow does not autolog (like ``traceLLMCall``).

Records model, provider, token usage and time to first token in the attributes
MLflow reads for cost (``mlflow.llm.model``, ``mlflow.llm.provider``,
``mlflow.chat.tokenUsage``) plus ours (reasoning tokens, TTFT, service tier)::

    with llm_call(model="qwen-max", provider="dashscope", inputs={"messages": msgs}) as call:
        for chunk in client.stream(...):
            call.first_token()          # only the first call counts
            ...
        call.set_usage(input_tokens=812, output_tokens=96, cache_read_tokens=512)
        call.set_output(text)

It is also the way to trace Anthropic streams: MLflow's autolog makes no trace for
``messages.stream()`` and one without usage for ``messages.create(stream=True)``
(``call.set_usage_from_anthropic(stream.get_final_message().usage)``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlflow_llmops.core import keys

F = TypeVar("F", bound=Callable[..., Any])


class LlmCall:
    """The handle given inside ``llm_call``; all setters are optional."""

    def __init__(self, span: Any, model: str, provider: str) -> None:
        self.span = span
        self.model = model
        self.provider = provider
        self._t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.usage: dict[str, int] = {}
        self.reasoning_tokens: int | None = None
        self.service_tier: str | None = None

    def first_token(self) -> None:
        """Mark the arrival of the first streamed token (later calls are ignored)."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self._t0) * 1000.0

    def set_usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        reasoning_tokens: int | None = None,
        input_excludes_cache: bool = False,
        output_excludes_reasoning: bool = False,
    ) -> None:
        """Token usage as the provider reports it.

        MLflow counts cached tokens inside ``input_tokens`` and reasoning tokens inside
        ``output_tokens`` (OpenAI's convention). For providers that report them apart
        (Anthropic's input excludes cache reads/writes), pass the ``*_excludes_*`` flags.
        """
        for name, v in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cache_read_tokens", cache_read_tokens),
            ("cache_write_tokens", cache_write_tokens),
            ("cache_write_1h_tokens", cache_write_1h_tokens),
            ("reasoning_tokens", reasoning_tokens),
        ):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(
                    f"llm_call.set_usage: {name} must be a non-negative int, got {v!r}"
                )
        inp = input_tokens or 0
        out = output_tokens or 0
        if input_excludes_cache:
            inp += cache_read_tokens + cache_write_tokens + cache_write_1h_tokens
        if output_excludes_reasoning and reasoning_tokens:
            out += reasoning_tokens
        usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
        if cache_read_tokens:
            usage["cache_read_input_tokens"] = cache_read_tokens
        if cache_write_tokens:
            usage["cache_creation_input_tokens"] = cache_write_tokens
        if cache_write_1h_tokens:
            usage["cache_creation_input_tokens_above_1hr"] = cache_write_1h_tokens
        self.usage = usage
        self.reasoning_tokens = reasoning_tokens

    def set_usage_from_openai(self, usage: Any) -> None:
        """Usage from an OpenAI-style ``usage`` object or dict (chat or responses API)."""
        if usage is None:
            return
        u = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
        inp = u.get("prompt_tokens", u.get("input_tokens")) or 0
        out = u.get("completion_tokens", u.get("output_tokens")) or 0
        pd = u.get("prompt_tokens_details") or u.get("input_tokens_details") or {}
        cd = u.get("completion_tokens_details") or u.get("output_tokens_details") or {}
        self.set_usage(
            input_tokens=int(inp),
            output_tokens=int(out),
            cache_read_tokens=int(pd.get("cached_tokens") or 0),
            reasoning_tokens=int(cd["reasoning_tokens"]) if cd.get("reasoning_tokens") else None,
        )

    def set_usage_from_anthropic(self, usage: Any) -> None:
        """Usage from an Anthropic ``usage`` object or dict (a message, or the final message
        of a stream: ``stream.get_final_message().usage``). Anthropic's ``input_tokens``
        exclude cache reads and writes; MLflow's include them."""
        if usage is None:
            return
        u = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
        self.set_usage(
            input_tokens=int(u.get("input_tokens") or 0),
            output_tokens=int(u.get("output_tokens") or 0),
            cache_read_tokens=int(u.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(u.get("cache_creation_input_tokens") or 0),
            input_excludes_cache=True,
        )

    def set_output(self, output: Any) -> None:
        self.span.set_outputs(output)

    def set_service_tier(self, tier: str) -> None:
        self.service_tier = tier

    def _finish(self) -> None:
        attrs: dict[str, Any] = {keys.MODEL: self.model, keys.PROVIDER: self.provider}
        if self.usage:
            attrs[keys.TOKEN_USAGE] = self.usage
        if self.reasoning_tokens is not None:
            attrs[keys.REASONING_TOKENS] = self.reasoning_tokens
        if self.ttft_ms is not None:
            attrs[keys.TTFT_MS] = round(self.ttft_ms, 3)
        if self.service_tier is not None:
            attrs[keys.SERVICE_TIER] = self.service_tier
        self.span.set_attributes(attrs)


@contextlib.contextmanager
def _llm_call(
    model: str, provider: str, operation: str, name: str | None, inputs: Any
) -> Iterator[LlmCall]:
    import mlflow
    from mlflow.entities import SpanType

    if not model or not provider:
        raise ValueError(
            "llm_call: model and provider are required (e.g. model='gpt-4o-mini', "
            "provider='openai')"
        )
    span_type = SpanType.CHAT_MODEL if operation == "chat" else SpanType.LLM
    with mlflow.start_span(name=name or f"{provider}.{operation}", span_type=span_type) as span:
        if inputs is not None:
            span.set_inputs(inputs)
        call = LlmCall(span, model, provider)
        try:
            yield call
        finally:
            call._finish()


class llm_call:  # noqa: N801 - used like a function / decorator, as in the ARMS guide
    """Context manager or decorator recording one LLM call as an MLflow LLM span.

    As a decorator, the wrapped function's return value is the span output, and an
    OpenAI-style ``usage`` on it (attribute or key) is recorded automatically.
    """

    def __init__(
        self,
        *,
        model: str,
        provider: str,
        operation: str = "chat",
        name: str | None = None,
        inputs: Any = None,
    ) -> None:
        self._args = (model, provider, operation, name, inputs)
        self._cm: contextlib.AbstractContextManager[LlmCall] | None = None

    def __enter__(self) -> LlmCall:
        self._cm = _llm_call(*self._args)
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc)

    def __call__(self, fn: F) -> F:
        model, provider, operation, name, _ = self._args

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = inspect.signature(fn).bind_partial(*args, **kwargs)
                inputs: Any = dict(bound.arguments)
            except TypeError:
                inputs = {"args": args, "kwargs": kwargs}
            with _llm_call(model, provider, operation, name or fn.__name__, inputs) as call:
                result = fn(*args, **kwargs)
                usage = (
                    result.get("usage")
                    if isinstance(result, dict)
                    else getattr(result, "usage", None)
                )
                if usage is not None:
                    call.set_usage_from_openai(usage)
                call.set_output(result)
                return result

        return wrapper  # type: ignore[return-value]
