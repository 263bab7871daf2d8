"""The sender: the only code that hands dispatches to RunPod (`POST /run`).

Writers leave dispatches `pending` and wake the sender when they commit; its timer also
retries sends that failed. Each dispatch is claimed (pending → submitting) by one sender at a
time; a claim older than `stale_claim` is taken over, so a crash between claim and record never
strands a chunk (unless that was its last send: then the dispatch fails, see `lifecycle.claim`).
RunPod's webhook may arrive before `/run` has returned: it is routed by the dispatch id in its
URL, so the order does not matter.

Each pass sends in rounds of at most BATCH, each planned afresh in the fair order and within
the caps of `control_plane/queueing.py` (work queued meanwhile takes its turn in the next
round); the caps are checked again as each dispatch is claimed, since other processes send
too. `/run` calls are paced by this process's token bucket (`Platform.run_bucket`), a token
taken before the claim, so a claim never waits for one.
"""

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlmodel import Session, col, select

from control_plane import lifecycle, queueing
from control_plane.models import Dispatch, Output, OutputKind, utcnow
from control_plane.platform import Platform
from control_plane.runpod.client import RunPodError
from control_plane.runpod.wire import progress_url, run_body
from control_plane.services import references
from shared import layout
from shared.contract import (
    ITEM_TASKS,
    NAMED_BATCH_TASKS,
    DispatchInput,
    DispatchTask,
    ImageParams,
    Task,
    WorkItem,
)
from shared.storage import Storage

log = logging.getLogger(__name__)
STALE_CLAIM_MARGIN_S = 30.0  # the claim's and the record's own database work, lock waits included
SEND_CONCURRENCY = 8
# the tasks whose worker reads the images' references (a batch's collect no longer does)
READS_REFERENCES = frozenset({DispatchTask.GENERATE, DispatchTask.BATCH_SUBMIT})
BATCH = 200


def stale_claim(platform: Platform) -> timedelta:
    """How old a claim must be to be taken over: `dispatch_stale_claim_s`, by default the
    longest a `/run` call can take (its retries included) plus a margin, so a sender still
    waiting for RunPod's answer is never overtaken (that would run the chunk twice)."""
    seconds = platform.settings.dispatch_stale_claim_s
    return timedelta(seconds=seconds or platform.runpod.longest_call_s + STALE_CLAIM_MARGIN_S)


async def send_due(platform: Platform) -> int:
    """Send every dispatch that waits (one pass); returns how many were tried.

    A dispatch whose send fails in this pass waits for the next one (a wake or the timer),
    so an outage at RunPod is retried at the timer's pace, not in a tight loop.
    """
    started, tried = utcnow(), 0
    while True:
        due = await asyncio.to_thread(_due, platform, started)
        await _send_all(platform, due)
        tried += len(due)
        if len(due) < BATCH:
            return tried


def _due(platform: Platform, started: datetime) -> list[str]:
    with platform.session() as session:
        return queueing.plan(session, platform.settings, window(platform), started, BATCH)


def window(platform: Platform) -> queueing.Window:
    """What counts as queued or in flight now (claims older than `stale_claim` are queued)."""
    return queueing.Window(utcnow(), stale_claim(platform))


async def _send_all(platform: Platform, dispatch_ids: list[str]) -> None:
    limit = asyncio.Semaphore(SEND_CONCURRENCY)

    async def send_one(dispatch_id: str) -> None:
        async with limit:
            await platform.run_bucket.take()
            await send(platform, dispatch_id)

    await asyncio.gather(*(send_one(dispatch_id) for dispatch_id in dispatch_ids))


async def send(platform: Platform, dispatch_id: str) -> None:
    claimed = await asyncio.to_thread(_claim, platform, dispatch_id)
    if claimed is None:
        return
    body, token = claimed
    try:
        runpod_job_id = await platform.runpod.run(body)
    except RunPodError as error:  # lost if retryable: an outage, so RunPod never took the job
        await asyncio.to_thread(_release, platform, dispatch_id, str(error), error.retryable)
        return
    except Exception as error:  # unknown trouble: release, so the send budget still applies
        log.exception("sending dispatch %s failed", dispatch_id)
        reason = f"{type(error).__name__}: {error}"
        await asyncio.to_thread(_release, platform, dispatch_id, reason, False)
        return
    if not await asyncio.to_thread(_record, platform, dispatch_id, runpod_job_id, token):
        await cancel_quietly(platform, runpod_job_id)


async def cancel_quietly(platform: Platform, runpod_job_id: str) -> None:
    """Ask RunPod to cancel a job; a failure is only logged (the job may be finished)."""
    try:
        await platform.runpod.cancel(runpod_job_id)
    except RunPodError as exc:
        log.info("RunPod cancel of %s: %s", runpod_job_id, exc)


def _claim(platform: Platform, dispatch_id: str) -> tuple[dict[str, object], str] | None:
    """Claim the dispatch and build its `/run` body, with the webhook token it carries (a
    batch dispatch has one per task); None if there is nothing to send now.

    Images whose reference images no longer exist (deleted since they were asked for) are
    failed with the reason, the claim is given back, and the rest go at the next pass.
    """
    with platform.session_scope() as session:
        if not queueing.has_room(session, platform.settings, window(platform), dispatch_id):
            return None
        dispatch = lifecycle.claim(session, platform.settings, dispatch_id, stale_claim(platform))
        if dispatch is None:
            return None
        task = DispatchTask(dispatch.task)
        outputs = _unsent(session, dispatch) if task in ITEM_TASKS else []
        keys = references.storage_keys(session, {r for o in outputs for r in o.reference_ids})
        gone = {
            output.id: _gone(missing)
            for output in outputs
            if task in READS_REFERENCES
            and (missing := [ref for ref in output.reference_ids if ref not in keys])
        }
        if not gone:
            progress = progress_url(platform.settings.public_url, dispatch)
            dispatch_input = _input_of(platform.storage, dispatch, outputs, keys, progress)
            return run_body(platform.settings, dispatch, dispatch_input), dispatch.webhook_token
    log.warning("dispatch %s: %d image(s) lost their references", dispatch_id, len(gone))
    with platform.session_scope() as session:
        lifecycle.drop_unsendable(session, dispatch_id, gone)
    return None


def _gone(missing: list[str]) -> str:
    return (
        f"reference image(s) {', '.join(missing)} no longer exist (deleted after this image "
        "was asked for)"
    )


def _record(platform: Platform, dispatch_id: str, runpod_job_id: str, token: str) -> bool:
    with platform.session_scope() as session:
        return lifecycle.mark_submitted(session, dispatch_id, runpod_job_id, token)


def _release(platform: Platform, dispatch_id: str, error: str, lost: bool) -> None:
    with platform.session_scope() as session:
        lifecycle.release_claim(session, platform.settings, dispatch_id, error, lost=lost)


class Unsent(NamedTuple):
    """What the worker is sent of one image (columns, not an ORM object: a dispatch can
    carry a thousand)."""

    id: str
    group_id: str
    job_id: str
    kind: str
    prompt: str
    reference_ids: list[str]
    seed: int
    params: dict[str, Any]


def _unsent(session: Session, dispatch: Dispatch) -> list[Unsent]:
    """The dispatch's images still to make, in order."""
    columns = [getattr(Output, name) for name in Unsent._fields]
    rows = session.exec(
        select(*columns)
        .where(
            Output.dispatch_id == dispatch.id,
            col(Output.status).in_(lifecycle.UNFINISHED),
        )
        .order_by(col(Output.position))
    ).all()
    return [Unsent(*row) for row in rows]


def _input_of(
    storage: Storage,
    dispatch: Dispatch,
    outputs: list[Unsent],
    keys: dict[str, str],
    progress: str,
) -> DispatchInput:
    """The worker's input for the dispatch's task: the dispatch's unfinished images (for the
    tasks that take items), references as storage URIs, where to post their results as
    they are stored, and its Gemini batch (for the tasks that name one)."""
    task = DispatchTask(dispatch.task)
    referenced = {ref for output in outputs for ref in output.reference_ids}
    uris = {ref: storage.uri(keys[ref]) for ref in referenced if ref in keys}  # see `gone`
    items = [
        _work_item(output, [uris[ref] for ref in output.reference_ids if ref in uris])
        for output in outputs
    ]
    return DispatchInput(
        dispatch_id=dispatch.id,
        job_id=dispatch.job_id,
        task=task,
        items=items if task in ITEM_TASKS else [],
        batch=dispatch.batch_name if task in NAMED_BATCH_TASKS else None,
        progress_url=progress,
    )


def _work_item(output: Unsent, reference_uris: list[str]) -> WorkItem:
    """One output as the worker's work item: an image, or a text task (its model and
    response schema are in the output's params)."""
    output_key = layout.output_stem(output.group_id, output.job_id, output.id)
    if output.kind == OutputKind.TEXT:
        model = str(output.params["model"])
        return WorkItem(
            output_id=output.id,
            task=Task.TEXT,
            prompt=output.prompt,
            params=ImageParams(model=model, seed=output.seed),
            output_key=output_key,
            text_model=model,
            response_schema=output.params.get("response_schema"),
        )
    return WorkItem(
        output_id=output.id,
        prompt=output.prompt,
        reference_uris=reference_uris,
        params=ImageParams(seed=output.seed, **output.params),
        output_key=output_key,
    )
