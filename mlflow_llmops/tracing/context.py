"""Per-request metadata (user, session, task type, route, tenant) for every trace started
inside, through MLflow's own ``mlflow.tracing.context`` so MLflow's keys are used."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow_llmops.core import keys


@contextlib.contextmanager
def _request_context(
    *,
    user: str | None = None,
    session: str | None = None,
    task_type: str | None = None,
    route: str | None = None,
    tenant: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Iterator[None]:
    import mlflow

    meta = dict(metadata or {})
    for key, value in ((keys.TASK_TYPE, task_type), (keys.ROUTE, route), (keys.TENANT, tenant)):
        if value is not None:
            meta[key] = str(value)
    with mlflow.tracing.context(
        metadata=meta or None,
        user=None if user is None else str(user),
        session_id=None if session is None else str(session),
    ):
        yield


def request_context(
    *,
    user: str | None = None,
    session: str | None = None,
    task_type: str | None = None,
    route: str | None = None,
    tenant: str | None = None,
    metadata: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Tag the traces of one request. A context manager and a decorator::

        with request_context(user="u1", session="s1", route="/chat", tenant="acme"):
            handle(request)

        @request_context(task_type="summarize")
        def summarize(text): ...

    ``route`` and ``tenant`` also select per-route / per-tenant sampling ratios.
    """
    return _request_context(
        user=user,
        session=session,
        task_type=task_type,
        route=route,
        tenant=tenant,
        metadata=metadata,
    )
