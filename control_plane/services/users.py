"""Users and their API keys (`pf_…`): made by the `pixelfleet users` and `keys` commands.

A key is shown once, when made; the database keeps its SHA-256, looked up by that hash (a key
carries 256 random bits, so the hash is as unguessable as the key) and compared in constant
time.
"""

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session, col, select

from control_plane.access import Viewer
from control_plane.errors import Conflict, InvalidRequest, NotFound
from control_plane.models import ApiKey, User, UserTier, utcnow

KEY_PREFIX = "pf_"
WEBHOOK_SECRET_PREFIX = "whsec_"
LAST_USED_PRECISION = timedelta(minutes=1)  # `last_used_at` is written at most this often


def add_user(session: Session, name: str, tier: UserTier, *, admin: bool = False) -> User:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidRequest("a user's name is 1 to 100 characters")
    if session.exec(select(User.id).where(User.name == name)).first() is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, tier=tier, is_admin=admin)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.exec(select(User).order_by(col(User.id))).all()


def any_users(session: Session) -> bool:
    return session.exec(select(User.id).limit(1)).first() is not None


def find_user(session: Session, name_or_id: str) -> User:
    """The user with this name or id, or NotFound."""
    user = (
        session.get(User, name_or_id)
        or session.exec(select(User).where(User.name == name_or_id)).first()
    )
    if user is None:
        raise NotFound(f"no user is named {name_or_id!r}")
    return user


def create_key(session: Session, user: User) -> tuple[ApiKey, str]:
    """A new key for `user`: its row, and the key itself (shown once, never stored)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(user_id=user.id, key_sha256=_digest(secret), prefix=secret[:10])
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session, user: User) -> Sequence[ApiKey]:
    return session.exec(
        select(ApiKey).where(ApiKey.user_id == user.id).order_by(col(ApiKey.id))
    ).all()


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key has the id {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
    return key


def viewer_for_key(session: Session, secret: str) -> Viewer | None:
    """The viewer a key acts for, or None when it is unknown or revoked."""
    if not secret.startswith(KEY_PREFIX):
        return None
    digest = _digest(secret)
    key = session.exec(select(ApiKey).where(ApiKey.key_sha256 == digest)).first()
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.key_sha256, digest):
        return None
    user = session.get(User, key.user_id)
    if user is None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_PRECISION:
        key.last_used_at = now
        session.add(key)
    return Viewer.of(user)


def set_tier(session: Session, user: User, tier: UserTier) -> None:
    user.tier = tier
    session.add(user)


def set_cap(session: Session, user: User, monthly_usd: float | None) -> None:
    """Cap the user's spend per calendar month (UTC) at `monthly_usd`; None lifts the cap."""
    if monthly_usd is not None and monthly_usd < 0:
        raise InvalidRequest("a spend cap is 0 USD or more")
    user.monthly_cap_usd = monthly_usd
    session.add(user)


def new_webhook_secret(session: Session, user: User) -> str:
    """A new secret signing the user's webhooks (replacing the old one), shown once."""
    secret = WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    user.webhook_secret = secret
    session.add(user)
    return secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
