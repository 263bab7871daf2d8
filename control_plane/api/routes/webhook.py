import hmac
import logging

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from control_plane.api.deps import PlatformDep, SessionDep, commit_after
from control_plane.errors import InvalidRequest
from control_plane.models import Dispatch
from control_plane.schemas import RunPodJobState
from control_plane.services import dispatch
from control_plane.services.finalise import apply_state

router = APIRouter(prefix="/api/webhook", tags=["webhook"])
log = logging.getLogger(__name__)


@router.get("/runpod")
def webhook_health() -> dict[str, str]:
    """Health check for the RunPod webhook."""
    return {"status": "ok"}


@router.post(
    "/runpod",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RunPodJobState.model_json_schema()}},
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
    """RunPod's completion callback. Unsigned, so authenticated by the per-dispatch token in
    the URL (checked before the body is read); idempotent, so RunPod's re-sends change
    nothing."""
    row = await run_in_threadpool(session.get, Dispatch, dispatch_id) if dispatch_id else None
    if row is None or not hmac.compare_digest(row.webhook_token.encode(), token.encode()):
        log.warning("webhook with a wrong or missing token for dispatch %r", dispatch_id[:80])
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid webhook token")
    body = await _state(request)
    if body.status not in {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}:
        return {"status": "ignored", "reason": f"{body.status} is not a final state"}
    retries = await run_in_threadpool(
        commit_after,
        session,
        lambda: apply_state(session, platform.settings, platform.storage, dispatch_id, body),
    )
    platform.spawn(dispatch.send_many(platform, retries))
    return {"status": "accepted"}


async def _state(request: Request) -> RunPodJobState:
    try:
        return RunPodJobState.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_input=False)
        )
        raise InvalidRequest(f"not a RunPod job state: {problems}") from None
