"""The monitor: cycle steps, dispatch to the sink, lease election and takeover."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from mlflow_llmops.alerting.console import ConsoleSink
from mlflow_llmops.alerting.engine import ALERTING_MIGRATIONS, monitor_cycle_rows, monitor_cycles
from mlflow_llmops.alerting.model import AlertState
from mlflow_llmops.alerting.signals import MemorySignalSource, TraceEvent
from mlflow_llmops.cli import main
from mlflow_llmops.config import load_config
from mlflow_llmops.core.clock import FakeClock, to_ms
from mlflow_llmops.monitor.cycle import Monitor
from mlflow_llmops.statestore.state import FencedOut, StateStore

RULE = {
    "name": "errors_high",
    "query": {"signal": "error_rate", "window": "1m"},
    "threshold": 0.2,
    "for": "1m",
    "severity": "critical",
}


def config(tmp_path, state_url, **alerting):  # noqa: ANN001, ANN201
    return load_config(
        overrides={
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "state_store": {"url": state_url},
            "alerting": {"rules": [RULE], "evaluation_interval": "1m", **alerting},
        },
        env={},
    )


def burst(source, clock, seconds, errors):  # noqa: ANN001
    start = to_ms(clock.now())
    for i in range(seconds):
        source.add(TraceEvent(start + i * 1000, status="ERROR" if errors and i % 2 else "OK"))
    clock.advance(seconds)


def test_cycle_runs_steps_evaluates_and_dispatches(tmp_path, state_url):
    clock, source, out = FakeClock(), MemorySignalSource(), io.StringIO()
    calls = []

    def reprice(now):  # noqa: ANN001, ANN202
        calls.append(("reprice", now))
        return "12 spans priced"

    def score(now):  # noqa: ANN001, ANN202
        raise RuntimeError("judge endpoint unreachable")

    mon = Monitor(config(tmp_path, state_url), clock=clock, source=source,
                  sink=ConsoleSink(out), steps={"reprice": reprice, "score": score})  # fmt: skip
    assert mon.try_lead()
    burst(source, clock, 60, errors=True)
    r1 = mon.cycle()
    assert calls == [("reprice", clock.now())]
    assert r1.failed_steps == ["score"] and "judge endpoint" in r1.steps["score"].detail
    assert r1.steps["evaluate"].ok and r1.evaluation.pending and r1.alerts == []
    burst(source, clock, 60, errors=True)
    r2 = mon.cycle()
    assert [a.state for a in r2.alerts] == [AlertState.FIRING]
    burst(source, clock, 60, errors=True)
    r3 = mon.cycle()  # re-submitted (Prometheus semantics), printed once by the console sink
    assert [a.state for a in r3.alerts] == [AlertState.FIRING]
    burst(source, clock, 60, errors=False)
    r4 = mon.cycle()
    assert [a.state for a in r4.alerts] == [AlertState.RESOLVED]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[FIRING:critical] errors_high")
    assert lines[1].startswith("[RESOLVED:critical] errors_high")
    rows = monitor_cycle_rows(mon.store)
    assert len(rows) == 4 and rows[0]["steps"]["score"]["ok"] is False
    assert "took" in r4.summary() and "score FAILED" in r4.summary()


def test_state_store_failure_is_reported_not_raised(tmp_path, state_url):
    clock, source = FakeClock(), MemorySignalSource()
    mon = Monitor(config(tmp_path, state_url), clock=clock, source=source,
                  sink=ConsoleSink(io.StringIO()), steps={})  # fmt: skip
    with mon.store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE llmops_alert_instances"))
    report = mon.cycle()
    assert report.failed_steps == ["evaluate"] and report.evaluation is None


def test_dry_run_notifies_nobody_and_keeps_no_state(tmp_path, state_url):
    clock, source = FakeClock(), MemorySignalSource()
    mon = Monitor(config(tmp_path, state_url), clock=clock, source=source, dry_run=True,
                  sink=ConsoleSink(io.StringIO()), steps={})  # fmt: skip
    for _ in range(3):
        burst(source, clock, 60, errors=True)
        report = mon.cycle()
    assert [a.state for a in report.alerts] == [AlertState.FIRING]
    store = StateStore(state_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(monitor_cycles)).scalar() == 0
    assert store.lease_holder("alerting.monitor", clock.now()) is None


def test_lease_one_evaluator_and_takeover(tmp_path, state_url):
    clock = FakeClock()
    cfg = config(tmp_path, state_url)
    a = Monitor(cfg, clock=clock, source=MemorySignalSource(), steps={}, holder="a")
    b = Monitor(cfg, clock=clock, source=MemorySignalSource(), steps={}, holder="b")
    assert a.try_lead() and not b.try_lead()
    clock.advance(20)
    assert a.try_lead() and not b.try_lead()  # renewed
    clock.advance(31)  # a died: ttl (interval/2 = 30s) expired
    assert b.try_lead() and not a.try_lead()


def test_a_stale_leader_is_fenced_out_of_every_write(tmp_path, state_url):
    """A leader that lost its lease without noticing (frozen, then resumed with
    ``is_leader`` still true) runs a cycle: every state write is refused (epoch fence),
    it records nothing and steps down; the new leader's cycle runs as usual."""
    clock = FakeClock()
    cfg = config(tmp_path, state_url)
    out = io.StringIO()
    a = Monitor(cfg, clock=clock, source=MemorySignalSource(), steps={}, holder="a",
                sink=ConsoleSink(out))  # fmt: skip
    b = Monitor(cfg, clock=clock, source=MemorySignalSource(), steps={}, holder="b",
                sink=ConsoleSink(out))  # fmt: skip
    assert a.try_lead() and a.epoch == 1
    assert a.cycle().steps["evaluate"].ok
    clock.advance(31)
    assert b.try_lead() and b.epoch == 2
    assert a.is_leader  # a has not looked at the lease since
    r = a.cycle()
    assert r.fenced and r.failed_steps == ["evaluate"] and "newer leader" in r.steps[
        "evaluate"].detail  # fmt: skip
    assert not a.is_leader
    with pytest.raises(FencedOut):
        with a.store.engine.begin() as conn:
            conn.execute(monitor_cycles.delete())
    assert b.cycle().steps["evaluate"].ok
    holders = [row["holder"] for row in monitor_cycle_rows(b.store)]
    assert sorted(holders) == ["a", "b"]  # a's first cycle, b's; nothing from stale a
    # a released lease keeps its epoch: the next term is a newer one
    b.release()
    assert a.try_lead() and a.epoch == 3


def test_loop_runs_cycles_and_releases_the_lease(tmp_path, state_url):
    cfg = config(tmp_path, state_url, evaluation_interval="1s")
    mon = Monitor(cfg, source=MemorySignalSource(), steps={}, sink=ConsoleSink(io.StringIO()))
    reports = mon.run(max_cycles=2)
    assert len(reports) == 2
    assert (reports[1].started_at - reports[0].started_at) >= timedelta(seconds=1)
    assert mon.store.lease_holder("alerting.monitor", datetime.now(UTC)) is None


def _cycles_by_pid(url: str) -> dict[int, list[datetime]]:
    store = StateStore(url)
    store.ensure_schema(ALERTING_MIGRATIONS)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(monitor_cycles.c.holder, monitor_cycles.c.started_at)).all()
    store.dispose()
    out: dict[int, list[datetime]] = {}
    for holder, started in rows:
        out.setdefault(int(holder.split(":")[1]), []).append(started)
    return out


def _wait(pred, timeout: float):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    return pred()


@pytest.mark.postgres
def test_two_monitors_on_postgresql_takeover_after_sigkill(tmp_path, pg_url):
    from seeded import init_mlflow_db

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_mlflow_db(tracking, str(tmp_path / "artifacts"))
    cfg = tmp_path / "mlflow-llmops.yaml"
    # the lease is half the interval: takeover within one interval leaves half an interval
    # (5 s) for a loaded machine's scheduling, where 3 s left 1.5 s and failed under load
    interval = 10
    cfg.write_text(
        yaml.safe_dump(
            {
                "tracking": {"uri": tracking},
                "state_store": {"url": pg_url},
                "alerting": {
                    "evaluation_interval": f"{interval}s",
                    "monitor": {"reprice": False, "score": False},
                    "rules": [RULE],
                },
            }
        )
    )
    cmd = [sys.executable, "-m", "mlflow_llmops.cli", "--config", str(cfg), "monitor"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    a = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    b = None
    try:
        assert _wait(lambda: _cycles_by_pid(pg_url).get(a.pid), 30), a.stderr.read1().decode()
        b = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(interval + 2)  # b is up and standing by
        assert b.poll() is None
        assert b.pid not in _cycles_by_pid(pg_url), "two evaluators at once"
        a.send_signal(signal.SIGKILL)
        killed = datetime.now(UTC)
        a.wait()
        taken = _wait(lambda: _cycles_by_pid(pg_url).get(b.pid), 3 * interval)
        assert taken, "the standby never took over"
        delay = (min(taken) - killed).total_seconds()
        assert delay <= interval, f"takeover took {delay:.1f}s, more than one interval"
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def cli_config(tmp_path: Path, state_url: str, monitor: dict, **alerting: object) -> Path:
    """A config file for the CLI: a fresh SQLite tracking store and the no-data RULE."""
    from seeded import init_mlflow_db

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    init_mlflow_db(tracking, str(tmp_path / "artifacts"))
    rules = [{**RULE, "no_data": "alerting", "for": "0s"}]
    cfg = tmp_path / "mlflow-llmops.yaml"
    cfg.write_text(yaml.safe_dump({
        "tracking": {"uri": tracking},
        "state_store": {"url": state_url},
        "alerting": {"monitor": monitor, "rules": rules, **alerting},
    }))  # fmt: skip
    return cfg


def test_cli_monitor_once_status_and_evaluate(tmp_path, state_url, capsys):
    cfg = cli_config(tmp_path, state_url, {"score": False})
    main(["--config", str(cfg), "monitor", "--once"])
    err = capsys.readouterr().err
    assert "reprice ok" in err and "1 firing" in err
    main(["--config", str(cfg), "alerts", "status"])
    out = capsys.readouterr().out
    assert "firing" in out and "errors_high" in out and "reason=no_data" in out
    main(["--config", str(cfg), "alerts", "evaluate", "--at", "now-1h"])
    assert "errors_high" in capsys.readouterr().out
    main(["--config", str(cfg), "alerts", "rules", "list"])
    assert "errors_high" in capsys.readouterr().out
    main(["--config", str(cfg), "alerts", "rules", "check"])
    assert "1 enabled rules OK" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "alerts", "evaluate", "--at", "yesterday"])
    assert "is not a time" in capsys.readouterr().err
    assert Path(tmp_path / "mlflow.db").exists()


def test_monitor_hands_alerts_to_the_dispatcher_when_receivers_exist(tmp_path, state_url, capsys):
    from mlflow_llmops.notify import Dispatcher

    clock, source = FakeClock(), MemorySignalSource()
    cfg = config(
        tmp_path,
        state_url,
        notifications={"receivers": [{"name": "stdout", "type": "console"}], "group_wait": "0s"},
    )
    mon = Monitor(cfg, clock=clock, source=source, steps={})
    assert isinstance(mon.sink, Dispatcher)
    for _ in range(2):
        burst(source, clock, 60, errors=True)
        report = mon.cycle()
    assert [a.state for a in report.alerts] == [AlertState.FIRING]
    assert report.steps["dispatch"].ok and report.dispatch.sent >= 1
    assert "errors_high" in capsys.readouterr().out


def test_cli_monitor_once_delivers_what_it_detected(tmp_path, state_url, capsys):
    """A cron run: the new group waits group_wait, so ``--once`` keeps flushing until it
    is sent (and no longer: the next timer, group_interval, is left to the next run)."""
    cfg = cli_config(
        tmp_path, state_url, {"score": False, "reprice": False},
        notifications={"receivers": [{"name": "stdout", "type": "console"}], "group_wait": "2s"},
    )  # fmt: skip
    t0 = time.monotonic()
    main(["--config", str(cfg), "monitor", "--once"])
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert "[stdout] [FIRING:1] errors_high (critical)" in out
    assert 1.5 <= took < 20, took
    assert "group_wait" in main_help(["monitor", "--help"])


def main_help(args: list[str]) -> str:
    from click.testing import CliRunner

    from mlflow_llmops.cli import cli

    return CliRunner().invoke(cli, args).output
