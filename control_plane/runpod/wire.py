"""What travels between the control plane and RunPod: the `/run` body, the job state that
the webhook posts and `/status` answers, and how those states read in pixelfleet's terms."""

import contextlib
import json
import logging
from typing import Any, Final, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, ValidationError

from control_plane.errors import describe_validation
from control_plane.lifecycle import DispatchReport, UnreadableResult
from control_plane.models import Dispatch, bounded
from control_plane.settings import Settings
from shared.contract import CONTRACT_VERSION, BatchOutput, DispatchInput, ItemResult

log = logging.getLogger(__name__)

FINAL_STATES: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
WEBHOOK_PATH: Final = "/api/webhook/runpod"
PROGRESS_PATH: Final = "/api/webhook/runpod/progress"


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


def progress_url(public_url: str, dispatch: Dispatch) -> str:
    """Where the worker posts the dispatch's results as they are stored: authenticated like
    the webhook, by the dispatch's token in the URL."""
    query = urlencode({"dispatch": dispatch.id, "token": dispatch.webhook_token})
    return f"{public_url.rstrip('/')}{PROGRESS_PATH}?{query}"


def report_of(state: RunPodJobState) -> DispatchReport:
    """A final RunPod state as pixelfleet reads it: the worker's results, or why none.
    Timings no column can hold are dropped (they fail nothing)."""
    if state.status == "COMPLETED" and isinstance(state.output, dict) and "task" in state.output:
        return _batch_report(state)
    results, failure = _parse_output(state)
    return DispatchReport(
        runpod_job_id=state.id,
        runpod_status=state.status,
        results=results,
        failure=failure,
        delay_ms=bounded(state.delayTime),
        execution_ms=bounded(state.executionTime),
    )


def _batch_report(state: RunPodJobState) -> DispatchReport:
    """A batch_submit, batch_poll or batch_cancel task's BatchOutput (the only outputs that
    name their task): the batch as the worker saw it, and the items a submit left out."""
    delay_ms, execution_ms = bounded(state.delayTime), bounded(state.executionTime)
    try:
        output = BatchOutput.model_validate(state.output)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(include_url=False, include_input=False))
        failure = f"worker output does not match the contract: {problems}"
        return DispatchReport(
            state.id, state.status, None, failure, delay_ms=delay_ms, execution_ms=execution_ms
        )
    left_out: list[ItemResult | UnreadableResult] = list(output.results)
    return DispatchReport(
        state.id,
        state.status,
        left_out,
        delay_ms=delay_ms,
        execution_ms=execution_ms,
        batch_task=output.task,
        batch=output.batch,
    )


class _ResultsUnread(BaseModel):
    """The contract's DispatchOutput with its results still unread: each is read on its own,
    so that one result that does not match fails its image, not its neighbours."""

    model_config = ConfigDict(extra="forbid")
    # Outputs of versions 1 to 4 read the same (1 had no text results; 3 added progress and
    # 4 batch tasks, neither of which changes a generate task's output).
    version: Literal[1, 2, 3, 4] = CONTRACT_VERSION
    dispatch_id: str
    results: list[Any]


def _parse_output(state: RunPodJobState) -> tuple[list[ItemResult | UnreadableResult] | None, str]:
    if state.status != "COMPLETED":
        return None, describe_failure(state)
    if not state.output:
        return None, "RunPod reported COMPLETED without output (the worker's result was lost)"
    try:
        output = _ResultsUnread.model_validate(state.output)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        return None, f"worker output does not match the contract: {problems}"
    results = (_parse_result(item) for item in output.results)
    return [result for result in results if result is not None], ""


def _parse_result(item: Any) -> ItemResult | UnreadableResult | None:
    """One result, or why it cannot be read; None when it does not even say which image."""
    try:
        return ItemResult.model_validate(item)
    except ValidationError as exc:
        output_id = item.get("output_id") if isinstance(item, dict) else None
        if not isinstance(output_id, str):
            log.warning("a worker result naming no output was ignored")
            return None
        problems = describe_validation(exc.errors(include_url=False, include_input=False))
        return UnreadableResult(output_id, f"does not match the contract: {problems}")


def describe_failure(state: RunPodJobState) -> str:
    """A person-readable reason from RunPod's status and `error` (a JSON string when the
    handler raised)."""
    error = state.error
    if isinstance(error, str) and error.lstrip().startswith("{"):
        with contextlib.suppress(ValueError, RecursionError):  # nested too deep
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
