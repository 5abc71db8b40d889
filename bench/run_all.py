"""`make bench`: runs every bench/bench_*.py in its own process and prints their ratios.

Each benchmark measures ours and the baseline side by side in the same run and
prints a summary line starting with ``RESULT``; this collects them at the end.
``python bench/run_all.py NAME`` runs only benchmarks whose file name contains NAME.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    only = sys.argv[1:]
    files = sorted(p for p in HERE.glob("bench_*.py") if not only or any(o in p.name for o in only))
    results: list[str] = []
    failed: list[str] = []
    env = {
        **os.environ,
        "MLFLOW_MODEL_CATALOG_URI": "",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }
    for f in files:
        print(f"\n##### {f.name}", flush=True)
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
        assert proc.stdout
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("RESULT"):
                results.append(f"{f.stem}: {line.strip()}")
        if proc.wait() != 0:
            failed.append(f.name)
        print(f"##### {f.name} took {time.perf_counter() - t:.0f}s", flush=True)
    print("\n===== summary")
    for r in results:
        print(r)
    if failed:
        print("FAILED:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
