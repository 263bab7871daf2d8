import hmac
import logging

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from control_plane.api.deps import PlatformDep, SessionDep, commit_after
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


@router.post("/runpod")
async def runpod_webhook(
    body: RunPodJobState,
    platform: PlatformDep,
    session: SessionDep,
    dispatch_id: str = Query(alias="dispatch"),
    token: str = Query(),
) -> dict[str, str]:
    """RunPod's completion callback. Unsigned, so authenticated by the per-dispatch token in
    the URL; idempotent, so RunPod's re-sends change nothing."""
    row = await run_in_threadpool(session.get, Dispatch, dispatch_id)
    if row is None or not hmac.compare_digest(row.webhook_token, token):
        log.warning("webhook with a wrong token for dispatch %s", dispatch_id)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid webhook token")
    if body.status not in {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}:
        return {"status": "ignored", "reason": f"{body.status} is not a final state"}
    retries = await run_in_threadpool(
        commit_after,
        session,
        lambda: apply_state(session, platform.settings, platform.storage, dispatch_id, body),
    )
    platform.spawn(dispatch.send_many(platform, retries))
    return {"status": "accepted"}
