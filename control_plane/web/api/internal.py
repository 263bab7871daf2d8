"""What the control plane's own processes ask each other: the relay process wakes the API's
services that its commits made work for (`control_plane/relaying.py`)."""

import hmac

from fastapi import APIRouter, Header, Response

from control_plane.background import WAKE_HEADER, Service
from control_plane.errors import NotFound
from control_plane.web.deps import PlatformDep

router = APIRouter(prefix="/api/internal", include_in_schema=False)


@router.post("/wake", status_code=204)
async def wake(
    platform: PlatformDep, service: Service, token: str = Header("", alias=WAKE_HEADER)
) -> Response:
    """Wake `service` in this process, for a caller with the processes' shared wake token
    (none set: no such route)."""
    expected = platform.settings.wake_token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise NotFound("not found")
    platform.wake(service)
    return Response(status_code=204)
