"""Every analysis is right under sampling: a known population is sampled with a head
ratio plus tail rules exactly as tracing decides (``Sampler.decide`` on the trace id),
only the kept traces are written (with their ``llmops.sample_weight``) and priced, and
each query's weighted estimate must match the truth of the whole population within its
sampling error, on SQLite, PostgreSQL and DuckDB.

The truth is computed here in Python from the population (prices from the same
calculator the re-pricing job uses), sharing no code with the queries. The sampling
error of a weighted sum over a group is the Horvitz-Thompson one: head-kept traces are
kept with probability r, so ``Var = sum((1 - r) / r * y**2)`` over the group's traces
that no tail rule keeps; we allow 4 standard errors (plus 1 for the rounding of counts).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from mlflow_llmops.analytics.queries import run_query
from mlflow_llmops.analytics.views import create_views
from mlflow_llmops.pricing import CostCalculator
from mlflow_llmops.testing.postgres import create_database, drop_database, pg_available
from mlflow_llmops.testing.seed import bulk_load, synthetic_traffic
from mlflow_llmops.tracing.config import SamplingConfig, TailRules
from mlflow_llmops.tracing.sampling import Sampler

pytestmark = pytest.mark.xdist_group("sql")

START = datetime(2026, 4, 6, tzinfo=UTC)  # a Monday
NOW = START + timedelta(days=2)
LO, HI = int(START.timestamp() * 1000), int(NOW.timestamp() * 1000)
RANGE = {"since_ms": LO, "until_ms": HI}
RATIO = 0.1
SAMPLING = SamplingConfig(
    ratio=RATIO, tail=TailRules(keep_errors=True, slower_than_ms=6000, cost_above_usd=0.05)
)
VAR = (1 - RATIO) / RATIO  # per unit y**2, for a trace only the head ratio can keep
DAY = 86_400_000
EXPERIMENT = "sampled"


# --------------------------------------------------------------------------- population
def _population():
    rng = random.Random(7)
    return [
        replace(t, trace_id=f"{rng.getrandbits(128):032x}", sample_weight=None)
        for t in synthetic_traffic(START, days=2, rate_per_min=2.5, seed=5, error_rate=0.03)
    ]


def _price(t, calc):
    """Per span, the ``llmops_span_costs`` row the re-pricing job writes for it."""
    from mlflow_llmops.pricing.job import cost_row
    from mlflow_llmops.pricing.spans import span_from_attributes

    rows = []
    for i, s in enumerate(t.spans):
        ls = span_from_attributes(t.trace_id, str(i), "1", t.timestamp_ms, s.attributes())
        r = calc.cost(model=ls.model, provider=ls.provider, usage=ls.usage,
                      service_tier=ls.service_tier, at=t.timestamp_ms)  # fmt: skip
        rows.append(cost_row(ls, r, calc.catalog_version, NOW))
    return rows


class Truth:
    """The population's traces and LLM spans as dicts, with whether only the head ratio
    could have kept each (``head``: counts in the sampling variance)."""

    def __init__(self, population, calc):
        sampler = Sampler(SAMPLING)
        self.traces, self.spans, self.kept = [], [], []
        for t in population:
            costs = _price(t, calc)
            priced = [float(c["total_cost_usd"]) for c in costs if c["total_cost_usd"] is not None]
            cost = sum(priced) if priced else None
            args = {"is_error": t.status == "ERROR", "duration_ms": t.latency_ms,
                    "metadata": t.trace_metadata(), "tags": t.tags,
                    "cost_usd": lambda cost=cost: cost}  # fmt: skip
            d = sampler.decide(trace_id_int=int(t.trace_id, 16), **args)
            # A trace the head test can never keep is kept only by a tail rule.
            head = not sampler.decide(trace_id_int=(1 << 64) - 1, **args).keep
            if d.keep:
                md = {**t.metadata, "llmops.sampling": d.reason}
                self.kept.append(replace(t, sample_weight=d.weight, metadata=md))
            inp = sum(s.input_tokens for s in t.spans)
            out = sum(s.output_tokens for s in t.spans)
            self.traces.append({
                "trace_id": f"tr-{t.trace_id}", "ts": t.timestamp_ms, "day": t.timestamp_ms // DAY * DAY,
                "status": t.status, "user": t.user, "tenant": t.tenant, "session": t.session, "task": t.task_type,
                "name": t.name, "model": t.spans[0].model if t.spans else None, "head": head,
                "input": inp, "output": out, "total": inp + out,
                "cache_read": sum(s.cache_read_tokens for s in t.spans), "cost": cost,
                "unpriced": any(c["status"] == "unpriced" for c in costs),
            })  # fmt: skip
            for s, c in zip(t.spans, costs, strict=True):
                self.spans.append({
                    "day": (t.timestamp_ms + s.start_offset_ms) // DAY * DAY, "model": s.model,
                    "provider": s.provider, "status": s.status, "latency": s.latency_ms,
                    "trace_id": t.trace_id, "head": head, "input": s.input_tokens,
                    "output": s.output_tokens,
                    "cost": None if c["total_cost_usd"] is None else float(c["total_cost_usd"]),
                    "unpriced": c["total_cost_usd"] is None and s.input_tokens + s.output_tokens > 0,
                    "c_input": c["input_tokens"], "c_cache_read": c["cache_read_tokens"],
                    "c_read_cost": _f(c["cache_read_cost_usd"]),
                    "c_write_cost": _f(c["cache_write_cost_usd"]),
                    "c_input_cost": _f(c["input_cost_usd"]), "c_status": c["status"],
                })  # fmt: skip


def _f(v):
    return None if v is None else float(v)


#: Groups with fewer traces open to head sampling than this are checked together: the
#: normal approximation behind "4 standard errors" needs enough of them.
MIN_UNITS = 30


def sums(rows, key, **ys):
    """Per group ``key(row)``: for each named y, (truth, standard error of the estimate);
    ``_n`` (no y) counts the group's rows open to head sampling."""
    out: dict = defaultdict(lambda: {n: [0.0, 0.0] for n in ys})
    heads: dict = defaultdict(int)
    for r in rows:
        k = key(r)
        g = out[k]
        heads[k] += bool(r["head"])
        for n, y in ys.items():
            v = y(r) or 0.0
            g[n][0] += v
            if r["head"]:
                g[n][1] += VAR * v * v
    return {
        k: {"_n": heads[k], **{n: (t, math.sqrt(v)) for n, (t, v) in g.items()}}
        for k, g in out.items()
    }


def check(result, key_cols, truth, slack=1.0):
    """Each group's weighted estimate within 4 standard errors of the truth (a group
    with nothing kept estimates 0); small groups are checked as one. Returns the
    estimated rows by key."""
    got = {tuple(r[c] for c in key_cols): r for r in result.records()}
    assert set(truth) | set(got)
    extra = set(got) - set(truth)
    assert not extra, (result.query.name, extra, "estimated groups the population lacks")
    small: dict = defaultdict(lambda: [0.0, 0.0, 0.0])
    for k, cols in truth.items():
        for col, value in cols.items():
            if col == "_n":
                continue
            true, se = value
            est = (got.get(k) or {}).get(col) or 0.0
            if cols["_n"] < MIN_UNITS:
                acc = small[col]
                acc[0] += est
                acc[1] += true
                acc[2] += se * se
                continue
            tol = 4 * se + slack + 1e-6 * abs(true)
            assert abs(est - true) <= tol, (result.query.name, k, col, est, true, se)
    for col, (est, true, var) in small.items():
        tol = 4 * math.sqrt(var) + slack * len(truth) + 1e-6 * abs(true)
        assert abs(est - true) <= tol, (result.query.name, "small groups", col, est, true)
    return got


def ratio_ok(est, num, den, k=4.0):
    """A ratio of two weighted sums: within the sum of their relative errors."""
    (n, sn), (d, sd) = num, den
    if not d:
        return est is None
    true = n / d
    rel = k * ((sn / n if n else 0.0) + sd / d) + 1e-6
    return est is not None and abs(est - true) <= rel * abs(true) + 1e-12


# --------------------------------------------------------------------------- stores
@pytest.fixture(scope="module")
def truth():
    return Truth(_population(), CostCalculator.default())


def _store(url: str, state_url: str, kept) -> sa.Engine:
    from mlflow import MlflowClient

    from mlflow_llmops.pricing import reprice
    from mlflow_llmops.statestore.state import StateStore

    exp_id = MlflowClient(url).create_experiment(EXPERIMENT)
    engine = sa.create_engine(url)
    assert bulk_load(engine, exp_id, kept, seed=1) == len(kept)
    store = StateStore(state_url)
    reprice(url, state_store=store, now=NOW, calculator=CostCalculator.default())
    store.dispose()
    create_views(engine)
    return engine


@pytest.fixture(scope="module")
def engines(truth, tmp_path_factory):
    from mlflow_llmops.analytics.export import export_parquet, read_export

    if not pg_available():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    d = tmp_path_factory.mktemp("sampled")
    lite = _store(f"sqlite:///{d / 'mlflow.db'}", f"sqlite:///{d / 's1.db'}", truth.kept)
    pg_url = create_database("llmops_sampled")
    try:
        pg = _store(pg_url, f"sqlite:///{d / 's2.db'}", truth.kept)
        export_parquet(lite, d / "parquet", now=NOW + timedelta(hours=1))
        duck = read_export(d / "parquet")
        yield {"sqlite": lite, "postgresql": pg, "duckdb": duck}
        duck.close()
        pg.dispose()
        lite.dispose()
    finally:
        drop_database(pg_url)


ENGINES = ("sqlite", "postgresql", "duckdb")


def test_the_sample_is_a_sample(truth):
    """Head sampling at 0.1 keeps about a tenth; every error, slow and costly trace is kept."""
    n = len(truth.traces)
    assert n > 5000
    assert 0.1 * n < len(truth.kept) < 0.3 * n
    weights = {t.sample_weight for t in truth.kept}
    assert weights == {"10", "1"}
    assert sum(1 for t in truth.traces if t["status"] == "ERROR") == sum(
        1 for t in truth.kept if t.status == "ERROR"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_trace_level_analyses_estimate_the_population(engine, engines, truth):
    e, T = engines[engine], truth.traces
    one = lambda r: 1.0  # noqa: E731

    r = run_query("daily_totals", e, RANGE, now=NOW)
    got = check(r, ["day_ms"], sums(T, lambda t: (t["day"],), requests=one,
                errors=lambda t: t["status"] == "ERROR", total_tokens=lambda t: t["total"],
                cost_usd=lambda t: t["cost"], unpriced_traces=lambda t: t["unpriced"]))  # fmt: skip
    assert all(x["estimated"] == 1 and x["kept_traces"] < x["requests"] / 3 for x in got.values())
    # Errors are all kept by a tail rule (weight 1): their count is exact.
    errors = sum(1 for t in T if t["status"] == "ERROR")
    assert sum(x["errors"] for x in got.values()) == errors
    assert sum(x["kept_traces"] for x in got.values()) == len(truth.kept)

    r = run_query("cost_by_task_type", e, RANGE, now=NOW)
    tt = sums(T, lambda t: (t["task"],), requests=one, cost_usd=lambda t: t["cost"])
    for k, x in check(r, ["task_type"], tt).items():
        assert ratio_ok(x["cost_per_request_usd"], tt[k]["cost_usd"], tt[k]["requests"])

    r = run_query("cost_by_user", e, {**RANGE, "limit": 100_000}, now=NOW)
    check(r, ["user_id"], sums(T, lambda t: (t["user"],), requests=one,
          total_tokens=lambda t: t["total"], cost_usd=lambda t: t["cost"]))  # fmt: skip
    r = run_query("cost_by_tenant", e, {**RANGE, "limit": 100_000}, now=NOW)
    tn = sums(T, lambda t: (t["tenant"],), requests=one, total_tokens=lambda t: t["total"],
              cost_usd=lambda t: t["cost"])  # fmt: skip
    for k, x in check(r, ["tenant"], tn).items():
        assert ratio_ok(x["cost_per_request_usd"], tn[k]["cost_usd"], tn[k]["requests"])
    assert sum(x["share_of_cost"] for x in r.records()) == pytest.approx(1.0)
    r = run_query("cost_by_session", e, {**RANGE, "limit": 100_000}, now=NOW)
    check(r, ["session_id"], sums(T, lambda t: (t["session"],), requests=one,
          cost_usd=lambda t: t["cost"]))  # fmt: skip

    r = run_query("cost_per_success", e, RANGE, now=NOW)
    ps = sums(T, lambda t: (t["model"],), requests=one, cost_usd=lambda t: t["cost"],
              successes=lambda t: t["status"] == "OK", tokens=lambda t: t["total"])  # fmt: skip
    ps_sum = {k: {c: v for c, v in g.items() if c != "tokens"} for k, g in ps.items()}
    for k, x in check(r, ["model"], ps_sum).items():
        if ps[k]["cost_usd"][0]:
            assert ratio_ok(x["cost_per_success_usd"], ps[k]["cost_usd"], ps[k]["successes"])
            assert ratio_ok(x["cost_per_1k_tokens_usd"] / 1000, ps[k]["cost_usd"], ps[k]["tokens"])

    r = run_query("token_efficiency", e, RANGE, now=NOW)
    te = sums(T, lambda t: (t["task"], t["name"]), requests=one, i=lambda t: t["input"],
              o=lambda t: t["output"], c=lambda t: t["cache_read"])  # fmt: skip
    for k, x in check(r, ["task_type", "trace_name"],
                      {k: {"_n": g["_n"], "requests": g["requests"]} for k, g in te.items()}
                      ).items():  # fmt: skip
        g = te[k]
        assert ratio_ok(x["avg_input_tokens"], g["i"], g["requests"])
        assert ratio_ok(x["avg_output_tokens"], g["o"], g["requests"])
        assert ratio_ok(x["output_input_ratio"], g["o"], g["i"])
        assert ratio_ok(x["cache_hit_ratio"], g["c"], g["i"])

    f = run_query("month_forecast", e, {"now_ms": HI}, now=NOW).records()[0]
    spend = sums(T, lambda t: (), s=lambda t: t["cost"])[()]["s"]
    assert abs(f["spend_mtd_usd"] - spend[0]) <= 4 * spend[1] + 1e-9
    assert f["spend_last_7d_usd"] == pytest.approx(f["spend_mtd_usd"]) and f["estimated"] == 1

    hour = HI - 3_600_000
    r = run_query("hourly_cost_anomaly", e, {"hour_start_ms": hour}, now=NOW)
    in_hour = [t for t in T if hour <= t["ts"] < HI]
    check(r, ["model"], sums(in_hour, lambda t: (t["model"],), cost_usd=lambda t: t["cost"]),
          slack=1e-9)  # fmt: skip

    # Every trace above the cost threshold is kept (weight 1): the top traces are exact.
    top = run_query("top_traces", e, {**RANGE, "limit": 10}, now=NOW).records()
    expected = sorted(
        (t for t in T if t["cost"] is not None), key=lambda t: (-t["cost"], t["trace_id"])
    )
    assert [x["trace_id"] for x in top] == [t["trace_id"] for t in expected[:10]]
    assert all(x["sample_weight"] == 1 for x in top)


def _weighted_quantile_range(values, q, n):
    """Truth quantiles at q -/+ 4 standard errors of the estimated CDF at q."""
    values = sorted(values)
    d = 4 * math.sqrt(VAR * q * (1 - q) / n) + 0.01
    lo = values[max(0, math.ceil((q - d) * len(values)) - 1)]
    hi = values[min(len(values) - 1, math.ceil(min(1.0, q + d) * len(values)) - 1)]
    return lo, hi


@pytest.mark.parametrize("engine", ENGINES)
def test_span_level_analyses_estimate_the_population(engine, engines, truth):
    e, S = engines[engine], truth.spans
    one = lambda r: 1.0  # noqa: E731

    r = run_query("cost_by_model_day", e, RANGE, now=NOW)
    check(r, ["day_ms", "model", "provider"], sums(
        S, lambda s: (s["day"], s["model"], s["provider"]), llm_calls=one,
        cost_usd=lambda s: s["cost"], unpriced_spans=lambda s: s["unpriced"],
        llmops_priced_spans=lambda s: s["cost"] is not None))  # fmt: skip

    r = run_query("latency_errors_by_model", e, RANGE, now=NOW)
    le = sums(S, lambda s: (s["model"],), calls=one, errors=lambda s: s["status"] == "ERROR")
    for (model,), x in check(r, ["model"], le).items():
        lat = [s["latency"] for s in S if s["model"] == model]
        heads = sum(1 for s in S if s["model"] == model and s["head"])
        for q, col in ((0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")):
            lo, hi = _weighted_quantile_range(lat, q, max(heads, 1))
            assert lo <= x[col] <= hi, (engine, model, col, x[col], lo, hi)
        assert x["error_rate"] == pytest.approx(x["errors"] / x["calls"], abs=1e-3)

    r = run_query("unpriced_usage", e, RANGE, now=NOW)
    un = [s for s in S if s["unpriced"]]
    per_trace = {}
    for s in un:
        per_trace.setdefault(s["trace_id"], s)
    got = check(r, ["model", "provider"], sums(un, lambda s: (s["model"], s["provider"]),
                spans=one, input_tokens=lambda s: s["input"], output_tokens=lambda s: s["output"]))  # fmt: skip
    tr = sums(per_trace.values(), lambda s: (s["model"], s["provider"]), traces=one)
    check(r, ["model", "provider"], tr)
    assert [k[0] for k in got] == ["acme-internal-llm"]

    r = run_query("cache_savings", e, RANGE, now=NOW)
    priced = [s for s in S if s["c_status"] != "unpriced"]
    cs = sums(priced, lambda s: (s["model"], s["provider"]), input_tokens=lambda s: s["c_input"],
              cache_read_tokens=lambda s: s["c_cache_read"],
              cache_read_cost_usd=lambda s: s["c_read_cost"],
              cache_write_cost_usd=lambda s: s["c_write_cost"])  # fmt: skip
    for k, x in check(r, ["model", "provider"], cs, slack=1e-6).items():
        assert ratio_ok(x["cache_hit_ratio"], cs[k]["cache_read_tokens"],
                        (cs[k]["input_tokens"][0] + cs[k]["cache_read_tokens"][0],
                         cs[k]["input_tokens"][1] + cs[k]["cache_read_tokens"][1]))  # fmt: skip


def test_old_unweighted_counts_would_be_far_off(engines, truth):
    """What the issue saw: the raw count is about a sixth of the requests."""
    r = run_query("daily_totals", engines["sqlite"], RANGE, now=NOW).records()
    kept, est = sum(x["kept_traces"] for x in r), sum(x["requests"] for x in r)
    assert kept < 0.3 * len(truth.traces) and abs(est - len(truth.traces)) < 0.1 * len(truth.traces)


def test_daily_report_and_cli_say_the_figures_are_estimates(engines, truth, tmp_path):
    from click.testing import CliRunner

    from mlflow_llmops.cli import cli
    from mlflow_llmops.reports import daily_report

    day = START.date()
    rep = daily_report(engines["duckdb"], day, tmp_path, now=NOW, chart=True)
    assert rep.estimated and "**Estimates.**" in rep.markdown
    total = run_query("daily_totals", engines["sqlite"], RANGE, now=NOW).records()[0]
    assert rep.totals["requests"] == total["requests"] > 3 * rep.totals["kept_traces"]
    true, se = sums([t for t in truth.traces if t["day"] == LO], lambda t: (), n=lambda t: 1.0)[()][
        "n"
    ]
    assert abs(rep.totals["requests"] - true) <= 4 * se + 1
    assert rep.chart_path.read_bytes()[:4] == b"\x89PNG"

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tracking:\n  uri: {engines['sqlite'].url}\n")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "sql", "run", "daily_totals", "--now",
                                 NOW.isoformat(), "-p", f"since_ms={LO}"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "estimated = 1: sampled traffic" in r.output
