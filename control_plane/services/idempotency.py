"""Idempotent requests: a request made with an `Idempotency-Key` is answered once; a retry
with the same key and body gets the first answer again, and nothing runs twice.

The rows (`IdempotentRequest`) are keyed by scope (method and route) and key. `claim` inserts
the row before the request runs: that insert is the lock, so of two requests racing on a
new key exactly one runs; the other finds the row in progress (or already answered).
`complete` stores the final answer with the hash of the body it answered; `release` removes
a claim whose request ended without one (a crash, a 5xx), so a retry runs again. Answered
rows live `ttl_s`; a claim still in progress at most `CLAIM_LEASE_S` (a request whose process
died holding it frees its key then). `purge_expired` deletes old rows, a batch at a time.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, delete, select, update

from control_plane.db import is_transient
from control_plane.errors import InvalidRequest
from control_plane.models import IdempotentRequest, utcnow

log = logging.getLogger(__name__)
CLAIM_LEASE_S = 3600  # the longest a claim is held for a request still being answered
CLAIM_ATTEMPTS = 5  # inserts tried while the row keeps changing under us
PURGE_BATCH = 100  # expired rows deleted per purge


@dataclass(frozen=True)
class Claimed:
    """The key is this request's: run it, then `complete` or `release` the claim."""

    at: datetime  # when it was claimed: the claim's identity, should its lease end and the
    # key be claimed again meanwhile (the late request then neither stores nor releases)


@dataclass(frozen=True)
class InProgress:
    """Another request with this key is still being answered."""


@dataclass(frozen=True)
class Answered:
    """The key's request was answered: replay the answer to the same body."""

    body_sha256: str
    status_code: int
    response: str


Claim = Claimed | InProgress | Answered


def claim(session: Session, scope: str, key: str, ttl_s: float) -> Claim:
    """Claim `key` in `scope` for a new request (committed), or say why it cannot run.
    A batch of expired rows is purged first."""
    _purge_quietly(session)
    for _ in range(CLAIM_ATTEMPTS):
        now = utcnow()
        lease = timedelta(seconds=min(ttl_s, CLAIM_LEASE_S))
        session.add(
            IdempotentRequest(
                scope=scope, key=key, body_sha256="", created_at=now, expires_at=now + lease
            )
        )
        try:
            session.commit()
            return Claimed(now)
        except sa.exc.IntegrityError:
            session.rollback()  # the key is taken: see by whom, below
        except sa.exc.DBAPIError as exc:  # a deadlock between racing inserts: try again
            session.rollback()
            if not is_transient(exc):
                raise
            continue
        existing = session.get(IdempotentRequest, (scope, key), populate_existing=True)
        if existing is None:  # released meanwhile
            continue
        if existing.expires_at <= now:
            _delete_expired(session, scope, key, now)
            continue
        if existing.status_code is None or existing.response is None:
            return InProgress()
        return Answered(existing.body_sha256, existing.status_code, existing.response)
    return InProgress()


def complete(
    session: Session,
    scope: str,
    key: str,
    claimed: Claimed,
    *,
    body_sha256: str,
    status_code: int,
    response: str,
    ttl_s: float,
) -> None:
    """Store the claimed request's final answer, kept `ttl_s` from now (committed)."""
    now = utcnow()
    stored = session.exec(
        update(IdempotentRequest)
        .where(_claim_of(scope, key, claimed))
        .values(
            body_sha256=body_sha256,
            status_code=status_code,
            response=response,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    session.commit()
    if not stored.rowcount:  # held past its lease and taken over: the newer claim stands
        log.warning("idempotency key %r (%s) was no longer claimed; answer not stored", key, scope)


def release(session: Session, scope: str, key: str, claimed: Claimed) -> None:
    """Give up the claim of a request that ended without a final answer (committed)."""
    session.exec(delete(IdempotentRequest).where(_claim_of(scope, key, claimed)))
    session.commit()


def purge_expired(session: Session, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` expired rows, oldest first (committed); how many went."""
    now = utcnow()
    expired = session.exec(
        select(IdempotentRequest.scope, IdempotentRequest.key)
        .where(col(IdempotentRequest.expires_at) <= now)
        .order_by(col(IdempotentRequest.expires_at))
        .limit(limit)
    ).all()
    if not expired:
        return 0
    session.exec(
        delete(IdempotentRequest).where(
            sa.tuple_(col(IdempotentRequest.scope), col(IdempotentRequest.key)).in_(expired),
            col(IdempotentRequest.expires_at) <= now,
        )
    )
    session.commit()
    return len(expired)


def _purge_quietly(session: Session) -> None:
    try:
        purge_expired(session)
    except sa.exc.SQLAlchemyError:  # lost a race or a lock: the next claim purges again
        session.rollback()
        log.warning("could not purge expired idempotency keys", exc_info=True)


def check_same_body(answered: Answered, body_sha256: str) -> None:
    """Refuse a retry whose body differs from the one the key was first used with."""
    if body_sha256 != answered.body_sha256:
        raise InvalidRequest(
            "this Idempotency-Key was already used with a different request body; "
            "nothing was done: send a new key for a new request"
        )


def _delete_expired(session: Session, scope: str, key: str, now: datetime) -> None:
    session.exec(
        delete(IdempotentRequest).where(_row(scope, key), col(IdempotentRequest.expires_at) <= now)
    )
    session.commit()


def _claim_of(scope: str, key: str, claimed: Claimed) -> sa.ColumnElement[bool]:
    """The row of this claim, while it is unanswered."""
    return sa.and_(
        _row(scope, key),
        col(IdempotentRequest.created_at) == claimed.at,
        col(IdempotentRequest.status_code).is_(None),
    )


def _row(scope: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(col(IdempotentRequest.scope) == scope, col(IdempotentRequest.key) == key)
