"""Webhooks to users' own URLs: checked at submit, turned into deliveries by a consumer.

A submission's `webhook` ({url, events}) is stored on each of its jobs (`Job.webhook`). The
`user-webhooks` consumer turns the domain events of those jobs into `WebhookDelivery` rows, a
durable outbox written with the consumer's cursor (so each event makes its delivery exactly
once); `control_plane/deliveries.py` sends them, signed with the job owner's secret.
"""

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session, col, select

from control_plane.background import Service
from control_plane.db import wake_after_commit
from control_plane.errors import InvalidRequest
from control_plane.events import Consumer, each_job_event
from control_plane.models import (
    Event,
    EventKind,
    Job,
    Output,
    OutputKind,
    OutputStatus,
    User,
    WebhookDelivery,
)
from control_plane.schemas import WebhookEvent, WebhookRequest
from control_plane.settings import Settings
from shared.hosts import is_public_address

CONSUMER = "user-webhooks"
COUNTS = ("succeeded", "failed", "blocked")
IMAGE_EVENTS = {
    EventKind.OUTPUT_SUCCEEDED: (WebhookEvent.IMAGE_SUCCEEDED, OutputStatus.SUCCEEDED),
    EventKind.OUTPUT_FAILED: (WebhookEvent.IMAGE_FAILED, OutputStatus.FAILED),
    EventKind.OUTPUT_BLOCKED: (WebhookEvent.IMAGE_BLOCKED, OutputStatus.BLOCKED),
}
SECRET_COMMAND = "pixelfleet users webhook-secret"


# -- at submit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A submission's webhook whose URL passed `check`, to store on the jobs it makes."""

    settings: Settings
    stored: dict[str, Any]  # Job.webhook: {url, events}

    def attach(self, session: Session, jobs: Sequence[Job]) -> None:
        """Store it on `jobs` (just planned: their owner is known and may see the group), or
        422 when their owner has no secret to sign its messages with."""
        for job in jobs:
            if signing_secret(session, self.settings, job.user_id) is None:
                raise InvalidRequest(_no_secret(session, job.user_id))
            job.webhook = dict(self.stored)
            session.add(job)


def check(settings: Settings, request: WebhookRequest | None) -> Checked | None:
    """A submission's webhook, or 422 for a URL production does not accept."""
    if request is None:
        return None
    problem = url_problem(request.url, production=settings.environment == "production")
    if problem:
        raise InvalidRequest(f"webhook.url: {problem}")
    events = [str(event) for event in dict.fromkeys(request.events)]
    return Checked(settings, {"url": request.url, "events": events})


def url_problem(url: str, *, production: bool) -> str | None:
    """Why messages may not go to `url`, or None. Outside production any http(s) URL will do
    (the schema checked that); in production only https to public addresses (every address
    its host resolves to: loopback, private, link-local and reserved ones are refused)."""
    if not production:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https":
        return f"{url} is not https (production sends webhooks over https only)"
    host = parts.hostname or ""
    try:
        found = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"the host {host} of {url} does not resolve"
    addresses = sorted({str(info[4][0]) for info in found})
    private = [address for address in addresses if not is_public_address(address)]
    if private:
        return (
            f"the host {host} of {url} is at {', '.join(private)}, not a public address "
            "(production sends webhooks to public addresses only)"
        )
    return None


def signing_secret(session: Session, settings: Settings, user_id: str | None) -> str | None:
    """The `whsec_…` secret signing the webhooks of `user_id`'s jobs; None when there is none.
    Jobs without a user (the local user, the admin password) use PIXELFLEET_WEBHOOK_SECRET."""
    if user_id is None:
        return settings.webhook_secret or None
    user = session.get(User, user_id)
    return user.webhook_secret if user is not None else None


def _no_secret(session: Session, owner: str | None) -> str:
    if owner is None:
        return (
            "webhooks of jobs without a user (the local user, the admin password) are signed "
            "with PIXELFLEET_WEBHOOK_SECRET, which is not set: set it to whsec_ followed by "
            "base64 of 32 random bytes, and restart"
        )
    user = session.get(User, owner)
    name = user.name if user is not None else owner
    return (
        f"user {name} has no secret to sign webhooks with: an admin makes one with "
        f"`{SECRET_COMMAND} {name}` (it is shown once: keep it to verify the signatures)"
    )


# -- the consumer ------------------------------------------------------------------------------


def delivery_consumer(settings: Settings) -> Consumer:
    """Writes a delivery for each event of a job whose webhook asks for it."""

    def handle(session: Session, event: Event, job: Job) -> None:
        if not job.webhook:
            return
        event_type = _event_type(event)
        if event_type is None or event_type not in job.webhook.get("events", ()):
            return
        session.add(
            WebhookDelivery(
                user_id=job.user_id,
                job_id=job.id,
                event_type=event_type,
                url=job.webhook["url"],
                payload=payload(session, settings, event, job, event_type),
            )
        )
        wake_after_commit(session, Service.WEBHOOKS)

    kinds = frozenset({EventKind.JOB_FINISHED, *IMAGE_EVENTS})
    return Consumer(CONSUMER, kinds, each_job_event(handle))


def _event_type(event: Event) -> WebhookEvent | None:
    if event.kind == EventKind.JOB_FINISHED:
        return WebhookEvent(f"job.{event.data['status']}")
    found = IMAGE_EVENTS.get(EventKind(event.kind))
    return found[0] if found else None


def payload(
    session: Session, settings: Settings, event: Event, job: Job, event_type: WebhookEvent
) -> dict[str, Any]:
    """The message, as Standard Webhooks shapes it: `{type, timestamp, data}`."""
    data: dict[str, Any] = {"job": _job(event, job)}
    if event.kind in IMAGE_EVENTS and event.output_id:
        data["image"] = _image(session, settings, event)
    return {"type": str(event_type), "timestamp": _iso(event.created_at), "data": data}


def _job(event: Event, job: Job) -> dict[str, Any]:
    """The job as it was when `event` happened (a job's end carries its counts)."""
    facts = event.data if event.kind == EventKind.JOB_FINISHED else {}
    return {
        "id": job.id,
        "group_id": job.group_id,
        "batch_id": job.batch_id,
        "mode": job.mode,
        "status": facts.get("status", job.status),
        "total": job.total,
        **{name: facts.get(name, getattr(job, name)) for name in COUNTS},
        "error": job.error if event.kind == EventKind.JOB_FINISHED else None,
        "created_at": _iso(job.created_at),
        "completed_at": _iso(job.completed_at) if job.completed_at else None,
    }


def _image(session: Session, settings: Settings, event: Event) -> dict[str, Any]:
    _, status = IMAGE_EVENTS[EventKind(event.kind)]
    output = session.get(Output, event.output_id)
    has_file = output is not None and output.kind == OutputKind.IMAGE
    url = (
        f"{settings.public_url.rstrip('/')}/api/outputs/{event.output_id}/file"
        if status == OutputStatus.SUCCEEDED and has_file
        else None
    )
    return {
        "id": event.output_id,
        "position": output.position if output is not None else None,
        "status": str(status),
        "error": event.data.get("error"),
        "url": url,
    }


def _iso(moment: datetime) -> str:
    return moment.isoformat() + "Z"


# -- reading ------------------------------------------------------------------------------------


def deliveries(
    session: Session, job_id: str, limit: int, after: str | None = None
) -> Sequence[WebhookDelivery]:
    """Up to `limit` of a job's deliveries after the one `after` (ids sort by creation), oldest
    first."""
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    if after:
        query = query.where(col(WebhookDelivery.id) > after)
    return session.exec(query.order_by(col(WebhookDelivery.id)).limit(limit)).all()
