"""Pricing speed, ours beside the baselines in one run, medians and ratios.

Scalar: ``CostCalculator.cost()`` against MLflow's builtin ``cost_per_token`` (the
price lookup MLflow ships), call for call over the same records (mixed models, 10%
batch tier, one unknown model), ours given MLflow's usage record (the dict a span
carries) and an already parsed :class:`TokenUsage`. Goal: ours <= MLflow per call.

Vectorised: ``cost_frame`` over ``BENCH_PRICING_ROWS`` rows (default 1M), with the key
columns as strings (as built from Python objects) and as ``category`` (as pyarrow reads
a dictionary-encoded Parquet column), against a hand-written pandas merge of a rate table (float
arithmetic) and against pricing row by row (MLflow's builtin, litellm's
``cost_per_token`` when installed). Goal: <= 50 ns per row.

Times are CPU-time medians (``time.process_time``; the machine is shared, wall time
counts other processes' turns), the load average is printed beside them, and the
competitors of a figure run interleaved, so their ratio holds even when the load moves.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
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
REPEAT = int(os.environ.get("BENCH_PRICING_REPEAT", "7"))
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


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f}/{five:.2f} on {os.cpu_count()} CPUs"


def interleaved(fns: dict[str, Callable[[], object]], repeat: int = REPEAT) -> dict[str, float]:
    """CPU-time median of each function, the functions taking turns."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def scalar(calc: CostCalculator, recs: list[dict]) -> tuple[float, float, float]:
    from mlflow.utils.providers import cost_per_token as mlflow_builtin

    calls = [
        (
            r["model"],
            r["provider"],
            None if pd.isna(r["service_tier"]) else r["service_tier"],
            int(r["timestamp_ms"]),
            {
                "input_tokens": int(r["input_tokens"] + r["cache_read_tokens"]),
                "output_tokens": int(r["output_tokens"]),
                "total_tokens": int(
                    r["input_tokens"] + r["cache_read_tokens"] + r["output_tokens"]
                ),
                "cache_read_input_tokens": int(r["cache_read_tokens"]),
            },
            TokenUsage(
                input=int(r["input_tokens"]),
                cache_read=int(r["cache_read_tokens"]),
                output=int(r["output_tokens"]),
            ),  # fmt: skip
        )
        for r in recs
    ]
    cost = calc.cost

    def ours_dict() -> None:
        for model, provider, tier, at, usage, _ in calls:
            cost(model=model, provider=provider, usage=usage, service_tier=tier, at=at)

    def ours_usage() -> None:
        for model, provider, tier, at, _, usage in calls:
            cost(model=model, provider=provider, usage=usage, service_tier=tier, at=at)

    def mlflow() -> None:
        for model, provider, _, _, usage, _ in calls:
            mlflow_builtin(
                model,
                prompt_tokens=usage["input_tokens"],
                completion_tokens=usage["output_tokens"],
                custom_llm_provider=provider,
                cache_read_input_tokens=usage["cache_read_input_tokens"],
            )

    for fn in (ours_dict, ours_usage, mlflow):
        fn()  # warm: plans, MLflow's catalog
    t = interleaved({"dict": ours_dict, "usage": ours_usage, "mlflow": mlflow}, REPEAT * 2)
    n = len(calls)
    return t["dict"] / n, t["usage"] / n, t["mlflow"] / n


def merge_baseline(calc: CostCalculator, df: pd.DataFrame) -> Callable[[], pd.Series]:
    """What one writes by hand: a (model, provider, tier) rate table merged onto the rows,
    float rates times token columns. The table is built outside the timing."""
    keys = df[["model", "provider", "service_tier"]].drop_duplicates()
    table = []
    for m, p, t in keys.itertuples(index=False):
        tier = None if pd.isna(t) else t
        probe = calc.cost(model=m, provider=p, usage=TokenUsage(input=1, cache_read=1, output=1),
                          service_tier=tier)  # fmt: skip
        bd = probe.breakdown if probe.total is not None else {}
        table.append(
            (m, p, t, *(float(bd.get(b, "nan")) for b in ("input", "cache_read", "output")))
        )
    rates = pd.DataFrame(
        table, columns=["model", "provider", "service_tier", "r_in", "r_cr", "r_out"]
    )

    def run() -> pd.Series:
        m = df.merge(rates, on=["model", "provider", "service_tier"], how="left")
        return (
            m["input_tokens"] * m["r_in"]
            + m["cache_read_tokens"] * m["r_cr"]
            + m["output_tokens"] * m["r_out"]
        )

    return run


def per_row_baselines(recs: list[dict]) -> dict[str, float]:
    from mlflow.utils.providers import cost_per_token as mlflow_builtin

    def mlflow_rows() -> None:
        for r in recs:
            mlflow_builtin(
                r["model"],
                prompt_tokens=int(r["input_tokens"] + r["cache_read_tokens"]),
                completion_tokens=int(r["output_tokens"]),
                custom_llm_provider=r["provider"],
                cache_read_input_tokens=int(r["cache_read_tokens"]),
            )

    fns: dict[str, Callable[[], object]] = {"MLflow builtin cost_per_token": mlflow_rows}
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

        fns["litellm cost_per_token"] = litellm_rows
    except ImportError:
        print("litellm not installed (pip install 'mlflow-llmops[bench]'): its baseline skipped")
    for fn in fns.values():
        fn()  # warm
    return {k: v / len(recs) for k, v in interleaved(fns, 3).items()}


def main() -> None:
    calc = CostCalculator.default()
    print(f"bench_pricing: {ROWS:,} rows, {SAMPLE:,} sample calls; {load()}")

    # -- scalar, call for call beside MLflow's builtin ------------------------------------
    recs = make_frame(SAMPLE, seed=2).to_dict("records")
    s_dict, s_usage, s_mlflow = scalar(calc, recs)
    print(
        f"scalar cost(): MLflow usage dict {s_dict * 1e6:.2f} us/call "
        f"({s_dict / s_mlflow:.2f}x MLflow), TokenUsage {s_usage * 1e6:.2f} us/call "
        f"({s_usage / s_mlflow:.2f}x); MLflow builtin cost_per_token {s_mlflow * 1e6:.2f} us/call"
    )

    # -- vectorised ----------------------------------------------------------------------
    df = make_frame(ROWS)
    dfc = df.astype({"model": "category", "provider": "category", "service_tier": "category"})
    calc.cost_frame(df.head(1000))  # warm
    merge = merge_baseline(calc, df)
    out = calc.cost_frame(df)
    t = interleaved(
        {
            "str": lambda: calc.cost_frame(df),
            "category": lambda: calc.cost_frame(dfc),
            "merge": merge,
        }
    )
    v_str, v_cat, v_merge = (t[k] / ROWS for k in ("str", "category", "merge"))
    print(
        f"vectorised cost_frame: {v_str * 1e9:.0f} ns/row (string keys), "
        f"{v_cat * 1e9:.0f} ns/row (category keys); exact total ${sum_usd(out):.6f}; "
        f"statuses {out['status'].value_counts().to_dict()}"
    )
    print(
        f"pandas merge of a rate table, float: {v_merge * 1e9:.0f} ns/row "
        f"-> ours {v_merge / v_str:.1f}x (string keys), {v_merge / v_cat:.1f}x (category keys)"
    )
    sample = make_frame(SAMPLE, seed=2)
    per_row = per_row_baselines(sample.to_dict("records"))
    for name, sec in per_row.items():
        print(f"{name}, per row: {sec * 1e6:.2f} us/row -> ours {sec / v_str:.0f}x (string keys)")

    # agreement on the sample (plain + cached tokens): ours vs MLflow's builtin
    from mlflow.utils.providers import cost_per_token as mlflow_builtin

    ours = calc.cost_frame(sample)
    theirs = Decimal(0)
    for r in sample.to_dict("records"):
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

    print(f"{load()} after the run")
    print(
        f"RESULT pricing_scalar median {s_dict * 1e6:.2f} us/call (MLflow usage dict) = "
        f"{s_dict / s_mlflow:.2f}x MLflow builtin, {s_usage * 1e6:.2f} us/call (TokenUsage) = "
        f"{s_usage / s_mlflow:.2f}x; MLflow builtin {s_mlflow * 1e6:.2f} us/call; goal <= 1x"
    )
    line = (
        f"RESULT pricing_vectorised {v_str * 1e9:.0f} ns/row string keys, "
        f"{v_cat * 1e9:.0f} ns/row category keys, over {ROWS:,} rows; "
        f"pandas merge {v_merge * 1e9:.0f} ns/row -> {v_merge / v_str:.1f}x"
    )
    for name, sec in per_row.items():
        line += f"; {name.split()[0]} per row {sec * 1e6:.2f} us -> {sec / v_str:.0f}x"
    print(line + "; goal <= 50 ns/row")


if __name__ == "__main__":
    main()
