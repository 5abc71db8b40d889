"""Fixtures for notifications and rollback: fake Slack / PagerDuty on 127.0.0.1, alerts."""

from __future__ import annotations

import os
from collections.abc import Callable

import binaries
import pytest
from notify_helpers import make_alert

from mlflow_llmops.alerting.model import Alert
from mlflow_llmops.statestore.state import StateStore
from mlflow_llmops.testing.fake_pagerduty import FakePagerDutyServer
from mlflow_llmops.testing.fake_slack import FakeSlackServer

# slack-sdk reads HTTP(S)_PROXY and ignores NO_PROXY
for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_k, None)


@pytest.fixture
def store(tmp_path) -> StateStore:
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.dispose()


@pytest.fixture
def slack():
    with FakeSlackServer(channels=("#alerts", "#sre")) as srv:
        yield srv


@pytest.fixture(scope="module")
def pd_server():
    with FakePagerDutyServer() as srv:
        yield srv


@pytest.fixture
def pd(pd_server):
    """The module's fake PagerDuty, emptied (TLS setup is the slow part)."""
    with pd_server.lock:
        pd_server.requests.clear()
        pd_server.events.clear()
        pd_server.change_events.clear()
        pd_server.incidents.clear()
        pd_server._faults.clear()
    pd_server.request_seen.clear()
    pd_server.hold.set()
    return pd_server


@pytest.fixture
def alert() -> Callable[..., Alert]:
    return make_alert


@pytest.fixture(scope="session")
def require_binary() -> Callable[[str], str]:
    return binaries.require_binary
