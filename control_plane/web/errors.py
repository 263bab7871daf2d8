"""Errors as answers: JSON for the API, an HTML page for people (the UI's pages)."""

import math
from collections.abc import Mapping
from dataclasses import asdict

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane.db import is_transient
from control_plane.errors import DomainError, InvalidRows, RateLimited, describe_validation
from control_plane.web.ui.routes import error_page


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        return error_response(request, exc.status_code, exc.message)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        retry_after = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        return error_response(request, exc.status_code, exc.message, retry_after)

    @app.exception_handler(InvalidRows)
    async def invalid_rows(request: Request, exc: InvalidRows) -> Response:
        if _for_people(request):
            return error_page(request, exc.status_code, exc.message)
        return JSONResponse(
            {
                "detail": exc.message,
                "errors": [asdict(problem) for problem in exc.problems],
                "error_count": exc.problem_count,
            },
            status_code=exc.status_code,
        )

    @app.exception_handler(sa.exc.DBAPIError)
    async def database_busy(request: Request, exc: sa.exc.DBAPIError) -> Response:
        if not is_transient(exc):
            raise exc
        message = (
            "the database was busy (a lock or a lost connection): nothing was changed, try again"
        )
        return error_response(request, 503, message, {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        problems = describe_validation(exc.errors())
        if _for_people(request):
            return error_page(request, 422, problems)
        return JSONResponse({"detail": problems, "errors": jsonable_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request, exc.status_code, exc.detail, exc.headers)


def error_response(
    request: Request, status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The answer to a failed request: an HTML page for the UI's pages, else JSON."""
    if _for_people(request):
        return error_page(request, status_code, message, headers)
    return JSONResponse({"detail": message}, status_code=status_code, headers=headers)


def _for_people(request: Request) -> bool:
    """A page of the web UI (answered in HTML) rather than the JSON API."""
    return request.method in ("GET", "POST") and not request.url.path.startswith(
        ("/api/", "/healthz", "/docs", "/redoc", "/openapi.json")
    )


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg"), "type": error.get("type")}
        for error in exc.errors()
    ]
