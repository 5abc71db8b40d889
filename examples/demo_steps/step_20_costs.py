"""Demo step 20: price the demo traces by model, list unpriced models, re-price after a
negotiated discount and show the difference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ORDER = 20


def run(ctx) -> None:  # noqa: ANN001 - DemoContext, defined in examples/demo.py
    from mlflow import MlflowClient

    from mlflow_llmops.pricing import CostCalculator, cost_by_model, reprice, unpriced_models
    from mlflow_llmops.statestore.state import StateStore

    ctx.banner("Cost by model (re-pricing job)")
    exp = MlflowClient(tracking_uri=ctx.tracking_uri).get_experiment_by_name(ctx.experiment_name)
    exp_ids = [exp.experiment_id] if exp else None
    store = StateStore(ctx.state_url)
    now = datetime.now(UTC)
    calc = CostCalculator.default()
    result = reprice(
        ctx.tracking_uri, state_store=store, experiment_ids=exp_ids, now=now, calculator=calc
    )
    ctx.data["reprice"] = result
    print(result.summary())
    print(f"{'model':<34} {'provider':<12} {'spans':>6} {'unpriced':>8} {'cost USD':>14}")
    for row in cost_by_model(ctx.tracking_uri, experiment_ids=exp_ids):
        print(
            f"{str(row['model']):<34} {str(row['provider'] or '-'):<12} {row['spans']:>6} "
            f"{row['unpriced_spans']:>8} "
            + ("unpriced".rjust(14) if row["cost_usd"] is None else f"{row['cost_usd']:>14.6f}")
        )
    missing = unpriced_models(ctx.tracking_uri)
    if missing:
        print("\nmodels without a price (never counted as $0):")
        for row in missing:
            reason = calc.match(row["model"], row["provider"]).reason
            print(f"  {row['model']} [{row['provider'] or '-'}] {row['spans']} spans: {reason}")
    else:
        print("\nevery LLM span has a price")

    top = next((r for r in cost_by_model(ctx.tracking_uri, experiment_ids=exp_ids)
                if r["cost_usd"] and r["provider"]), None)  # fmt: skip
    if top is None:
        return
    ctx.banner("A negotiated discount from yesterday on: history re-priced")
    overrides = ctx.workdir / "prices.yaml"
    since = (now - timedelta(days=1)).date().isoformat()
    overrides.write_text(
        "models:\n"
        f"  - model: {top['model']}\n"
        f"    provider: {top['provider']}\n"
        f"    effective_from: {since}\n"
        "    discount_percent: 25\n"
    )
    calc2 = CostCalculator.from_files(overrides_file=overrides)
    second = reprice(
        ctx.tracking_uri, state_store=store, experiment_ids=exp_ids, now=now, calculator=calc2
    )
    print(second.summary())
    for d in second.diffs:
        if d.changed_spans:
            print(
                f"  {d.model}: {d.changed_spans} spans re-priced, ${d.before_usd:.6f} -> "
                f"${d.after_usd:.6f} (delta ${d.delta_usd:.6f})"
            )
    ctx.data["reprice_after_discount"] = second
    # Back to list prices so the later steps analyse the catalog's prices.
    reprice(ctx.tracking_uri, state_store=store, experiment_ids=exp_ids, now=now, calculator=calc)
    store.dispose()
