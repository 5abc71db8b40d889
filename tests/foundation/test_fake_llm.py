import openai
import pytest

from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer, Fault


def _client(srv, **kw):
    return openai.OpenAI(base_url=srv.base_url, api_key="test", **kw)


def test_chat_completion_with_cached_and_reasoning_usage():
    with FakeLLMServer(FakeLLMConfig(cached_ratio=0.5, reasoning_tokens=7)) as srv:
        r = _client(srv).chat.completions.create(
            model="o3-mini", messages=[{"role": "user", "content": "hello there " * 20}]
        )
    assert "fake answer" in r.choices[0].message.content
    u = r.usage
    assert u.prompt_tokens > 0 and u.prompt_tokens_details.cached_tokens == u.prompt_tokens // 2
    assert u.completion_tokens_details.reasoning_tokens == 7
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_streaming_with_usage_chunk(fake_llm):
    stream = _client(fake_llm).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text.startswith("This is a fake answer")
    assert usage is not None and usage.completion_tokens > 0


def test_scripted_429_with_retry_after_then_success(fake_llm):
    fake_llm.script(Fault(status=429, retry_after=0.05))
    c = _client(fake_llm, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers["retry-after"] == "0.05"
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content
    assert [q.status for q in fake_llm.requests] == [429, 200]


def test_malformed_and_500(fake_llm):
    fake_llm.script(Fault(status=500), Fault(malformed=True))
    c = _client(fake_llm, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(Exception):  # noqa: B017 - the client's JSON error type varies by version
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def test_responder_and_latency():
    import time

    cfg = FakeLLMConfig(latency_s=0.2, responder=lambda req: '{"score": 0.9}')
    with FakeLLMServer(cfg) as srv:
        t = time.perf_counter()
        r = _client(srv).chat.completions.create(
            model="judge", messages=[{"role": "user", "content": "x"}]
        )
        assert time.perf_counter() - t >= 0.2
    assert r.choices[0].message.content == '{"score": 0.9}'
