from fastapi import APIRouter, HTTPException, Response, status

from control_plane import metrics
from control_plane.web.deps import PlatformDep, ViewerDep

router = APIRouter(tags=["metrics"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=Response)
def prometheus_metrics(platform: PlatformDep, viewer: ViewerDep) -> Response:
    """Prometheus text format, for an admin's key (`Authorization: Bearer pf_…`)."""
    if not viewer.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "metrics are for admins' keys")
    body = metrics.exposition(platform.engine, platform.settings.metrics_window_s)
    return Response(body, media_type=CONTENT_TYPE)
