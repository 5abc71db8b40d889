"""Pure units: sampling decisions, redaction, config errors, the bounded queue."""

from __future__ import annotations

import json

import pytest

from mlflow_llmops.config import load_config
from mlflow_llmops.core import keys
from mlflow_llmops.errors import ConfigError
from mlflow_llmops.tracing.config import RedactionConfig, SamplingConfig, TracingConfig
from mlflow_llmops.tracing.export import RateLimitedLog, TraceQueue
from mlflow_llmops.tracing.redaction import Redactor, luhn_ok
from mlflow_llmops.tracing.sampling import Sampler

IDS = [(i * 0x9E3779B97F4A7C15) & ((1 << 128) - 1) for i in range(1, 4001)]


def decide(sampler: Sampler, tid: int, **kw):
    base = {"is_error": False, "duration_ms": 5, "metadata": {}, "tags": {}}
    return sampler.decide(trace_id_int=tid, **{**base, **kw})


def test_explicit_zero_keeps_no_head_sampled_trace_but_tail_rules_still_apply():
    s = Sampler(SamplingConfig(ratio=0.0, tail={"keep_errors": True, "slower_than_ms": 100}))
    assert not any(decide(s, t).keep for t in IDS)
    err = decide(s, IDS[0], is_error=True)
    assert (err.keep, err.reason, err.weight) == (True, "tail:error", "1")
    slow = decide(s, IDS[1], duration_ms=101)
    assert (slow.keep, slow.reason) == (True, "tail:slow")
    none = Sampler(SamplingConfig(ratio=0.0, tail={"keep_errors": False}))
    assert not decide(none, IDS[0], is_error=True).keep


def test_head_ratio_is_respected_and_weighted():
    s = Sampler(SamplingConfig(ratio=0.25, tail={"keep_errors": False}))
    kept = [decide(s, t) for t in IDS]
    share = sum(d.keep for d in kept) / len(IDS)
    assert 0.2 < share < 0.3
    assert {d.weight for d in kept if d.keep} == {"4"}
    assert {d.reason for d in kept if d.keep} == {"head"}
    # deterministic per trace id
    assert [decide(s, t).keep for t in IDS[:50]] == [d.keep for d in kept[:50]]


def test_ratio_one_is_always_weight_one():
    d = decide(Sampler(SamplingConfig()), IDS[0])
    assert (d.keep, d.reason, d.weight) == (True, "always", "1")


def test_route_and_tenant_ratios_tenant_wins():
    cfg = SamplingConfig(ratio=1.0, routes={"/health": 0.0}, tenants={"vip": 1.0, "free": 0.0})
    s = Sampler(cfg)
    assert not decide(s, IDS[0], metadata={keys.ROUTE: "/health"}).keep
    assert decide(s, IDS[0], metadata={keys.ROUTE: "/health", keys.TENANT: "vip"}).keep
    assert not decide(s, IDS[0], metadata={keys.ROUTE: "/chat", keys.TENANT: "free"}).keep
    assert decide(s, IDS[0], metadata={keys.ROUTE: "/chat"}).reason == "always"


def test_tail_cost_and_tag_rules():
    s = Sampler(
        SamplingConfig(
            ratio=0.0,
            tail={"keep_errors": False, "cost_above_usd": 0.01, "tags": ["debug", "tier=gold"]},
        )
    )
    cost = {"mlflow.trace.cost": json.dumps({"total_cost": 0.02})}
    assert decide(s, IDS[0], metadata=cost).reason == "tail:cost"
    cheap = {"mlflow.trace.cost": json.dumps({"total_cost": 0.001})}
    assert not decide(s, IDS[0], metadata=cheap).keep
    assert decide(s, IDS[0], tags={"debug": "1"}).reason == "tail:tag"
    assert decide(s, IDS[0], tags={"tier": "gold"}).reason == "tail:tag"
    assert not decide(s, IDS[0], tags={"tier": "free"}).keep


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("write to jane.doe+x@example.co.uk now", "email"),
        ("card 4111 1111 1111 1111 exp", "card"),
        ("card 5500-0000-0000-0004", "card"),
        ("call +1 415 555 2671", "phone"),
        ("call (415) 555-2671", "phone"),
        ("tokyo 03-1234-5678", "phone"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx", "api_key"),
        ("aws AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz123456", "api_key"),
    ],
)
def test_redaction_finds_pii_and_secrets(text, kind):
    out = Redactor(RedactionConfig()).text(text)
    assert f"[REDACTED:{kind}]" in out, out


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112",  # fails Luhn
        "latency 1700.1234567 ms",
        "ts 1732000000000",
        "version 3.17.2",
    ],
)
def test_redaction_leaves_non_pii_alone(text):
    assert Redactor(RedactionConfig()).text(text) == text


def test_redaction_custom_pattern_nested_values_and_json_stays_valid():
    r = Redactor(RedactionConfig(patterns=[r"EMP-\d{6}"], replacement="<{kind}>"))
    value = {"a": ["EMP-123456", {"b": "mail a@b.io"}], "n": 3}
    assert r.value(value) == {"a": ["<pattern0>", {"b": "mail <email>"}], "n": 3}
    raw = json.dumps({"messages": [{"content": "me: a@b.io, card 4111111111111111"}]})
    assert "4111" not in json.loads(r.text(raw))["messages"][0]["content"]
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_redaction_can_be_narrowed():
    r = Redactor(RedactionConfig(emails=False))
    assert r.text("a@b.io") == "a@b.io"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"sampling": {"ratio": 1.5}}, "tracing.sampling.ratio"),
        ({"sampling": {"routes": {"/x": -0.1}}}, "ratio for '/x'"),
        ({"queue_capacity": 0}, "tracing.queue_capacity"),
        ({"batch_size": 0}, "tracing.batch_size"),
        ({"otlp": {"traces_endpoint": "collector:4318"}}, "tracing.otlp.traces_endpoint"),
        ({"redaction": {"patterns": ["("]}}, "not a valid regular expression"),
        ({"sampling": {"ratoi": 0.1}}, "unknown key"),
        ({"sampling": {"tail": {"slower_than_ms": -1}}}, "tracing.sampling.tail.slower_than_ms"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, data, fragment):
    import yaml

    path = tmp_path / "mlflow-llmops.yaml"
    path.write_text(yaml.safe_dump({"tracing": data}))
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(path) in str(e.value)
    assert fragment in str(e.value)


def test_setup_rejects_bad_values_before_touching_mlflow():
    from mlflow_llmops.tracing import setup_production_tracing

    with pytest.raises(ConfigError, match=r"tracing\.sampling\.ratio"):
        setup_production_tracing("e", "svc", tracking_uri="sqlite:///x.db", sampling={"ratio": 2})
    with pytest.raises(ConfigError, match="service_name"):
        setup_production_tracing("e", "", tracking_uri="sqlite:///x.db")


def test_config_from_yaml_and_env(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "tracing:\n  sampling:\n    ratio: 0.1\n    tail: {slower_than_ms: 2000}\n"
        "  otlp:\n    traces_endpoint: ${OTLP:-http://127.0.0.1:4318/v1/traces}\n"
        "    headers: {Authorization: 'Bearer ${TOKEN}'}\n"
    )
    cfg = load_config(path, env={"TOKEN": "t0k", "MLFLOW_LLMOPS__TRACING__QUEUE_CAPACITY": "500"})
    t = cfg.tracing
    assert isinstance(t, TracingConfig)
    assert (t.sampling.ratio, t.sampling.tail.slower_than_ms, t.queue_capacity) == (0.1, 2000, 500)
    assert t.otlp.headers == {"Authorization": "Bearer t0k"}


def test_queue_refuses_beyond_capacity_and_counts_in_flight():
    q = TraceQueue(3)
    assert [q.put(i) for i in range(5)] == [True, True, True, False, False]
    assert q.take(2, 0) == [0, 1] and q.pending() == 3
    q.done(2)
    assert q.pending() == 1


def test_rate_limited_log_suppresses_and_reports(caplog):
    now = [0.0]
    log = RateLimitedLog(every_s=10, monotonic=lambda: now[0])
    with caplog.at_level("WARNING", logger="mlflow_llmops.tracing"):
        assert log.warning("dropped %d", 1)
        assert not log.warning("dropped %d", 2)
        assert not log.warning("dropped %d", 3)
        now[0] = 11
        assert log.warning("dropped %d", 4)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 1",
        "dropped 4 (2 similar messages suppressed)",
    ]


def test_urls_in_logs_hide_passwords_and_query_strings():
    from mlflow_llmops.tracing.setup import _redact_url

    assert (
        _redact_url("postgresql://app:hunter2@db:5432/mlflow")
        == "postgresql://app:***@db:5432/mlflow"
    )
    assert _redact_url("https://otel.example.com/v1/traces?api_key=abc") == (
        "https://otel.example.com/v1/traces"
    )
    assert _redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert _redact_url(None) == "off"
