"""Pricing speed: our scalar ``cost()`` and vectorised ``cost_frame`` against MLflow's
``calculate_cost_by_model_and_token_usage`` and litellm's ``cost_per_token``, per row,
in one run. Baselines are timed per row on a sample (they are far too slow for 1M rows).

Goals: vectorised >= 100x faster per row than either baseline; scalar < 10 us per call.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")  # MLflow: never fetch
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: never fetch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mlflow_llmops.pricing import CostCalculator, TokenUsage, sum_usd  # noqa: E402

ROWS = int(os.environ.get("BENCH_PRICING_ROWS", "1000000"))
SAMPLE = int(os.environ.get("BENCH_PRICING_SAMPLE", "3000"))
MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("gpt-4.1", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("gemini-2.5-pro", "gemini"),
    ("gemini-2.5-flash", "gemini"),
    ("mistral-large-latest", "mistral"),
    ("deepseek-chat", "deepseek"),
    ("in-house-llm", "vllm"),  # unpriced
]


def make_frame(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(MODELS), n)
    inp = rng.integers(50, 20_000, n)
    cache_read = (inp * rng.random(n) * 0.5).astype(np.int64)
    return pd.DataFrame(
        {
            "model": np.array([m for m, _ in MODELS], dtype=object)[idx],
            "provider": np.array([p for _, p in MODELS], dtype=object)[idx],
            "service_tier": np.where(rng.random(n) < 0.1, "batch", None),
            "timestamp_ms": 1_780_000_000_000 + rng.integers(0, 30 * 86_400_000, n),
            "input_tokens": inp - cache_read,
            "cache_read_tokens": cache_read,
            "output_tokens": rng.integers(1, 2_000, n),
        }
    )


def median_time(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    calc = CostCalculator.default()

    # -- scalar ------------------------------------------------------------------------
    usage_dict = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 200}
    usage_vec = TokenUsage(input=1000, cache_read=200, output=300)
    n_calls = 20_000

    def scalar(u):  # noqa: ANN001, ANN202
        def run() -> None:
            for _ in range(n_calls):
                calc.cost(model="gpt-4o-mini", provider="openai", usage=u)

        return run

    scalar(usage_dict)()  # warm caches
    s_dict = median_time(scalar(usage_dict), 5) / n_calls
    s_vec = median_time(scalar(usage_vec), 5) / n_calls
    print(f"scalar cost(), MLflow usage dict: {s_dict * 1e6:.2f} us/call")
    print(f"scalar cost(), TokenUsage:        {s_vec * 1e6:.2f} us/call")

    # -- vectorised: 1M rows -----------------------------------------------------------
    df = make_frame(ROWS)
    calc.cost_frame(df.head(1000))  # warm
    out = None

    def vec() -> None:
        nonlocal out
        out = calc.cost_frame(df)

    v_total = median_time(vec, 3)
    v_row = v_total / ROWS
    total = sum_usd(out)
    print(
        f"vectorised cost_frame: {ROWS:,} rows in {v_total:.3f}s = {v_row * 1e9:.0f} ns/row; "
        f"exact total ${total:.6f}; statuses {out['status'].value_counts().to_dict()}"
    )

    # -- baselines, per row, on a sample ----------------------------------------------
    sample = make_frame(SAMPLE, seed=2)
    sample = sample[sample["model"] != "in-house-llm"]
    recs = sample.to_dict("records")

    from mlflow.tracing.utils import calculate_cost_by_model_and_token_usage

    def mlflow_rows() -> None:
        for r in recs:
            calculate_cost_by_model_and_token_usage(
                r["model"],
                {
                    "input_tokens": int(r["input_tokens"] + r["cache_read_tokens"]),
                    "output_tokens": int(r["output_tokens"]),
                    "cache_read_input_tokens": int(r["cache_read_tokens"]),
                },
                r["provider"],
            )

    from mlflow.utils.providers import cost_per_token as mlflow_builtin

    def mlflow_builtin_rows() -> None:
        for r in recs:
            mlflow_builtin(
                r["model"],
                prompt_tokens=int(r["input_tokens"] + r["cache_read_tokens"]),
                completion_tokens=int(r["output_tokens"]),
                custom_llm_provider=r["provider"],
                cache_read_input_tokens=int(r["cache_read_tokens"]),
            )

    try:
        import litellm

        litellm.suppress_debug_info = True

        def litellm_rows() -> None:
            for r in recs:
                try:
                    litellm.cost_per_token(
                        model=r["model"],
                        prompt_tokens=int(r["input_tokens"] + r["cache_read_tokens"]),
                        completion_tokens=int(r["output_tokens"]),
                        custom_llm_provider=r["provider"],
                        cache_read_input_tokens=int(r["cache_read_tokens"]),
                    )
                except Exception:  # noqa: BLE001, S110 - unknown models raise; still timed
                    pass

    except ImportError:
        litellm_rows = None
        print("litellm not installed (pip install 'mlflow-llmops[bench]'): baseline skipped")

    mlflow_rows()  # warm (imports, catalog load)
    m_row = median_time(mlflow_rows, 3) / len(recs)
    mb_row = median_time(mlflow_builtin_rows, 3) / len(recs)
    print(f"MLflow calculate_cost_by_model_and_token_usage: {m_row * 1e6:.1f} us/row")
    print(f"MLflow builtin cost_per_token:                  {mb_row * 1e6:.1f} us/row")
    l_row = None
    if litellm_rows is not None:
        litellm_rows()
        l_row = median_time(litellm_rows, 3) / len(recs)
        print(f"litellm cost_per_token:                         {l_row * 1e6:.1f} us/row")

    # agreement on the sample (plain + cached tokens): ours vs MLflow's builtin
    ours = calc.cost_frame(sample)
    theirs = Decimal(0)
    for r in recs:
        got = mlflow_builtin(
            r["model"],
            prompt_tokens=int(r["input_tokens"] + r["cache_read_tokens"]),
            completion_tokens=int(r["output_tokens"]),
            custom_llm_provider=r["provider"],
            cache_read_input_tokens=int(r["cache_read_tokens"]),
        )
        if got:
            theirs += Decimal(repr(sum(got)))
    print(
        f"sample total ours ${sum_usd(ours):.6f} (incl. batch tier) vs MLflow ${theirs:.6f} "
        "(MLflow ignores the batch tier)"
    )

    print(
        f"RESULT pricing_scalar median {s_dict * 1e6:.2f} us/call (MLflow usage dict), "
        f"{s_vec * 1e6:.2f} us/call (TokenUsage); goal < 10 us"
    )
    line = (
        f"RESULT pricing_vectorised {v_row * 1e9:.0f} ns/row over {ROWS:,} rows; "
        f"MLflow {m_row * 1e6:.1f} us/row -> {m_row / v_row:.0f}x; "
        f"MLflow builtin {mb_row * 1e6:.1f} us/row -> {mb_row / v_row:.0f}x"
    )
    if l_row is not None:
        line += f"; litellm {l_row * 1e6:.1f} us/row -> {l_row / v_row:.0f}x"
    print(line + "; goal >= 100x")


if __name__ == "__main__":
    main()
