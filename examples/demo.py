"""`make demo`: the main job end to end on the embedded default (a local SQLite MLflow store).

Runs every step in ``examples/demo_steps/`` in the order of its ``ORDER``: each
step is one capability (tracing, pricing, SQL analyses, scoring, alerting,
notifications) and reads what the previous steps left in ``demo-output/``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


@dataclass
class DemoContext:
    """What the steps share."""

    workdir: Path
    tracking_uri: str
    state_url: str
    experiment_name: str = "llmops-demo"
    data: dict[str, Any] = field(default_factory=dict)

    def banner(self, title: str) -> None:
        print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def load_steps() -> list[Any]:
    steps = []
    for path in sorted((ROOT / "demo_steps").glob("step_*.py")):
        spec = importlib.util.spec_from_file_location(f"demo_steps.{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        steps.append(module)
    return sorted(steps, key=lambda m: getattr(m, "ORDER", 100))


def main() -> None:
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(k, None)
    workdir = Path(os.environ.get("LLMOPS_DEMO_DIR", "demo-output")).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ctx = DemoContext(
        workdir=workdir,
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        state_url=f"sqlite:///{workdir / 'state.db'}",
    )
    started = time.perf_counter()
    for step in load_steps():
        t = time.perf_counter()
        step.run(ctx)
        print(f"  ({step.__name__.split('.')[-1]} took {time.perf_counter() - t:.1f}s)", flush=True)
    ctx.banner("Done")
    print(f"Everything above ran in {time.perf_counter() - started:.1f}s.")
    print(f"Browse the traces:  .venv/bin/mlflow ui --backend-store-uri {ctx.tracking_uri}")


if __name__ == "__main__":
    main()
