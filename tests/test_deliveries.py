"""`control_plane/deliveries.py` on its own: the signature against Standard Webhooks' published
example, and claims: two processes racing for the same due deliveries never both get one; a
claim that ran out is taken over, and the late answer of the first attempt changes nothing."""

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from control_plane.app import build_platform
from control_plane.deliveries import Attempt, _claim, _record, sign
from control_plane.models import DeliveryStatus, WebhookDelivery, utcnow
from control_plane.platform import Platform
from control_plane.settings import Settings

pytestmark = pytest.mark.mysql


def test_the_signature_is_standard_webhooks_example() -> None:
    """The example of the Standard Webhooks specification (and its reference libraries)."""
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture
def platforms(settings: Settings) -> Iterator[list[Platform]]:
    """Two control-plane processes' platforms on one database (not started)."""
    settings = settings.model_copy(update={"webhook_secret": "whsec_" + "A" * 32})
    made = [build_platform(settings), build_platform(settings)]
    yield made
    for platform in made:
        platform.engine.dispose()


def pending(platform: Platform, n: int) -> list[str]:
    with platform.session_scope() as session:
        rows = [
            WebhookDelivery(job_id="job_x", event_type="job.completed", url="http://h/", payload={})
            for _ in range(n)
        ]
        session.add_all(rows)
    return [row.id for row in rows]


def test_racing_processes_never_claim_the_same_delivery(platforms: list[Platform]) -> None:
    ids = pending(platforms[0], 60)
    claimed: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claim_all(index: int) -> None:
        start.wait()
        while batch := _claim(platforms[index], 7):
            claimed[index] += [claim.id for claim in batch]

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert _claim(platforms[0], 100) == []  # claimed: not due until the claim runs out


def test_a_claim_that_ran_out_is_taken_over(platforms: list[Platform]) -> None:
    first, second = platforms
    [delivery_id] = pending(first, 1)
    [stale] = _claim(first, 10)
    with first.session_scope() as session:  # its attempt outlived the claim
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.next_attempt_at == stale.until
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
    [fresh] = _claim(second, 10)
    assert fresh.id == delivery_id and fresh.until != stale.until
    _record(first, stale, Attempt(status_code=500, error="HTTP 500"))  # late: ignored
    with first.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.attempts == 0 and row.status == DeliveryStatus.PENDING
    _record(second, fresh, Attempt(status_code=204))
    with first.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.status == DeliveryStatus.DELIVERED and row.attempts == 1
