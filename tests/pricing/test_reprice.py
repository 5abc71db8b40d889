"""The re-pricing job end to end on real MLflow stores (SQLite, PostgreSQL, HTTP server)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pricing_traces import LlmCall, log_traces

from mlflow_llmops.core.clock import FakeClock
from mlflow_llmops.pricing import CostCalculator, cost_by_model, reprice, unpriced_models
from mlflow_llmops.pricing.job import reprice_history
from mlflow_llmops.statestore.state import StateStore

D = Decimal
NOW = datetime(2026, 8, 1, tzinfo=UTC)

MINI = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 200}
CLAUDE = {
    "input_tokens": 10_000,
    "output_tokens": 1_000,
    "cache_read_input_tokens": 3_000,
    "cache_creation_input_tokens": 5_000,
    "cache_creation_input_tokens_above_1hr": 2_000,
}
FIRST_BATCH = [
    (datetime(2026, 5, 10, tzinfo=UTC), [LlmCall("gpt-4o-mini", "openai", MINI)]),
    (
        datetime(2026, 5, 20, tzinfo=UTC),
        [
            LlmCall("claude-sonnet-4-5", "anthropic", CLAUDE),
            LlmCall("mystery-model", "acme", {"input_tokens": 50, "output_tokens": 5}),
        ],
    ),
    (
        datetime(2026, 7, 10, tzinfo=UTC),
        [
            LlmCall(
                "gpt-4o-mini",
                "openai",
                {"input_tokens": 2000, "output_tokens": 100},
                extra={"llmops.service_tier": "batch"},
            ),
            # an OTel GenAI-only span (no MLflow usage attribute)
            LlmCall(
                None,
                None,
                None,
                extra={
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 500,
                    "gen_ai.usage.cache_read.input_tokens": 400,
                },
                span_type="LLM",
            ),
        ],
    ),
    (
        datetime(2026, 7, 20, tzinfo=UTC),
        [LlmCall("gemini-2.5-pro", "gemini", {"input_tokens": 250_000, "output_tokens": 1000})],
    ),
]
SECOND_BATCH = [
    (datetime(2026, 7, 25, tzinfo=UTC), [LlmCall("gpt-4o-mini", "openai", MINI)]),
]
OVERRIDE = """
models:
  - model: gpt-4o-mini
    provider: openai
    effective_from: 2026-06-01
    discount_percent: 50
"""


def _rows(url: str) -> dict[str, dict]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT * FROM llmops_span_costs")).mappings().all()
    finally:
        eng.dispose()
    return {f"{r['model']}@{r['trace_timestamp_ms']}": dict(r) for r in rows}


def _rollup_is_current(url: str) -> bool:
    """``llmops_trace_costs`` holds, per trace, the sum and counts of its span costs."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            want = {}
            for tid, total, status in c.execute(
                sa.text("SELECT trace_id, total_cost_usd, status FROM llmops_span_costs")
            ):
                cost, n, unpriced = want.get(tid, (None, 0, 0))
                if total is not None:
                    cost = (cost or D(0)) + D(str(total))
                want[tid] = (cost, n + 1, unpriced + (status == "unpriced"))
            have = {
                tid: (None if cost is None else D(str(cost)), n, unpriced)
                for tid, cost, n, unpriced in c.execute(sa.text(
                    "SELECT trace_id, cost_usd, spans, unpriced_spans FROM llmops_trace_costs"
                ))
            }  # fmt: skip
    finally:
        eng.dispose()
    return bool(want) and have == want


def _scenario(tracking_url: str, state_url: str, tmp_path) -> None:
    """Price, rerun (nothing new), add traces (only those priced), override (history diff)."""
    exp = log_traces(tracking_url, "pricing-e2e", FIRST_BATCH)
    store = StateStore(state_url)
    calc = CostCalculator.default(clock=FakeClock(NOW))

    r1 = reprice(tracking_url, state_store=store, experiment_ids=[exp], now=NOW, calculator=calc)
    assert r1.source == "sql" and r1.full_history and r1.previous_version is None
    assert r1.spans_seen == r1.spans_written == 6
    assert r1.status_counts == {"priced": 5, "unpriced": 1}
    assert r1.unpriced == {("mystery-model", "acme"): 1}
    assert _rollup_is_current(tracking_url)
    rows = _rows(tracking_url)
    mystery = next(v for k, v in rows.items() if k.startswith("mystery-model"))
    assert mystery["status"] == "unpriced" and mystery["total_cost_usd"] is None
    claude = next(v for k, v in rows.items() if k.startswith("claude"))
    assert D(str(claude["total_cost_usd"])) == D("0.04515")
    assert (claude["input_tokens"], claude["cache_read_tokens"]) == (2000, 3000)
    assert (claude["cache_write_5m_tokens"], claude["cache_write_1h_tokens"]) == (3000, 2000)
    otel = next(v for k, v in rows.items() if k.startswith("gpt-4o@"))
    assert D(str(otel["total_cost_usd"])) == D("0.007")
    gemini = next(v for k, v in rows.items() if k.startswith("gemini"))
    assert D(str(gemini["total_cost_usd"])) == D("0.64")  # long-context rates
    batch = [v for k, v in rows.items() if k.startswith("gpt-4o-mini") and v["service_tier"]]
    assert batch[0]["service_tier"] == "batch"
    assert D(str(batch[0]["total_cost_usd"])) == D("0.00018")  # half of $0.15 / $0.60
    assert r1.total_usd == sum(
        (D(str(v["total_cost_usd"])) for v in rows.values() if v["total_cost_usd"] is not None),
        D(0),
    )

    # idempotent: nothing new, nothing rewritten
    r2 = reprice(tracking_url, state_store=store, experiment_ids=[exp], now=NOW, calculator=calc)
    assert r2.spans_written == 0 and not r2.full_history

    # incremental: only the new trace is priced
    log_traces(tracking_url, "pricing-e2e", SECOND_BATCH)
    r3 = reprice(tracking_url, state_store=store, experiment_ids=[exp], now=NOW, calculator=calc)
    assert r3.spans_written == 1 and r3.status_counts == {"priced": 1}
    assert r3.diffs[0].new_spans == 1

    # price change with an effective date: history re-priced, only later spans change
    f = tmp_path / "prices.yaml"
    f.write_text(OVERRIDE)
    calc2 = CostCalculator.from_files(overrides_file=f, clock=FakeClock(NOW))
    before = _rows(tracking_url)
    r4 = reprice(tracking_url, state_store=store, experiment_ids=[exp], now=NOW, calculator=calc2)
    assert r4.full_history and r4.previous_version == calc.catalog_version
    assert r4.spans_written == 7 and r4.spans_changed == 2
    assert _rollup_is_current(tracking_url)  # the traces' costs moved with their spans
    after = _rows(tracking_url)
    for k, old in before.items():
        new = after[k]
        moved = k.startswith("gpt-4o-mini") and old["trace_timestamp_ms"] >= 1_780_272_000_000
        if moved:
            assert D(str(new["total_cost_usd"])) * 2 == D(str(old["total_cost_usd"]))
            assert new["matched_entry"] == "openai/gpt-4o-mini@2026-06-01"
        else:
            assert new["total_cost_usd"] == old["total_cost_usd"], k
        assert new["catalog_version"] == calc2.catalog_version
    (diff,) = [d for d in r4.diffs if d.changed_spans]
    assert diff.model == "gpt-4o-mini" and diff.changed_spans == 2
    assert diff.delta_usd == -(D("0.00018") + D("0.000345")) / 2
    runs = reprice_history(store)
    assert runs[0]["catalog_version"] == calc2.catalog_version
    assert any(d["model"] == "gpt-4o-mini" and D(d["delta_usd"]) < 0 for d in runs[0]["diff"])

    by_model = {r["model"]: r for r in cost_by_model(tracking_url, experiment_ids=[exp])}
    assert by_model["mystery-model"]["unpriced_spans"] == 1
    assert by_model["claude-sonnet-4-5"]["cost_usd"] == D("0.04515")
    (un,) = unpriced_models(tracking_url)
    assert (un["model"], un["spans"], un["input_tokens"]) == ("mystery-model", 1, 50)
    store.dispose()


def test_reprice_end_to_end_sqlite(tmp_path, sqlite_url, state_url):
    _scenario(sqlite_url, state_url, tmp_path)


def test_trace_costs_are_filled_on_upgrade_from_span_costs_alone(sqlite_url, state_url):
    """A store priced before ``llmops_trace_costs`` existed (analytics schema 1) gets the
    table filled from its span costs by the migration."""
    exp = log_traces(sqlite_url, "pricing-upgrade", FIRST_BATCH)
    store = StateStore(state_url)
    calc = CostCalculator.default(clock=FakeClock(NOW))
    reprice(sqlite_url, state_store=store, experiment_ids=[exp], now=NOW, calculator=calc)
    eng = sa.create_engine(sqlite_url)
    with eng.begin() as c:  # back to schema 1: no trace costs
        c.execute(sa.text("DROP TABLE llmops_trace_costs"))
        c.execute(sa.text("UPDATE llmops_schema_versions SET version = 1 "
                          "WHERE component = 'analytics'"))  # fmt: skip
    eng.dispose()
    from mlflow_llmops.pricing.tables import ANALYTICS_MIGRATIONS

    StateStore(sqlite_url).ensure_schema(ANALYTICS_MIGRATIONS)
    assert _rollup_is_current(sqlite_url)
    store.dispose()


@pytest.mark.postgres
def test_reprice_end_to_end_postgres(tmp_path, pg_url, state_url):
    _scenario(pg_url, state_url, tmp_path)


def test_cli_reprice_show_price_unpriced(tmp_path, sqlite_url, monkeypatch):
    from mlflow_llmops.cli import cli

    log_traces(sqlite_url, "cli-exp", FIRST_BATCH[1:2])
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text(
        f"tracking: {{uri: '{sqlite_url}'}}\n"
        f"state_store: {{url: 'sqlite:///{tmp_path / 'state.db'}'}}\n"
    )
    runner = CliRunner()
    res = runner.invoke(cli, ["--config", str(cfg), "costs", "reprice", "--experiment", "cli-exp"])
    assert res.exit_code == 0, res.output
    assert "2 written" in res.output and "mystery-model [acme]: 1" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "costs", "unpriced"])
    assert res.exit_code == 1 and "mystery-model" in res.output and "no price" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "costs", "show-price", "gpt-4o"])
    assert res.exit_code == 0, res.output
    assert "openai/gpt-4o" in res.output and "tier batch" in res.output
    assert "input $2.5" in res.output and "provider inferred" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "costs", "show-price", "nope-llm"])
    assert res.exit_code == 1 and "UNPRICED" in res.output
    res = runner.invoke(
        cli, ["--config", str(cfg), "costs", "show-price", "gpt-4o", "--at", "1/2/26"]
    )
    assert res.exit_code == 2 and "write the date as YYYY-MM-DD" in res.output
    res = runner.invoke(cli, ["--config", str(cfg), "costs", "history"])
    assert res.exit_code == 0 and "2 written" in res.output


def test_reprice_through_mlflow_server_without_database(mlflow_server_sqlite, tmp_path):
    url = mlflow_server_sqlite.url
    exp = log_traces(url, "pricing-rest", FIRST_BATCH[:2])
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    r = reprice(url, state_store=store, experiment_ids=[exp], now=NOW)
    assert r.source == "rest" and r.spans_written == 3
    assert r.status_counts == {"priced": 2, "unpriced": 1}
    assert r.cost_by_model["claude-sonnet-4-5"] == D("0.04515")
    r2 = reprice(url, state_store=store, experiment_ids=[exp], now=NOW)
    assert r2.spans_written == 0
    store.dispose()


def test_cost_rows_keep_unpriced_parts_null_and_bad_usage_unpriced():
    from mlflow_llmops.pricing.job import cost_row, span_from_attributes

    calc = CostCalculator.default(clock=FakeClock(NOW))
    span = span_from_attributes(
        "tr-1", "s-1", "1", 1, {"mlflow.llm.model": "gpt-image-1", "mlflow.llm.provider": "openai",
                                "mlflow.chat.tokenUsage": {"input_tokens": 1000, "output_tokens": 10}},
    )  # fmt: skip
    r = calc.cost(model=span.model, provider=span.provider, usage=span.usage)
    row = cost_row(span, r, calc.catalog_version, NOW)
    assert row["status"] == "partial" and row["output_cost_usd"] is None
    assert row["input_cost_usd"] == row["total_cost_usd"] == D("0.005")
    bad = span_from_attributes(
        "tr-1", "s-2", "1", 1, {"mlflow.llm.model": "gpt-4o",
                                "mlflow.chat.tokenUsage": '{"input_tokens": 5, "cache_read_input_tokens": 9}'},
    )  # fmt: skip
    assert bad.usage is None and "inconsistent" in bad.usage_error
    row = cost_row(bad, None, calc.catalog_version, NOW)
    assert row["status"] == "unpriced" and row["total_cost_usd"] is None
    assert span_from_attributes("tr-1", "s-3", "1", 1, {"mlflow.llm.model": "gpt-4o"}) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_span_whose_json_is_broken_does_not_stop_the_job(tmp_path, request, state_url, backend):
    """The database picks the pricing attributes out of the span JSON; one unreadable span
    makes that page fall back to Python parsing, which skips it and prices the rest."""
    if backend == "postgres":
        request.applymarker(pytest.mark.postgres)
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    exp = log_traces(url, "broken-json", FIRST_BATCH)
    eng = sa.create_engine(url)
    with eng.begin() as c:
        sid = c.execute(
            sa.text("SELECT span_id FROM spans WHERE content LIKE '%mystery-model%'")
        ).scalar_one()
        c.execute(
            sa.text("UPDATE spans SET content = :c WHERE span_id = :s"),
            {"c": '{"attributes": {"mlflow.chat.tokenUsage": broken', "s": sid},
        )
    eng.dispose()
    r = reprice(url, state_store=StateStore(state_url), experiment_ids=[exp], now=NOW,
                calculator=CostCalculator.default(clock=FakeClock(NOW)))  # fmt: skip
    assert r.spans_written == 5 and r.status_counts == {"priced": 5}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_batch_path_writes_the_rows_of_the_scalar_path(tmp_path, request, backend):
    if backend == "postgres":
        request.applymarker(pytest.mark.postgres)
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    exp = log_traces(url, "paths", FIRST_BATCH + SECOND_BATCH)
    tables = {}
    for scalar in (False, True):
        out = f"sqlite:///{tmp_path / f'costs-{scalar}.db'}"
        r = reprice(url, analytics_url=out, state_store=StateStore(out), experiment_ids=[exp],
                    now=NOW, calculator=CostCalculator.default(clock=FakeClock(NOW)),
                    scalar=scalar)  # fmt: skip
        assert r.spans_written == 7
        tables[scalar] = _rows(out)
    assert tables[False] == tables[True] and len(tables[False]) == 7


@pytest.mark.postgres
def test_postgres_costs_in_another_database_and_rows_written_meanwhile(pg_url, state_url):
    """Costs outside the tracking database: the stored pricing is looked up per batch (it
    cannot be joined in the read). A batch believed new whose rows were written meanwhile
    is still replaced, not an error."""
    from mlflow_llmops.pricing.job import _upsert
    from mlflow_llmops.testing.postgres import create_database, drop_database

    exp = log_traces(pg_url, "pg-costs-elsewhere", FIRST_BATCH)
    out = create_database("llmops_test_costs")
    eng = sa.create_engine(out)
    try:
        calc = CostCalculator.default(clock=FakeClock(NOW))
        store = StateStore(state_url)
        kw = {"analytics_url": out, "state_store": store, "experiment_ids": [exp], "now": NOW,
              "calculator": calc, "batch_size": 2}  # fmt: skip
        r1 = reprice(pg_url, **kw)
        assert r1.spans_written == 6 and sum(d.new_spans for d in r1.diffs) == 6
        r2 = reprice(pg_url, force=True, **kw)
        assert r2.spans_written == 6 and r2.spans_changed == 0
        assert sum(d.new_spans for d in r2.diffs) == 0  # every stored row was found
        rows = list(_rows(out).values())
        with eng.begin() as c:
            _upsert(c, [{**r, "status": "partial"} for r in rows], new=True)
        after = _rows(out)
        assert len(after) == 6 and {r["status"] for r in after.values()} == {"partial"}
        store.dispose()
    finally:
        eng.dispose()
        drop_database(out)
