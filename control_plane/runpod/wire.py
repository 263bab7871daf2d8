"""What travels between the control plane and RunPod: the `/run` body, the job state that
the webhook posts and `/status` answers, and how those states read in pixelfleet's terms."""

import contextlib
import json
from typing import Any, Final
from urllib.parse import urlencode

from pydantic import BaseModel, ValidationError

from control_plane.lifecycle import DispatchReport
from control_plane.models import Dispatch
from control_plane.settings import Settings
from shared.contract import DispatchInput, DispatchOutput

FINAL_STATES: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
WEBHOOK_PATH: Final = "/api/webhook/runpod"


class RunPodJobState(BaseModel):
    """What RunPod's webhook posts and `/status` answers (extra keys ignored)."""

    id: str
    status: str
    output: Any = None
    error: Any = None
    delayTime: int | None = None
    executionTime: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATES


def lost(runpod_job_id: str) -> DispatchReport:
    """A job RunPod's `/status` no longer knows (past its ttl, or gone with a restarted
    endpoint): lost by RunPod, not failed by the worker."""
    return DispatchReport(
        runpod_job_id=runpod_job_id,
        runpod_status=None,
        results=None,
        failure="RunPod no longer knows this job (expired or lost)",
        lost=True,
    )


def run_body(
    settings: Settings, dispatch: Dispatch, dispatch_input: DispatchInput
) -> dict[str, Any]:
    """The `/run` body: the worker's input, our webhook, and RunPod's execution policy."""
    return {
        "input": dispatch_input.model_dump(mode="json"),
        "webhook": webhook_url(settings.public_url, dispatch),
        "policy": {
            "executionTimeout": settings.dispatch_execution_timeout_s * 1000,
            "ttl": settings.dispatch_ttl_s * 1000,
        },
    }


def webhook_url(public_url: str, dispatch: Dispatch) -> str:
    """RunPod's webhooks are unsigned and carry no headers: the URL holds the dispatch's own
    unguessable token."""
    query = urlencode({"dispatch": dispatch.id, "token": dispatch.webhook_token})
    return f"{public_url.rstrip('/')}{WEBHOOK_PATH}?{query}"


def report_of(state: RunPodJobState) -> DispatchReport:
    """A final RunPod state as pixelfleet reads it: the worker's results, or why none."""
    output, failure = _parse_output(state)
    return DispatchReport(
        runpod_job_id=state.id,
        runpod_status=state.status,
        results=output.results if output else None,
        failure=failure,
        delay_ms=state.delayTime,
        execution_ms=state.executionTime,
    )


def _parse_output(state: RunPodJobState) -> tuple[DispatchOutput | None, str]:
    if state.status != "COMPLETED":
        return None, describe_failure(state)
    if not state.output:
        return None, "RunPod reported COMPLETED without output (the worker's result was lost)"
    try:
        return DispatchOutput.model_validate(state.output), ""
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        return None, f"worker output does not match the contract: {problems}"


def describe_failure(state: RunPodJobState) -> str:
    """A person-readable reason from RunPod's status and `error` (a JSON string when the
    handler raised)."""
    error = state.error
    if isinstance(error, str):
        with contextlib.suppress(ValueError):
            error = json.loads(error)
    if isinstance(error, dict):
        kind, message = error.get("error_type"), error.get("error_message") or error.get("error")
        detail = f"{kind}: {message}" if kind and message else str(message or error)
    else:
        detail = str(error) if error else ""
    default = {
        "TIMED_OUT": "RunPod timed the job out (executionTimeout)",
        "CANCELLED": "the RunPod job was cancelled",
    }.get(state.status, f"RunPod job {state.status}")
    return detail or default
