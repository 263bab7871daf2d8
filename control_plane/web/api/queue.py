from dataclasses import asdict

from fastapi import APIRouter

from control_plane import queueing
from control_plane.runpod.sender import window
from control_plane.schemas import JobInQueue, QueueCaps, QueueView, UserInQueue
from control_plane.web.deps import PlatformDep, SessionDep, ViewerDep

router = APIRouter(prefix="/api/queue", tags=["queue"])


@router.get("")
def get_queue(platform: PlatformDep, session: SessionDep, viewer: ViewerDep) -> QueueView:
    """Dispatches queued and in flight per user and per job, each job's `queue_position`,
    and the caps: an admin sees every user, a user their own."""
    settings = platform.settings
    only = queueing.ALL_USERS if viewer.is_admin else viewer.user_id
    _, shown, jobs = queueing.queue_state(session, window(platform), only)
    named = queueing.names(session, [queue.user_id for queue in shown])
    caps = queueing.Caps.of(settings)
    return QueueView(
        caps=QueueCaps(
            max_inflight_dispatches=caps.in_flight,
            max_inflight_per_user={str(tier): cap for tier, cap in caps.per_user.items()},
            run_rate_per_s=settings.run_rate_per_s,
        ),
        queued=sum(queue.queued for queue in shown),
        in_flight=sum(queue.in_flight for queue in shown),
        users=[
            UserInQueue(
                user_id=queue.user_id,
                name=named.get(queue.user_id, queue.user_id or "local"),
                tier=queue.tier,
                queued=queue.queued,
                in_flight=queue.in_flight,
            )
            for queue in shown
        ],
        jobs=[JobInQueue(**asdict(job)) for job in jobs],
    )
