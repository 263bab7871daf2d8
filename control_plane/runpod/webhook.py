"""RunPod's completion callback. Unsigned, so authenticated by the per-dispatch token in its
URL (checked before the body is parsed); idempotent, so RunPod's re-sends change nothing. A report
that cannot be applied is answered 503, so RunPod sends it again (`finisher.py` counts it).

The worker's progress posts (contract version 3) come to a URL next to it, with the same token:
results stored so far, applied without ending the dispatch (`lifecycle.apply_progress`)."""

import functools
import hmac
import logging
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError
from sqlmodel import Session, col, select

from control_plane import lifecycle
from control_plane.errors import (
    DomainError,
    InvalidRequest,
    Unauthorized,
    Unavailable,
    describe_validation,
)
from control_plane.lifecycle import DispatchReport
from control_plane.metrics import RUNPOD_WEBHOOK_BATCHES
from control_plane.models import Dispatch
from control_plane.runpod.finisher import Outcome, apply_report, apply_reports
from control_plane.runpod.wire import RunPodJobState, report_of
from control_plane.settings import Settings
from shared.contract import ProgressReport
from shared.ids import is_id
from shared.storage import Storage

log = logging.getLogger(__name__)
BodyT = TypeVar("BodyT", bound=BaseModel)
Answer = dict[str, str]
BODY_SCHEMA = RunPodJobState.model_json_schema()
PROGRESS_SCHEMA = ProgressReport.model_json_schema()


class Post(NamedTuple):
    """A webhook as it came: the dispatch and token of its URL, its body unread."""

    dispatch_id: str
    token: str
    body: bytes


def authenticate(session: Session, dispatch_id: str, token: str) -> None:
    """Unauthorized unless `token` is the dispatch's own webhook token."""
    error = _refusal(_tokens(session, [dispatch_id]), dispatch_id, token)
    if error is not None:
        raise error


def _tokens(session: Session, dispatch_ids: Sequence[str]) -> dict[str, str]:
    """The webhook tokens of those of `dispatch_ids` that exist, in one query (one column:
    a row is read whole once it is locked)."""
    ids = [dispatch_id for dispatch_id in dispatch_ids if is_id("dsp", dispatch_id)]
    if not ids:
        return {}
    query = select(Dispatch.id, Dispatch.webhook_token).where(col(Dispatch.id).in_(ids))
    return dict(session.exec(query).all())


def _refusal(tokens: dict[str, str], dispatch_id: str, token: str) -> Unauthorized | None:
    """Unauthorized, unless `token` is the dispatch's own in `tokens`."""
    known = tokens.get(dispatch_id)
    if known is not None and hmac.compare_digest(known.encode(), token.encode()):
        return None
    log.warning("webhook with a wrong or missing token for dispatch %r", dispatch_id[:80])
    return Unauthorized("invalid webhook token")


def receive(
    session: Session, settings: Settings, storage: Storage, posts: Sequence[Post]
) -> list[Answer | DomainError]:
    """Apply webhooks' job states to their dispatches, together where they can be
    (`finisher.apply_reports`; commits); each one's answer for RunPod, or the error to answer
    it with. Each token is checked before its body is parsed. A dispatch's second webhook
    among them is applied after its first."""
    RUNPOD_WEBHOOK_BATCHES.observe(len(posts))
    answers: dict[int, Answer | DomainError] = {}
    finals: list[tuple[int, str, RunPodJobState]] = []
    tokens = _tokens(session, [post.dispatch_id for post in posts])
    for index, (dispatch_id, token, body) in enumerate(posts):
        if (refusal := _refusal(tokens, dispatch_id, token)) is not None:
            answers[index] = refusal
            continue
        try:
            state = _parse(RunPodJobState, body, "a RunPod job state")
        except InvalidRequest as exc:
            answers[index] = exc
            continue
        if state.final:
            finals.append((index, dispatch_id, state))
        else:
            answers[index] = {"status": "ignored", "reason": f"{state.status} is not a final state"}
    together: dict[str, DispatchReport] = {}
    first: dict[str, int] = {}
    for index, dispatch_id, state in finals:
        if dispatch_id in first:
            continue
        try:
            together[dispatch_id] = report_of(state)
        except Exception:  # applied alone below, where reading it is counted as a failure
            continue
        first[dispatch_id] = index
    outcomes = apply_reports(session, settings, storage, together)
    for index, dispatch_id, state in finals:
        if first.get(dispatch_id) != index:
            read = functools.partial(report_of, state)
            outcomes[dispatch_id] = apply_report(session, settings, storage, dispatch_id, read)
        answers[index] = _answer(outcomes[dispatch_id])
    return [answers[index] for index in range(len(posts))]


def _answer(outcome: Outcome) -> Answer | DomainError:
    if outcome is Outcome.TRY_AGAIN:
        return Unavailable("this report could not be applied yet; send it again")
    if outcome is Outcome.FAILED:
        return {"status": "failed", "reason": "this report could not be applied"}
    return {"status": "accepted"}


def receive_progress(
    session: Session, storage: Storage, dispatch_id: str, body: bytes
) -> dict[str, str]:
    """Apply a worker's progress post to the dispatch (commits); the answer for the worker.
    A dispatch that is not running (ended, or its send not yet recorded) ignores it: the
    dispatch's output carries every result anyway."""
    report = _parse(ProgressReport, body, "a progress report")
    if report.dispatch_id != dispatch_id:
        raise InvalidRequest(f"the report is for dispatch {report.dispatch_id[:80]!r}")
    applied = lifecycle.apply_progress(session, storage, dispatch_id, report.results)
    session.commit()
    if not applied:
        return {"status": "ignored", "reason": "the dispatch is not running"}
    return {"status": "accepted"}


def _parse(model: type[BodyT], body: bytes, what: str) -> BodyT:
    """`body` as `model`, or InvalidRequest naming `what` it should be and its problems."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(include_input=False)) or "body: invalid"
        raise InvalidRequest(f"not {what}: {problems}") from None
