"""Cancels at RunPod what nobody wants any more: a consumer of `dispatch_failed` events.

A dispatch that failed while RunPod knew it (a user cancelled its job) leaves a RunPod job that
would run and bill for nothing. Cancelling twice is harmless, so running at least once is
enough; a RunPod job already finished answers an error that is only logged.
"""

from sqlmodel import Session

from control_plane.events import Consumer, each_event
from control_plane.models import Event, EventKind
from control_plane.platform import Platform
from control_plane.runpod.sender import cancel_quietly


def canceller(platform: Platform) -> Consumer:
    def handle(_session: Session, event: Event) -> None:
        runpod_job_id = event.data.get("runpod_job_id")
        if runpod_job_id and not event.data.get("retry"):
            platform.call(cancel_quietly(platform, runpod_job_id))

    kinds = frozenset({EventKind.DISPATCH_FAILED})
    return Consumer("runpod-canceller", kinds, each_event(handle))
