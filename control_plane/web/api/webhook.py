from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from control_plane.errors import DomainError
from control_plane.metrics import RUNPOD_PROGRESS, RUNPOD_WEBHOOKS
from control_plane.runpod import webhook
from control_plane.web.deps import PlatformDep, SessionDep

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
    session: SessionDep,
    dispatch_id: str = Query("", alias="dispatch"),
    token: str = Query(""),
) -> dict[str, str]:
    """RunPod's completion callback: authenticated by the dispatch's token in the URL (before
    the body is read); idempotent, so RunPod's re-sends change nothing."""
    try:
        await run_in_threadpool(webhook.authenticate, session, dispatch_id, token)
        body = await request.body()
        answer = await run_in_threadpool(
            webhook.receive, session, platform.settings, platform.storage, dispatch_id, body
        )
    except DomainError as exc:
        RUNPOD_WEBHOOKS.labels(type(exc).__name__.lower()).inc()
        raise
    RUNPOD_WEBHOOKS.labels(answer["status"]).inc()
    return answer


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
    session: SessionDep,
    dispatch_id: str = Query("", alias="dispatch"),
    token: str = Query(""),
) -> dict[str, str]:
    """The worker's progress posts: results stored so far, authenticated like the webhook by
    the dispatch's token in the URL; applied without ending the dispatch, once per image."""
    try:
        await run_in_threadpool(webhook.authenticate, session, dispatch_id, token)
        body = await request.body()
        answer = await run_in_threadpool(
            webhook.receive_progress, session, platform.storage, dispatch_id, body
        )
    except DomainError as exc:
        RUNPOD_PROGRESS.labels(type(exc).__name__.lower()).inc()
        raise
    RUNPOD_PROGRESS.labels(answer["status"]).inc()
    return answer
