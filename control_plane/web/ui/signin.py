"""Signing in to the web UI: a page asking once for an API key, kept in a session cookie
(`SESSION_COOKIE`, which the auth middleware reads like an `Authorization` header)."""

import hmac
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from control_plane.platform import Platform
from control_plane.services import users
from control_plane.web.auth import SESSION_COOKIE
from control_plane.web.deps import PlatformDep
from control_plane.web.ui.pages import templates

router = APIRouter(include_in_schema=False)
MAX_KEY_CHARS = 200
SESSION_MAX_AGE_S = 30 * 24 * 3600


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return _form(request, safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, platform: PlatformDep) -> Response:
    form = await request.form()
    key = str(form.get("key") or "").strip()[:MAX_KEY_CHARS]
    target = safe_next(str(form.get("next") or "/"))
    if not await run_in_threadpool(_known, platform, key):
        return _form(request, target, "this API key is unknown or revoked", 401)
    response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=_https(request, platform),
    )
    return response


@router.post("/logout")
def logout(request: Request, platform: PlatformDep) -> Response:
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="lax", secure=_https(request, platform)
    )
    return response


def safe_next(target: str) -> str:
    """`target` if it is a path of this site ("/…", not "//…" nor "/\\…"), else "/": a
    sign-in link never sends anyone to another site."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 0x20 or ch == "\\" for ch in target):
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def _known(platform: Platform, key: str) -> bool:
    """Whether `key` is a live API key, or the admin password."""
    password = platform.settings.api_password
    if password and hmac.compare_digest(key.encode(), password.encode()):
        return True
    with platform.session_scope() as session:
        return users.viewer_for_key(session, key) is not None


def _https(request: Request, platform: Platform) -> bool:
    return request.url.scheme == "https" or platform.settings.public_url.startswith("https://")


def _form(
    request: Request, target: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"next": target, "error": error},
        status_code=status_code,
        headers=request.app.state.page_headers,
    )
