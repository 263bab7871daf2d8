from collections.abc import Awaitable, Callable

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter
from sqlmodel import Session

from control_plane.errors import DomainError
from control_plane.metrics import RUNPOD_PROGRESS, RUNPOD_WEBHOOKS
from control_plane.platform import Platform
from control_plane.runpod import webhook
from control_plane.runpod.webhook import Answer, Post
from control_plane.web.deps import PlatformDep

router = APIRouter(prefix="/api/webhook", tags=["webhook"])


@router.get("/runpod")
def webhook_health() -> dict[str, str]:
    """Health check for the RunPod webhook."""
    return {"status": "ok"}


@router.post(
    "/runpod",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": webhook.BODY_SCHEMA}},
        }
    },
)
async def runpod_webhook(
    request: Request,
    platform: PlatformDep,
    dispatch_id: str = Query("", alias="dispatch"),
    token: str = Query(""),
) -> Answer:
    """RunPod's completion callback: authenticated by the dispatch's token in the URL (before
    the body is parsed); idempotent, so RunPod's re-sends change nothing. Webhooks that
    arrive while others are applied are checked and applied together, in one transaction
    (`platform.webhooks`), taking their turn among the `reports_at_once` this process
    applies at a time."""
    post = Post(dispatch_id, token, await request.body())
    return await _counted(platform.webhooks.run(post), RUNPOD_WEBHOOKS)


@router.post(
    "/runpod/progress",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": webhook.PROGRESS_SCHEMA}},
        }
    },
)
async def runpod_progress(
    request: Request,
    platform: PlatformDep,
    dispatch_id: str = Query("", alias="dispatch"),
    token: str = Query(""),
) -> dict[str, str]:
    """The worker's progress posts: results stored so far, authenticated like the webhook by
    the dispatch's token in the URL; applied without ending the dispatch, once per image."""

    def apply(session: Session, body: bytes) -> Answer:
        return webhook.receive_progress(session, platform.storage, dispatch_id, body)

    checked = _authenticated(request, platform, dispatch_id, token, apply)
    return await _counted(checked, RUNPOD_PROGRESS)


async def _authenticated(
    request: Request,
    platform: Platform,
    dispatch_id: str,
    token: str,
    apply: Callable[[Session, bytes], Answer],
) -> Answer:
    """`apply` the body once the dispatch's token is checked (the body is read only then),
    at most `reports_at_once` at a time in this process.

    Each step is one hop to a worker thread with a session of its own (a `SessionDep` would
    add two hops: FastAPI opens and closes it in threads of their own). The check's
    connection is back in the pool before the report waits for its turn, so a burst of
    reports cannot take every connection the process has."""

    def check() -> None:
        with platform.session() as session:
            webhook.authenticate(session, dispatch_id, token)

    def apply_in_session(body: bytes) -> Answer:
        with platform.session() as session:
            return apply(session, body)

    await run_in_threadpool(check)
    body = await request.body()
    return await anyio.to_thread.run_sync(apply_in_session, body, limiter=platform.reports)


async def _counted(answer: Awaitable[Answer], outcomes: Counter) -> Answer:
    """`answer`, its outcome counted in `outcomes` by its status or its error's kind."""
    try:
        answered = await answer
    except DomainError as exc:
        outcomes.labels(type(exc).__name__.lower()).inc()
        raise
    outcomes.labels(answered["status"]).inc()
    return answered
