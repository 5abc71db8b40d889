"""Demo step 10: the example service under a burst with errors and slow calls, traced
with ``setup_production_tracing``; shut down cleanly and show what was kept and why."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

ORDER = 10
REQUESTS = 160


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from examples.service import QaService, run_requests, start
    from mlflow_llmops.testing.fake_llm import FakeLLMConfig, FakeLLMServer, Fault
    from mlflow_llmops.testing.otlp_receiver import OtlpReceiver

    ctx.banner("Production tracing: a burst through the example service")
    logging.getLogger("mlflow_llmops").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="  %(levelname)s %(name)s: %(message)s")

    def latency(body: dict) -> float:  # one call in 12 is slow
        return 0.35 if "question 1" in str(body.get("messages", ""))[-40:] else 0.002

    cfg = FakeLLMConfig(latency_s=latency, error_rate=0.04, cached_ratio=0.3, reasoning_tokens=40)
    with FakeLLMServer(cfg) as llm, OtlpReceiver() as collector:
        llm.script(Fault(status=429, retry_after=1), Fault(status=500), Fault(status=503))
        handle = start(
            ctx.experiment_name,
            ctx.tracking_uri,
            service_name="qa-service",
            metadata={"environment": "demo", "service_version": "1.0.0", "deployment": "local"},
            sampling={"ratio": 0.5, "routes": {"/search": 0.2},
                      "tail": {"keep_errors": True, "slower_than_ms": 300}},
            otlp={"traces_endpoint": collector.traces_endpoint,
                  "metrics_endpoint": collector.metrics_endpoint,
                  "headers": {"Authorization": "Bearer demo-secret"}},
        )  # fmt: skip
        t0 = time.perf_counter()
        service = QaService(llm.base_url)
        outcome = {"ok": 0, "error": 0}
        for model, n in (("gpt-4o-mini", REQUESTS // 2), ("o4-mini", REQUESTS - REQUESTS // 2)):
            service.model = model
            r = run_requests(service, n, seed=len(model))
            outcome = {k: outcome[k] + r[k] for k in outcome}
        burst_s = time.perf_counter() - t0
        stats = handle.shutdown(20)
        spans, metrics = collector.spans(), collector.metrics()
    ctx.data["tracing_stats"] = stats
    print(f"{REQUESTS} requests in {burst_s:.1f}s: {outcome['ok']} ok, {outcome['error']} failed")
    print(
        f"traces created={stats['created']} kept={stats['kept']} exported={stats['exported']} "
        f"sampled_out={stats['sampled_out']} dropped={stats['dropped']} "
        f"unsent={stats['unsent_at_shutdown']}"
    )
    print("kept because:", ", ".join(f"{k}={v}" for k, v in sorted(stats["by_reason"].items())))
    print("sampled out per route:", stats["sampled_out_by_route"])
    # cumulative temporality: the last export holds the totals
    dur = next((m for m in reversed(metrics) if m.name == "gen_ai.client.operation.duration"), None)
    calls = sum(p["count"] for p in dur.points) if dur else 0
    print(
        f"OTLP collector received {len({s.trace_id for s in spans})} traces "
        f"({len(spans)} spans) and GenAI metrics for {calls} LLM calls (100%, sampled or not)"
    )
    print(f"traces are in {ctx.tracking_uri}, experiment {ctx.experiment_name!r}")
