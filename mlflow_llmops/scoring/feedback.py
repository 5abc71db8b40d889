"""End-user feedback (thumbs, rating, comment) on a trace, as MLflow assessments.

Services call ``record_user_feedback`` from their feedback endpoint with the
trace id they returned to the client (e.g. from ``mlflow.get_active_trace_id()``
or the response header). Values land as HUMAN feedback named ``user_thumbs``,
``user_rating`` and ``user_comment``, so they show in the MLflow UI and in
``llmops_assessments`` next to the scorers' results.
"""

from __future__ import annotations

from mlflow.entities import Assessment, AssessmentSource, Feedback

from mlflow_llmops.errors import LlmopsError

THUMBS = "user_thumbs"
RATING = "user_rating"
COMMENT = "user_comment"


class FeedbackError(LlmopsError, ValueError):
    """The feedback given is invalid; nothing was logged."""


def record_user_feedback(
    trace_id: str,
    *,
    user_id: str,
    thumbs_up: bool | None = None,
    rating: int | None = None,
    rating_scale: int = 5,
    comment: str | None = None,
    tracking_uri: str | None = None,
) -> list[Assessment]:
    """Log one user's feedback on ``trace_id``; at least one of thumbs, rating, comment.

    The comment becomes the rationale of the thumbs/rating feedback, or its own
    ``user_comment`` feedback when given alone. ``tracking_uri`` defaults to
    MLflow's current one (what the service's tracing writes to).
    """
    if not trace_id:
        raise FeedbackError("trace_id is required (the id of the trace the user rated)")
    if not user_id:
        raise FeedbackError("user_id is required (who gave the feedback)")
    if thumbs_up is None and rating is None and not comment:
        raise FeedbackError("give at least one of thumbs_up, rating or comment")
    if thumbs_up is not None and not isinstance(thumbs_up, bool):
        raise FeedbackError(f"thumbs_up must be true or false, got {thumbs_up!r}")
    if rating is not None and (
        isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= rating_scale
    ):
        raise FeedbackError(f"rating must be an integer from 1 to {rating_scale}, got {rating!r}")
    from mlflow.tracing.client import TracingClient

    client = TracingClient(tracking_uri)
    source = AssessmentSource(source_type="HUMAN", source_id=user_id)
    logged = []
    entries: list[tuple[str, object, dict[str, str]]] = []
    if thumbs_up is not None:
        entries.append((THUMBS, thumbs_up, {}))
    if rating is not None:
        entries.append((RATING, rating, {"llmops.rating_scale": str(rating_scale)}))
    if not entries:
        entries.append((COMMENT, comment, {}))
    for name, value, meta in entries:
        logged.append(
            client.log_assessment(
                trace_id,
                Feedback(
                    name=name,
                    value=value,
                    source=source,
                    rationale=comment if name != COMMENT else None,
                    metadata=meta or None,
                ),
            )
        )
    return logged
