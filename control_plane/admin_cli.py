"""`pixelfleet users …` and `pixelfleet keys …`: managing users, keys, tiers and spend caps on
the control plane's own database (run where the control plane's settings are)."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlmodel import Session

from control_plane.db import make_engine, migrate, session_scope
from control_plane.errors import DomainError
from control_plane.models import UserTier
from control_plane.services import users
from control_plane.settings import Settings
from shared.settings import describe_settings_error

users_app = typer.Typer(help="Users: who may use the API, their tier and spend cap.")
keys_app = typer.Typer(help="API keys (pf_…): made for a user, shown once, revocable.")

TierOption = Annotated[UserTier, typer.Option(help="paid users' work is sent first")]


@contextmanager
def _database() -> Iterator[Session]:
    """A transaction on the configured database (brought up to date first); a domain error
    is said plainly with exit code 1."""
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"configuration error: {describe_settings_error(exc)}", err=True)
        raise typer.Exit(2) from None
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            yield session
    except DomainError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@users_app.command("add")
def add_user(
    name: str,
    tier: TierOption = UserTier.FREE,
    admin: Annotated[bool, typer.Option(help="sees and may do everything")] = False,
) -> None:
    """Add a user (then make them a key: pixelfleet keys create NAME)."""
    with _database() as session:
        user = users.add_user(session, name, tier, admin=admin)
        role = "admin" if user.is_admin else "-"
        typer.echo(f"{user.id}\t{user.name}\t{user.tier}\t{role}")


@users_app.command("ls")
def list_users() -> None:
    """Every user: id, name, tier, admin, monthly cap."""
    with _database() as session:
        for user in users.list_users(session):
            cap = "no cap" if user.monthly_cap_usd is None else f"cap ${user.monthly_cap_usd:g}"
            role = "admin" if user.is_admin else "-"
            typer.echo(f"{user.id}\t{user.name}\t{user.tier}\t{role}\t{cap}")


@users_app.command("set-tier")
def set_tier(name: str, tier: Annotated[UserTier, typer.Argument()]) -> None:
    """Move a user to another tier."""
    with _database() as session:
        users.set_tier(session, users.find_user(session, name), tier)
        typer.echo(f"{name} is now {tier}")


@users_app.command("set-cap")
def set_cap(
    name: str,
    monthly_usd: Annotated[
        float | None, typer.Option(help="USD per calendar month (UTC); leave out to lift it")
    ] = None,
) -> None:
    """Cap a user's spend per month: submissions that would go over it are refused (402)."""
    with _database() as session:
        users.set_cap(session, users.find_user(session, name), monthly_usd)
        typer.echo(f"{name}: {'no cap' if monthly_usd is None else f'${monthly_usd:g} a month'}")


@users_app.command("webhook-secret")
def webhook_secret(name: str) -> None:
    """Make a new secret signing the user's webhooks (replaces the old one); shown once."""
    with _database() as session:
        typer.echo(users.new_webhook_secret(session, users.find_user(session, name)))


@keys_app.command("create")
def create_key(name: str) -> None:
    """Make an API key for a user; the key is printed once and never shown again."""
    with _database() as session:
        key, secret = users.create_key(session, users.find_user(session, name))
        typer.echo(f"key id {key.id} for {name} (shown once; keep it safe):", err=True)
        typer.echo(secret)


@keys_app.command("ls")
def list_keys(name: str) -> None:
    """A user's keys: id, first characters, made, last used, revoked."""
    with _database() as session:
        for key in users.list_keys(session, users.find_user(session, name)):
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never used"
            typer.echo(
                f"{key.id}\t{key.prefix}…\t{key.created_at:%Y-%m-%d %H:%M}\t{used}\t{revoked}"
            )


@keys_app.command("revoke")
def revoke_key(key_id: str) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    with _database() as session:
        users.revoke_key(session, key_id)
        typer.echo(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")
