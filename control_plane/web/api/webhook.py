from collections.abc import Awaitable, Callable

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter

from control_plane.errors import DomainError
from control_plane.metrics import RUNPOD_PROGRESS, RUNPOD_WEBHOOKS
from control_plane.platform import Platform
from control_plane.runpod import webhook
from control_plane.runpod.webhook import Answer
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
) -> dict[str, str]:
    """RunPod's completion callback: authenticated by the dispatch's token in the URL (before
    the body is read); idempotent, so RunPod's re-sends change nothing."""

    async def apply(body: bytes) -> Answer:
        return await platform.webhooks.run((dispatch_id, body))

    return await _authenticated(request, platform, dispatch_id, token, apply, RUNPOD_WEBHOOKS)


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

    def apply_in_session(body: bytes) -> Answer:
        with platform.session() as session:
            return webhook.receive_progress(session, platform.storage, dispatch_id, body)

    async def apply(body: bytes) -> Answer:
        return await anyio.to_thread.run_sync(apply_in_session, body, limiter=platform.reports)

    return await _authenticated(request, platform, dispatch_id, token, apply, RUNPOD_PROGRESS)


async def _authenticated(
    request: Request,
    platform: Platform,
    dispatch_id: str,
    token: str,
    apply: Callable[[bytes], Awaitable[Answer]],
    outcomes: Counter,
) -> Answer:
    """`apply` the body once the dispatch's token is checked (the body is read only then),
    each outcome counted in `outcomes` by its status or its error's kind. `apply` takes its
    turn among the `reports_at_once` this process applies at a time.

    The check is one hop to a worker thread with a session of its own (a `SessionDep` would
    add two hops: FastAPI opens and closes it in threads of their own). Its connection is
    back in the pool before the report waits for its turn, so a burst of reports cannot take
    every connection the process has."""

    def check() -> None:
        with platform.session() as session:
            webhook.authenticate(session, dispatch_id, token)

    try:
        await run_in_threadpool(check)
        answer = await apply(await request.body())
    except DomainError as exc:
        outcomes.labels(type(exc).__name__.lower()).inc()
        raise
    outcomes.labels(answer["status"]).inc()
    return answer
