"""The FastAPI app factory: `uvicorn control_plane.app:create_app --factory`.

It wires the pieces together: the platform (database, storage, RunPod client), its background
services (the sender, the `/status` poller, the event relay and its consumers), and the two web
front ends.
"""

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from control_plane.background import Service
from control_plane.db import make_engine
from control_plane.deliveries import Deliverer
from control_plane.platform import Platform
from control_plane.runpod.canceller import canceller
from control_plane.runpod.client import RunPodClient
from control_plane.runpod.poller import advance_batches, poll_quiet
from control_plane.runpod.sender import send_due
from control_plane.services import personas as persona_stages
from control_plane.services import users
from control_plane.services.analytics import analytics_consumer
from control_plane.services.presets import gallery_consumer
from control_plane.services.webhooks import delivery_consumer
from control_plane.settings import Settings
from control_plane.web.api import (
    catalogs,
    characters,
    download,
    events,
    files,
    gallery,
    groups,
    imports,
    internal,
    jobs,
    metrics,
    outputs,
    personas,
    presets,
    prompts,
    queue,
    uploads,
    usage,
    webhook,
)
from control_plane.web.auth import (
    AuthMiddleware,
    HostCheckMiddleware,
    SameOriginMiddleware,
    expected_hosts,
)
from control_plane.web.errors import install_error_handlers
from control_plane.web.idempotency import IdempotencyMiddleware
from control_plane.web.limits import BodyLimitMiddleware
from control_plane.web.requestlog import RequestLogMiddleware
from control_plane.web.ui import forms as ui_forms
from control_plane.web.ui import gallery as ui_gallery
from control_plane.web.ui import live, pages, signin, workflows
from control_plane.web.ui import routes as ui
from shared.hosts import is_loopback
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


def add_services(platform: Platform, *, timers: bool) -> None:
    """The background services and event consumers. Without `timers` they run only when a
    commit wakes them (tests drive the safety nets by hand). The relay runs here unless it
    has a process of its own (`settings.relay_process`)."""
    interval = platform.settings.reconcile_interval_s if timers else None
    platform.add_loop(Service.SENDER, send_due, interval, platform.settings.sender_spacing_s)
    if not platform.settings.relay_process:
        spacing = platform.settings.relay_spacing_s
        platform.add_loop(Service.RELAY, _relay_pass, interval, spacing)
        subscribe_consumers(platform)
    platform.add_loop(Service.WEBHOOKS, Deliverer(), interval)
    if timers:
        platform.add_loop(Service.POLLER, poll_quiet, interval)
        batch_interval = min(platform.settings.reconcile_interval_s, platform.settings.batch_poll_s)
        platform.add_loop(Service.BATCHES, advance_batches, batch_interval)


def subscribe_consumers(platform: Platform) -> None:
    """The event consumers, fed by the platform's relay."""
    platform.relay.subscribe(canceller(platform))
    platform.relay.subscribe(persona_stages.pipeline(platform.settings))
    platform.relay.subscribe(gallery_consumer())
    platform.relay.subscribe(analytics_consumer())
    platform.relay.subscribe(delivery_consumer(platform.settings))


def access_mode(platform: Platform, settings: Settings) -> str:
    """Which access mode start-up is in, in words (logged)."""
    with platform.session() as session:
        has_users = users.any_users(session)
    local = settings.environment == "development" and not settings.api_password
    if has_users or not local or not is_loopback(settings.listen_host):
        return "API keys required (pixelfleet users add NAME, then pixelfleet keys create NAME)"
    return (
        "open to the implicit local user on loopback, without keys, until the first user is "
        "created (pixelfleet users add NAME)"
    )


async def _relay_pass(platform: Platform) -> int:
    return await asyncio.to_thread(platform.relay.run_pass)


@functools.cache  # once per process
def _freeze_start_up() -> None:
    """Move what start-up made out of the collector's sight: it lives as long as the
    process, and full collections stay short (a job page's p95 halves) instead of rescanning
    it. Once: a process serves one app, and a test process, which starts one per test, would
    otherwise collect its whole heap at each start (about 0.2 s)."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None, *, reconcile: bool = True, storage: Storage | None = None
) -> FastAPI:
    """The app; `storage` replaces the one `settings.storage_url` would open (e.g. a GCS
    store with its own client); `reconcile=False` leaves the services' timers off. Start-up
    raises StorageError when storage is unusable."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = build_platform(settings, storage)
        add_services(platform, timers=reconcile)
        app.state.platform = platform
        app.state.page_headers = pages.page_headers(platform.storage)
        platform.start()
        log.info("access: %s", access_mode(platform, settings))
        _freeze_start_up()
        try:
            yield
        finally:
            await platform.aclose()

    app = FastAPI(
        title="pixelfleet",
        version="0.1.0",
        summary="Generate image datasets with AI: groups, uploads, jobs, ZIP downloads.",
        lifespan=lifespan,
    )
    routers = [
        groups,
        gallery,
        uploads,
        jobs,
        imports,
        prompts,
        catalogs,
        presets,
        characters,
        outputs,
        personas,
        events,
        usage,
        queue,
    ]
    ui_routers = (ui, live, ui_forms, ui_gallery, workflows, signin)
    # RunPod's webhooks and the worker's progress posts first: the busiest path, and routes
    # are matched in order (behind every other route, matching cost ~0.6 ms a request)
    for module in (webhook, *routers, download, files, metrics, internal, *ui_routers):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    app.add_middleware(IdempotencyMiddleware, settings=settings)  # inside limits and auth
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(SameOriginMiddleware)
    app.add_middleware(AuthMiddleware, settings=settings)
    if settings.environment == "development" and not settings.api_password:
        hosts = expected_hosts(settings.public_url, settings.allowed_host_names)
        app.add_middleware(HostCheckMiddleware, hosts=hosts)
    app.add_middleware(RequestLogMiddleware)  # outermost: sees every answer, 401s included
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
