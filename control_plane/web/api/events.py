from fastapi import APIRouter, Query

from control_plane.schemas import AnalyticsEventPublic, CursorPage
from control_plane.services import analytics
from control_plane.web.deps import PageLimit, SessionDep, ViewerDep

router = APIRouter(prefix="/api/events", tags=["events"])


@router.get("")
def list_events(
    session: SessionDep,
    viewer: ViewerDep,
    type_: str | None = Query(
        None,
        alias="type",
        description="one of: " + ", ".join(t.value for t in analytics.AnalyticsType),
    ),
    job_id: str | None = None,
    after: str | None = Query(None, description="`next` of the page before"),
    limit: PageLimit = 100,
) -> CursorPage[AnalyticsEventPublic]:
    """The analytics log, oldest first: your own events (an admin's: everyone's), filtered by
    type and job; each page after `after` (the answer's `next`, None on the last page: to
    follow the log, pass the last event's id)."""
    kind = analytics.parse_type(type_)
    cursor = analytics.parse_cursor(after)
    rows, next_cursor = analytics.list_events(session, viewer, kind, job_id, cursor, limit)
    return CursorPage(
        data=[AnalyticsEventPublic.model_validate(row, from_attributes=True) for row in rows],
        limit=limit,
        next=next_cursor,
    )
