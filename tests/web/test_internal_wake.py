"""`POST /api/internal/wake`, through which the relay process wakes the API's services
(`control_plane/relaying.py`): only with the processes' shared token, even where every other
route asks for credentials; unknown to an API that has no token. Its effect, end to end:
tests/e2e/test_relay_process.py."""

from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.background import WAKE_HEADER
from control_plane.settings import Settings

TOKEN = "wake-token-0123456789"


def test_a_wake_needs_the_processes_token(settings: Settings) -> None:
    locked = settings.model_copy(
        update={"api_password": "an admin password", "wake_token": TOKEN, "relay_process": True}
    )
    with TestClient(create_app(locked, reconcile=False)) as client:

        def wake(service: str, token: str | None) -> int:
            headers = {WAKE_HEADER: token} if token is not None else {}
            path = "/api/internal/wake"
            return client.post(path, params={"service": service}, headers=headers).status_code

        assert wake("sender", TOKEN) == 204
        assert wake("webhooks", TOKEN) == 204
        assert wake("sender", "wrong") == 404
        assert wake("sender", None) == 404
        assert wake("everything", TOKEN) == 422
        assert "relay" not in client.app.state.platform.loops  # type: ignore[attr-defined]


def test_without_a_token_there_is_no_wake(settings: Settings) -> None:
    with TestClient(create_app(settings, reconcile=False)) as client:
        answer = client.post("/api/internal/wake", params={"service": "sender"})
        assert answer.status_code == 404
        assert "relay" in client.app.state.platform.loops  # type: ignore[attr-defined]
