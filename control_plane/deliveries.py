"""Sending webhooks to users' own URLs: the outbox `services/webhooks.py` fills, delivered.

Each delivery is a row, so it survives restarts. A process claims due deliveries by moving
their `next_attempt_at` past the longest an attempt can take (a conditional UPDATE, on every
database): no other process sends them meanwhile, and one that died mid-attempt is retried
once its claim runs out (delivered at least once; receivers de-duplicate by `webhook-id`).
Messages are signed as Standard Webhooks asks (https://www.standardwebhooks.com): headers
`webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` + base64 of the HMAC-SHA256
of `{id}.{timestamp}.{body}`, keyed with the secret's bytes after `whsec_`). A 2xx answer is
delivery; anything else is retried after PIXELFLEET_WEBHOOK_RETRY_DELAYS_S until
PIXELFLEET_WEBHOOK_RETRY_WINDOW_S has passed since the delivery was made, then it fails.
At most PIXELFLEET_WEBHOOK_CONCURRENCY attempts run at once per process, each in a task of
its own: a receiver that hangs holds one slot for at most PIXELFLEET_WEBHOOK_TIMEOUT_S.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlmodel import col, select

from control_plane.background import Service
from control_plane.db import lock_row
from control_plane.models import DeliveryStatus, WebhookDelivery, clip, utcnow
from control_plane.platform import Platform
from control_plane.services import webhooks
from control_plane.services.users import WEBHOOK_SECRET_PREFIX
from shared.tls import tls_context

log = logging.getLogger(__name__)
CLAIM_MARGIN_S = 30.0  # beyond the request's timeout: the DNS check and the recording
MAX_ANSWER_CHARS = 200  # of a refusing receiver's answer, kept as the delivery's error


@dataclass(frozen=True)
class Claim:
    """A delivery this process may attempt until `until` (its claimed `next_attempt_at`)."""

    id: str
    url: str
    body: bytes
    secret: str | None
    until: datetime


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: a 2xx, another answer, or no answer (`error` says why)."""

    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of a message (Standard Webhooks, scheme v1)."""
    key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class Deliverer:
    """One process's sending (the `webhooks` service): each pass claims as many due
    deliveries as it has free slots and attempts each in a task of its own; a finished
    attempt wakes the service again, and a timer wakes it when the next delivery is due."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, platform: Platform) -> int:
        free = platform.settings.webhook_concurrency - len(self.in_flight)
        claims = await asyncio.to_thread(_claim, platform, free) if free > 0 else []
        for claim in claims:
            self.in_flight.add(claim.id)
            platform.spawn(self._attempt(platform, claim))
        if len(self.in_flight) >= platform.settings.webhook_concurrency:
            self._wake_when_due(platform, None)  # the next attempt to end wakes the service
        else:
            self._wake_when_due(platform, await asyncio.to_thread(_next_due, platform))
        return len(claims)

    async def _attempt(self, platform: Platform, claim: Claim) -> None:
        try:
            attempt = await post(platform, claim)
            await asyncio.to_thread(_record, platform, claim, attempt)
        finally:
            self.in_flight.discard(claim.id)
            platform.wake(Service.WEBHOOKS)

    def _wake_when_due(self, platform: Platform, due: datetime | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            delay = max((due - utcnow()).total_seconds(), 0.0) + 0.01
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(delay, platform.wake, Service.WEBHOOKS)


def _claim(platform: Platform, limit: int) -> list[Claim]:
    """Up to `limit` due deliveries, claimed for this process."""
    settings = platform.settings
    now = utcnow()
    until = now + timedelta(seconds=settings.webhook_timeout_s + CLAIM_MARGIN_S)
    claims = []
    with platform.session_scope() as session:
        due = session.exec(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(
                col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                col(WebhookDelivery.next_attempt_at) <= now,
            )
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
        ).all()
        for delivery_id, at in due:
            taken = session.execute(
                sa.update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == delivery_id,
                    col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                    col(WebhookDelivery.next_attempt_at) == at,
                )
                .values(next_attempt_at=until)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another process claimed it first
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            secret = webhooks.signing_secret(session, settings, row.user_id)
            claims.append(Claim(row.id, row.url, _body(row.payload), secret, until))
    return claims


def _body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _next_due(platform: Platform) -> datetime | None:
    with platform.session() as session:
        return session.exec(
            select(sa.func.min(WebhookDelivery.next_attempt_at)).where(
                col(WebhookDelivery.status) == DeliveryStatus.PENDING
            )
        ).one()


async def post(platform: Platform, claim: Claim) -> Attempt:
    """One attempt: the message POSTed, signed, no redirect followed."""
    settings = platform.settings
    if claim.secret is None:
        return Attempt(error="no secret to sign with (the user's, or PIXELFLEET_WEBHOOK_SECRET)")
    production = settings.environment == "production"
    problem = await asyncio.to_thread(webhooks.url_problem, claim.url, production=production)
    if problem:  # its host moved to a private address since the submission
        return Attempt(error=problem)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "pixelfleet-webhooks",
        "webhook-id": claim.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claim.secret, claim.id, timestamp, claim.body),
    }
    try:
        async with httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False, verify=tls_context()
        ) as client:
            response = await client.post(claim.url, content=claim.body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if 200 <= response.status_code < 300:
        return Attempt(status_code=response.status_code)
    answer = response.text[:MAX_ANSWER_CHARS]
    return Attempt(status_code=response.status_code, error=f"HTTP {response.status_code} {answer}")


def _record(platform: Platform, claim: Claim, attempt: Attempt) -> None:
    """Delivered; or failed for good after the retry window; or due again after a delay."""
    settings = platform.settings
    now = utcnow()
    with platform.session_scope() as session:
        row = lock_row(session, WebhookDelivery, claim.id)
        if row is None or row.status != DeliveryStatus.PENDING:
            return
        if not attempt.delivered and row.next_attempt_at != claim.until:
            return  # the claim ran out and another attempt took over: it records its own
        row.attempts += 1
        row.last_status_code, row.last_error = attempt.status_code, clip(attempt.error)
        if attempt.delivered:
            row.status, row.delivered_at, row.last_error = DeliveryStatus.DELIVERED, now, None
        elif now >= row.created_at + timedelta(seconds=settings.webhook_retry_window_s):
            row.status = DeliveryStatus.FAILED
            log.warning("webhook %s (job %s) gave up: %s", row.id, row.job_id, attempt.error)
        else:
            delays = settings.webhook_retry_delays
            wait = delays[min(row.attempts, len(delays)) - 1]
            row.next_attempt_at = now + timedelta(seconds=wait)
        session.add(row)
