"""The FastAPI app factory: `uvicorn control_plane.app:create_app --factory`."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane.api.auth import PasswordMiddleware, SameOriginMiddleware
from control_plane.api.routes import download, files, groups, jobs, uploads, webhook
from control_plane.db import make_engine
from control_plane.errors import DomainError, describe_validation
from control_plane.runpod_client import RunPodClient
from control_plane.services.platform import Platform
from control_plane.services.reconcile import reconcile_forever
from control_plane.settings import Settings
from control_plane.ui import routes as ui
from shared.storage import Storage, open_storage

log = logging.getLogger(__name__)


def build_platform(settings: Settings, storage: Storage | None = None) -> Platform:
    """The platform for `settings`; `storage` (if given) replaces the one `storage_url` opens.

    Storage is opened first: a missing bucket or unusable credentials raise StorageError
    before anything else (database engine, HTTP client) has been created.
    """
    if storage is None:
        storage = open_storage(
            settings.storage_url, signed_url_expiry_s=settings.signed_url_expiry_s
        )
    check_signing(storage)
    return Platform(
        settings=settings,
        engine=make_engine(settings.database_url),
        storage=storage,
        runpod=RunPodClient(
            settings.runpod_endpoint_url,
            settings.runpod_api_key,
            timeout_s=settings.runpod_timeout_s,
        ),
    )


def check_signing(storage: Storage) -> None:
    """Raise StorageError unless the storage can hand browsers URLs for its objects.

    API answers carry signed URLs for GCS objects: credentials that cannot sign (e.g. a
    user's `gcloud auth application-default login`) would fail every answer, so the API
    refuses to start with them. Local disk and the emulator's anonymous client sign nothing
    (their objects are served by the file routes) and pass.
    """
    storage.signed_url("pixelfleet-signing-check")


def create_app(
    settings: Settings | None = None, *, reconcile: bool = True, storage: Storage | None = None
) -> FastAPI:
    """The app; `storage` replaces the one `settings.storage_url` would open (e.g. a GCS
    store with its own client). Start-up raises StorageError when storage is unusable."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = build_platform(settings, storage)
        app.state.platform = platform
        reconciler = asyncio.create_task(reconcile_forever(platform)) if reconcile else None
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconciler
            await platform.aclose()

    app = FastAPI(
        title="pixelfleet",
        version="0.1.0",
        summary="Generate image datasets with AI: groups, uploads, jobs, ZIP downloads.",
        lifespan=lifespan,
    )
    for module in (groups, uploads, jobs, webhook, download, files, ui):
        app.include_router(module.router)
    app.add_middleware(SameOriginMiddleware)
    if settings.api_password:
        app.add_middleware(PasswordMiddleware, password=settings.api_password)
    _install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        if _for_people(request):
            return ui.error_page(request, exc.status_code, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        problems = describe_validation(exc.errors())
        if _for_people(request):
            return ui.error_page(request, 422, problems)
        return JSONResponse({"detail": problems, "errors": jsonable_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _for_people(request):
            return ui.error_page(request, exc.status_code, str(exc.detail), exc.headers)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )


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
