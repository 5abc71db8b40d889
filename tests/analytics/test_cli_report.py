"""The CLI (`sql list|show|run|views`, `export parquet`, `report daily`) end to end."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

import pytest
from click.testing import CliRunner
from sql_times import NOW

from mlflow_llmops.analytics.queries import run_query
from mlflow_llmops.cli import cli
from mlflow_llmops.reports import daily_report

# One worker builds the seeded stores once (make test runs with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sql")


@pytest.fixture
def config(sqlite_store, tmp_path):
    p = tmp_path / "mlflow-llmops.yaml"
    p.write_text(
        f"tracking:\n  uri: {sqlite_store[0]}\n"
        f"analytics:\n  export_dir: {tmp_path / 'export'}\n  report_dir: {tmp_path / 'reports'}\n"
    )
    return p


def invoke(config, *args):
    r = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return r


def test_sql_list_show_run(config, sqlite_store):
    r = invoke(config, "sql", "list")
    assert (
        r.exit_code == 0 and "cost_by_model_day" in r.output and "hourly_cost_anomaly" in r.output
    )
    r = invoke(config, "sql", "show", "top_traces", "--dialect", "spark")
    assert r.exit_code == 0 and "LIMIT :limit" in r.output and "param limit" in r.output

    args = ["sql", "run", "cost_by_model_day", "-p", "since_ms=2026-03-01",
            "-p", "until_ms=2026-03-10T12:30:00Z"]  # fmt: skip
    expected = run_query(
        "cost_by_model_day", sqlite_store[1],
        {"since_ms": "2026-03-01", "until_ms": "2026-03-10T12:30:00Z"}, now=NOW,
    ).records()  # fmt: skip
    r = invoke(config, *args, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output) == expected
    r = invoke(config, *args, "--format", "csv")
    got = list(csv.reader(io.StringIO(r.output)))
    assert got[0] == list(expected[0]) and len(got) == len(expected) + 1
    r = invoke(config, *args)
    assert "2026-03-01" in r.output and f"({len(expected)} rows)" in r.output
    r = invoke(config, "sql", "views")
    assert r.exit_code == 0 and "llmops_traces" in r.output


def test_sql_run_errors_say_what_to_fix(config, capsys):
    from mlflow_llmops.cli import main

    for args, msg in (
        (["sql", "run", "nope"], "no query named 'nope'"),
        (["sql", "run", "top_traces", "-p", "limit=ten"], "expected an integer"),
        (["sql", "run", "top_traces", "-p", "limit"], "write NAME=VALUE"),
        (["sql", "run", "top_traces", "-p", "color=red"], "unknown parameter"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["--config", str(config), *args])
        assert e.value.code == 2, args
        assert msg in capsys.readouterr().err, args


def test_sql_run_without_a_database_url_points_to_parquet(tmp_path, capsys):
    from mlflow_llmops.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("tracking:\n  uri: http://127.0.0.1:9\n")
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "sql", "run", "daily_totals"])
    assert "tracking.database_url" in capsys.readouterr().err


def test_export_then_query_parquet_and_daily_report(config, tmp_path, capsys):
    r = invoke(config, "export", "parquet", "--since", "2026-03-01")
    assert r.exit_code == 0 and "traces=" in r.output
    out = tmp_path / "export"
    assert (out / "traces" / "day=2026-03-09" / "part.parquet").exists()
    r = invoke(config, "sql", "run", "top_traces", "--parquet", str(out), "-p",
               "since_ms=2026-03-09", "-p", "until_ms=2026-03-10", "-p", "limit=1",
               "--format", "json")  # fmt: skip
    assert json.loads(r.output)[0]["user_id"] == "user-whale"

    r = invoke(config, "report", "daily", "--date", "2026-03-09")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "reports" / "cost-report-2026-03-09.md").read_text()
    png = tmp_path / "reports" / "cost-report-2026-03-09.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for part in ("# LLM cost report for 2026-03-09", "## Totals", "previous day",
                 "same day last week", "## By model", "## By task type", "user-whale",
                 "## Unpriced usage", "acme-internal-llm", "cost-report-2026-03-09.png",
                 "## Month to date (March 2026)", "forecast (month average)",
                 "## Spend by user", "## Spend by tenant", "tenant-", "## Cache savings",
                 "## Errors and latency by model", "error rate", "p99 ms",
                 "## Scorer quality"):  # fmt: skip
        assert part in md, part
    assert "**Estimates.**" not in md  # the seeded traffic is not sampled (weight 1)
    from mlflow_llmops.cli import main

    with pytest.raises(SystemExit):
        main(["--config", str(config), "report", "daily", "--date", "09/03/2026"])
    assert "write the day as YYYY-MM-DD" in capsys.readouterr().err


def test_daily_report_numbers_are_the_queries_numbers(sqlite_store, duck, tmp_path):
    a = daily_report(sqlite_store[1], date(2026, 3, 9), tmp_path / "a", now=NOW, chart=False)
    b = daily_report(duck[1], date(2026, 3, 9), tmp_path / "b", now=NOW, chart=False)
    assert a.markdown == b.markdown
    day = run_query("daily_totals", sqlite_store[1],
                    {"since_ms": "2026-03-08", "until_ms": "2026-03-10"}, now=NOW).records()  # fmt: skip
    assert a.totals["requests"] == day[1]["requests"]
    assert a.totals["cost_usd"] == day[1]["cost_usd"]
    assert a.totals["previous_day_cost_usd"] == day[0]["cost_usd"]
    assert a.chart_path is None


def test_daily_report_sections_links_and_an_empty_day(sqlite_store, tmp_path):
    ui = "http://mlflow.example:5000/"
    r = daily_report(sqlite_store[1], date(2026, 3, 9), tmp_path, now=NOW, chart=False,
                     ui_url=ui)  # fmt: skip
    whale = r.top_traces[0]
    assert whale["user_id"] == "user-whale"
    link = (f"http://mlflow.example:5000/#/experiments/{whale['experiment_id']}/traces"
            f"?selectedEvaluationId={whale['trace_id']}")  # fmt: skip
    assert f"[`{whale['trace_id']}`]({link})" in r.markdown
    # Scorer quality from the assessments: the four feedbacks of conftest.FEEDBACK.
    q = {x["scorer"]: x for x in run_query("scorer_quality", sqlite_store[1],
         {"since_ms": "2026-03-01", "until_ms": "2026-03-11"}, now=NOW).records()}  # fmt: skip
    assert q["correct"]["mean_score"] == 1.0 and q["relevance"]["mean_score"] == 0.4
    assert q["tone"]["scored"] == 0 and q["tone"]["mean_score"] is None
    assert r.month["spend_mtd_usd"] > 0 and r.month["forecast_linear_usd"] > 0
    assert r.by_tenant and r.latency and r.by_user[0]["user_id"] == "user-whale"

    # A day without traffic cost $0: not "unpriced".
    empty = daily_report(sqlite_store[1], date(2026, 2, 10), tmp_path, now=NOW, chart=False)
    spend = next(x for x in empty.markdown.splitlines() if x.startswith("| spend |"))
    assert spend.split("|")[2].strip() == "$0.0000" and "unpriced" not in spend
    assert empty.totals["requests"] == 0 and empty.totals["cost_usd"] == 0.0


def test_chart_leaves_unpriced_models_out_of_the_bars():
    from mlflow_llmops.reports.daily import chart_series

    rows = [
        {"model": "gpt-4o", "day_ms": 0, "cost_usd": 1.5, "unpriced_spans": 0},
        {"model": "acme-internal-llm", "day_ms": 0, "cost_usd": None, "unpriced_spans": 4},
        {"model": "mixed", "day_ms": 0, "cost_usd": 0.5, "unpriced_spans": 1},
    ]
    bars, unpriced = chart_series(rows, [0])
    assert bars == {"gpt-4o": {0: 1.5}, "mixed": {0: 0.5}}
    assert unpriced == {"acme-internal-llm": 4}


def test_markdown_renders_from_sections_alone(tmp_path):
    """The render stage needs no database and writes no file."""
    from mlflow_llmops.reports.daily import ReportParams, ReportSections, render_markdown

    day = {"requests": 4, "kept_traces": 2, "errors": 1, "total_tokens": None,
           "cost_usd": 2.0, "unpriced_traces": 0}  # fmt: skip
    month = {"spend_mtd_usd": 2.0, "spend_last_7d_usd": 2.0, "elapsed_days": 9.5,
             "forecast_linear_usd": 6.5, "forecast_recent_usd": None}  # fmt: skip
    unpriced = {"model": "acme", "provider": None, "spans": 3, "traces": 2, "input_tokens": 5,
                "output_tokens": 1, "sample_weight": 2.0}  # fmt: skip
    s = ReportSections(current=day, previous={**day, "cost_usd": 1.0}, last_week=day,
                       by_model=[], by_task_type=[], top_traces=[], unpriced=[unpriced],
                       by_user=[], by_tenant=[], cache=[], latency=[], scorers=[], month=month)  # fmt: skip
    p = ReportParams(None, date(2026, 3, 9), tmp_path, NOW, top_n=3, chart=False)
    md = render_markdown(p, s).splitlines()
    assert s.estimated and "**Estimates.** " in md[4] and "from the 2 traces" in md[4]
    assert "| spend | $2.0000 | $1.0000 | +100.0% | $2.0000 | +0.0% |" in md
    assert "| error rate | 25.0% | 25.0% |  | 25.0% |  |" in md
    assert "| tokens | 0 | 0 | 0% | 0 | 0% |" in md
    assert md[md.index("## Top 3 traces") + 2] == "_none_"
    assert "| acme |  | 3 | 2 | 5 | 1 |" in md and md[-1].startswith("Add these models")
    assert s.totals()["total_tokens"] == 0 and not list(tmp_path.iterdir())
