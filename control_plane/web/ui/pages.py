"""What every page shares: the templates, the static files' folder, the headers every page
carries (its Content-Security-Policy), rendering, and page counts."""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from shared.storage import Storage, StorageError

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC_DIR = Path(__file__).parent / "static"  # served at /static: the pages' CSS and scripts
SIGNING_PROBE = "pixelfleet-signing-check"
RUNNING_HEADER = "X-Pixelfleet-Running"  # of a fragment: "1" while anything it shows runs


def page_headers(storage: Storage) -> dict[str, str]:
    """The headers of every page: scripts, styles and requests from here only (styles also
    inline as the templates write them), images from here or from where the storage signs its
    URLs, no frames, forms posting here only, and no page address sent to other sites."""
    image_sources = " ".join(["'self'", *_signed_url_origin(storage)])
    policy = (
        f"default-src 'none'; img-src {image_sources}; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": policy, "Referrer-Policy": "same-origin"}


def _signed_url_origin(storage: Storage) -> list[str]:
    try:
        signed = storage.signed_url(SIGNING_PROBE)
    except StorageError:  # the file routes serve (or redirect) meanwhile
        return []
    if signed is None:
        return []
    parts = urlsplit(signed)
    return [f"{parts.scheme}://{parts.netloc}"]


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """The template `name` as a page, with every page's headers."""
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=request.app.state.page_headers
    )


def fragment(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    running: bool,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The template `name` as a fragment of a live page (live.js polls it while `running`)."""
    sent = {
        **request.app.state.page_headers,
        "Cache-Control": "no-store",
        RUNNING_HEADER: "1" if running else "0",
        **(headers or {}),
    }
    return templates.TemplateResponse(request, name, context, headers=sent)


def page_count(total: int, per_page: int) -> int:
    """How many pages `total` items fill, `per_page` a page (at least one)."""
    return max(1, -(-total // per_page))
