"""Settings refuse what would be unsafe or meaningless, with a message naming the variable."""

import pytest
from pydantic import ValidationError

from control_plane.settings import Settings
from shared.settings import describe_settings_error

PRODUCTION = {
    "environment": "production",
    "database_url": "mysql+pymysql://pixelfleet:secret@db:3306/pixelfleet",
    "runpod_api_key": "rp_real_key",
    "runpod_base_url": "https://api.runpod.ai",
    "runpod_endpoint_id": "abc123xyz",
    "public_url": "https://pixelfleet.example.com",
    "api_password": "a long shared password",
}


def test_a_complete_production_configuration_is_accepted() -> None:
    settings = Settings(**PRODUCTION)
    assert settings.runpod_endpoint_url == "https://api.runpod.ai/v2/abc123xyz"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"database_url": ""}, "PIXELFLEET_DATABASE_URL is SQLite"),
        ({"runpod_api_key": "local-dev-key"}, "PIXELFLEET_RUNPOD_API_KEY"),
        ({"public_url": "https://127.0.0.1:8000"}, "PIXELFLEET_PUBLIC_URL is a loopback"),
        ({"public_url": "http://0.0.0.0:8000"}, "PIXELFLEET_PUBLIC_URL is a loopback"),
        ({"public_url": "http://pixelfleet.example.com"}, "PIXELFLEET_PUBLIC_URL is not https"),
        ({"runpod_base_url": "http://127.0.0.1:8001"}, "PIXELFLEET_RUNPOD_BASE_URL"),
        ({"runpod_base_url": "http://api.runpod.ai"}, "PIXELFLEET_RUNPOD_BASE_URL"),
        ({"runpod_endpoint_id": "local"}, "PIXELFLEET_RUNPOD_ENDPOINT_ID"),
        ({"api_password": "short"}, "PIXELFLEET_API_PASSWORD is under 16"),
    ],
)
def test_production_refuses_unsafe_values(change: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match="refusing to start in production") as caught:
        Settings(**{**PRODUCTION, **change})
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "field",
    [
        "upload_max_file_bytes",
        "upload_max_pixels",
        "upload_max_files",
        "submit_max_images",
        "upload_decode_concurrency",
        "request_max_body_bytes",
        "webhook_max_body_bytes",
    ],
)
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: 0})
    with pytest.raises(ValidationError, match="runpod_timeout_s"):
        Settings(runpod_timeout_s=-5)


def test_development_defaults_need_nothing() -> None:
    settings = Settings()
    assert settings.environment == "development"
    assert settings.runpod_endpoint_url == "http://127.0.0.1:8001/v2/local"


def test_the_upload_request_limit_has_room_for_the_most_files_at_full_size() -> None:
    derived = Settings(upload_max_files=3, upload_max_file_bytes=1_000)
    assert derived.upload_request_limit == 3 * (1_000 + 4_096) + 65_536
    assert Settings(upload_max_request_bytes=5_000).upload_request_limit == 5_000


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"webhook_secret": "not-a-secret"}, "PIXELFLEET_WEBHOOK_SECRET: must be whsec_"),
        ({"webhook_secret": "whsec_@@@"}, "PIXELFLEET_WEBHOOK_SECRET: must be whsec_"),
        ({"webhook_secret": "whsec_c2hvcnQ="}, "PIXELFLEET_WEBHOOK_SECRET: must be whsec_"),
        ({"webhook_retry_delays_s": "5,soon"}, "PIXELFLEET_WEBHOOK_RETRY_DELAYS_S: must be"),
        ({"webhook_retry_delays_s": "-1"}, "PIXELFLEET_WEBHOOK_RETRY_DELAYS_S: must be"),
        ({"webhook_retry_delays_s": ""}, "PIXELFLEET_WEBHOOK_RETRY_DELAYS_S: must be"),
    ],
)
def test_user_webhook_settings_are_checked(change: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**change)
    assert named in describe_settings_error(caught.value)


def test_user_webhook_retry_delays_are_numbers() -> None:
    settings = Settings(webhook_retry_delays_s="0.5, 2,60", webhook_secret="whsec_" + "A" * 32)
    assert settings.webhook_retry_delays == [0.5, 2.0, 60.0]
