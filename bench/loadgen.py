"""A trace load generator: bursts of three-span traces through our export path or through
MLflow's default one, to check that a store keeps up and to compare both (tests, bench).

    python bench/loadgen.py --tracking-uri sqlite:///x.db --traces 2000
    python bench/loadgen.py --mode mlflow ...   # MLflow's default async export

Prints one JSON object per line: ``created`` (caller-side timings), then ``drained``
or, with ``--wait-signal``, waits to be killed (SIGTERM tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any


def _emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", default="loadgen")
    ap.add_argument("--traces", type=int, default=500)
    ap.add_argument("--mode", choices=["ours", "mlflow"], default="ours")
    ap.add_argument("--ratio", type=float, default=None, help="head sampling ratio")
    ap.add_argument("--queue-capacity", type=int, default=10_000)
    ap.add_argument("--error-every", type=int, default=0, help="every Nth trace raises")
    ap.add_argument("--wait-signal", action="store_true", help="after the burst, sleep")
    ap.add_argument("--no-drain", action="store_true", help="exit right after the burst")
    ap.add_argument(
        "--measure-own",
        action="store_true",
        help="time our own added work (export paused during the burst: no GIL contention)",
    )
    ap.add_argument(
        "--hold-export",
        action="store_true",
        help="hold the export during the burst, then time the drain alone (bench)",
    )
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow_llmops").setLevel(logging.INFO)

    if args.mode == "mlflow" and args.ratio is not None:
        os.environ["MLFLOW_TRACE_SAMPLING_RATIO"] = str(args.ratio)
    import mlflow

    handle = None
    own_ns = [0]
    if args.mode == "ours":
        from mlflow_llmops.tracing import setup_production_tracing

        cfg: dict[str, Any] = {"queue_capacity": args.queue_capacity}
        if args.ratio is not None:
            cfg["sampling"] = {"ratio": args.ratio}
        handle = setup_production_tracing(
            args.experiment, "loadgen", tracking_uri=args.tracking_uri, **cfg
        )
        if args.measure_own:
            _instrument(handle, own_ns)
        if args.measure_own or args.hold_export:
            paused = threading.Event()
            real_write = handle.writer.write

            def held_write(*a: Any, **k: Any) -> Any:
                paused.wait()
                return real_write(*a, **k)

            handle.writer.write = held_write
    else:
        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_experiment(args.experiment)

    @mlflow.trace(name="request")
    def request(i: int) -> int:
        with mlflow.start_span("llm", span_type="CHAT_MODEL") as s:
            s.set_inputs({"messages": [{"role": "user", "content": f"question {i}"}]})
            s.set_attributes({
                "mlflow.llm.model": "gpt-4o-mini",
                "mlflow.llm.provider": "openai",
                "mlflow.chat.tokenUsage": {
                    "input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
                },
            })  # fmt: skip
            s.set_outputs({"content": f"answer {i}"})
        with mlflow.start_span("tool", span_type="TOOL") as s:
            s.set_inputs({"q": i})
        if args.error_every and i % args.error_every == 0:
            raise RuntimeError(f"injected error {i}")
        return i

    for i in range(20):  # warm-up (imports, first-call caches); not counted, not stored
        with mlflow.tracing.context(enabled=False):
            try:
                request(-1 - i)
            except RuntimeError:
                pass
    own_ns[0] = 0
    per_trace: list[float] = []
    t_start = time.perf_counter()
    for i in range(args.traces):
        t0 = time.perf_counter_ns()
        try:
            request(i)
        except RuntimeError:
            pass
        per_trace.append((time.perf_counter_ns() - t0) / 1000)
    burst_s = time.perf_counter() - t_start
    _emit(
        event="created",
        traces=args.traces,
        burst_s=burst_s,
        median_us=statistics.median(per_trace),
        p99_us=_percentile(per_trace, 0.99),
        own_us_per_trace=own_ns[0] / 1000 / max(1, args.traces) if args.measure_own else None,
        stats=handle.stats() if handle else None,
    )
    if args.mode == "ours" and (args.measure_own or args.hold_export):
        paused.set()
    if args.wait_signal:
        while True:
            time.sleep(3600)
    if args.no_drain:
        return
    t0 = time.perf_counter()
    if handle is not None:
        report = handle.shutdown(args.drain_timeout)
    else:
        mlflow.flush_trace_async_logging()
        report = None
    drain_s = time.perf_counter() - t0
    _emit(
        event="drained",
        drain_s=drain_s,
        since_start_s=time.perf_counter() - t_start,
        stats=report,
        path=handle.writer.path if handle is not None else "mlflow",
    )


def _instrument(handle: Any, own_ns: list[int]) -> None:
    """Wrap our pieces with timers: the span-end processor and the exporter."""
    exporter = handle.exporter
    real_export = exporter.export
    proc = handle.span_processor
    real_call = type(proc).__call__

    def timed_export(spans: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return real_export(spans)
        finally:
            own_ns[0] += time.perf_counter_ns() - t

    class Timed(type(proc)):  # type: ignore[misc]
        def __call__(self, span: Any) -> None:
            t = time.perf_counter_ns()
            try:
                real_call(self, span)
            finally:
                own_ns[0] += time.perf_counter_ns() - t

    exporter.export = timed_export
    proc.__class__ = Timed


if __name__ == "__main__":
    sys.exit(main())
