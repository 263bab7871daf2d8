"""Control-plane settings: one place, env vars prefixed PIXELFLEET_ (README lists them all).

Outside development, unsafe defaults (SQLite, the local RunPod endpoint and its dev key, a
loopback or plain-http URL, an open API) are refused at start-up rather than discovered in
production.
"""

import base64
import binascii
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shared.hosts import host_list, is_local
from shared.settings import CommonSettings

DEV_RUNPOD_API_KEY = "local-dev-key"
MIN_PASSWORD_CHARS = 16
UPLOAD_PART_ALLOWANCE = 4 * 2**10  # a file part's boundary and headers (its filename)
UPLOAD_FORM_ALLOWANCE = 64 * 2**10  # the form's other fields


class Settings(CommonSettings):
    environment: Literal["development", "production"] = "development"
    database_url: str = ""  # default: sqlite:///{data_dir}/pixelfleet.db
    public_url: str = "http://127.0.0.1:8000"

    runpod_base_url: str = "http://127.0.0.1:8001"  # production: https://api.runpod.ai
    runpod_endpoint_id: str = "local"
    runpod_api_key: str = DEV_RUNPOD_API_KEY
    runpod_timeout_s: float = Field(30.0, gt=0)
    api_password: str = ""  # an admin credential besides API keys; empty: none
    listen_host: str = "127.0.0.1"  # the address the API listens on (`pixelfleet api` sets it)
    allowed_hosts: str = ""  # open API: Host names answered beyond loopback and public_url's

    dispatch_chunk_size: int = Field(16, ge=1, le=500)
    # a job's dispatches grow past dispatch_chunk_size to number at most this many …
    dispatch_max_per_job: int = Field(100, ge=1, le=10_000)
    # … within these bounds (lifecycle.dispatch_chunk); sets are always one dispatch
    dispatch_chunk_max: int = Field(200, ge=1, le=20_000)
    dispatch_max_body_bytes: int = Field(4 * 2**20, ge=64 * 2**10, le=9 * 2**20)
    dispatch_max_attempts: int = Field(2, ge=1, le=10)
    dispatch_max_losses: int = Field(10, ge=0, le=100)
    dispatch_max_finish_failures: int = Field(3, ge=1)
    dispatch_submit_attempts: int = Field(5, ge=1)
    dispatch_stale_claim_s: float | None = Field(None, gt=0)  # None: derived (runpod/sender.py)
    dispatch_execution_timeout_s: int = Field(600, ge=5)
    dispatch_ttl_s: int = Field(86_400, ge=10)
    reconcile_interval_s: float = Field(10.0, gt=0)
    # Woken passes at most this often: every commit that ends a dispatch wakes both, and under
    # a stream of webhooks one pass per commit costs more than the webhooks themselves. The
    # relay feeds consumers that need no haste (analytics, users' webhooks, pipeline stages);
    # the sender's pass after a burst of dispatch ends fills the room they left, all at once.
    relay_spacing_s: float = Field(0.25, ge=0, le=10)
    sender_spacing_s: float = Field(0.1, ge=0, le=10)
    webhook_grace_s: float = Field(60.0, ge=0)
    # the batch lane: a Gemini batch's first poll, and the next after its state or counts move
    batch_poll_s: float = Field(60.0, gt=0)
    # the batch lane: polls of a batch that sits unchanged double up to this
    batch_poll_max_s: float = Field(900.0, gt=0)
    # the batch lane: failed polls or collects of one batch before its images go online
    batch_max_step_failures: int = Field(3, ge=1)
    metrics_window_s: float = Field(3600.0, ge=60, le=7 * 86_400)  # /metrics' windowed figures
    # fair queueing (`control_plane/queueing.py`); 0: no cap
    max_inflight_dispatches: int = Field(32, ge=0)  # the endpoint's capacity; 0: no cap
    max_inflight_per_user_free: int = Field(0, ge=0)
    max_inflight_per_user_paid: int = Field(0, ge=0)
    # RunPod: 1000 /run per 10 s; a second's worth saved up + 10 s of rate stays under it
    run_rate_per_s: float = Field(90.0, ge=0)  # 0: no limit
    # RunPod's and the worker's reports applied at once per process (webhooks in batches,
    # `control_plane/batching.py`): fewer make bigger batches, more only queue for the job's
    # row lock while taking the GIL from the one holding it.
    reports_at_once: int = Field(2, ge=1)
    # The event relay (analytics, users' webhooks, pipeline stages) in a process of its own,
    # which `pixelfleet api` starts (`control_plane/relaying.py`): in the API's process its
    # passes hold the GIL that webhooks wait for. None: on MySQL/MariaDB, not on SQLite
    # (one process writes at a time there).
    relay_process: bool | None = None
    # `pixelfleet api` sets it for its processes: the relay process hands the services its
    # commits woke to the API with it (POST /api/internal/wake)
    wake_token: str = ""
    submit_rate_per_min_free: int = Field(30, ge=0)  # submissions per user per minute; 0: none
    submit_rate_per_min_paid: int = Field(120, ge=0)

    signed_url_expiry_s: int = Field(3600, ge=60, le=7 * 86_400)
    storage_gc_grace_s: int = Field(86_400, ge=0)

    upload_max_file_bytes: int = Field(20 * 1024 * 1024, gt=0)
    upload_max_pixels: int = Field(50_000_000, gt=0)
    upload_max_files: int = Field(5_000, gt=0)
    upload_max_request_bytes: int = Field(0, ge=0)  # 0: room for the most files at full size
    upload_decode_concurrency: int = Field(2, ge=1, le=64)
    request_max_body_bytes: int = Field(2**20, gt=0)
    webhook_max_body_bytes: int = Field(12 * 2**20, gt=0)  # RunPod echoes /run's ≤ 10 MB input
    submit_max_images: int = Field(20_000, gt=0)
    # the web UI's Generate asks to confirm a submission above either (what it will spend)
    ui_confirm_above_usd: float = Field(5.0, ge=0)
    ui_confirm_above_images: int = Field(1_000, ge=0)
    # live pages ask for their changes this often while nothing they show runs (a job started
    # elsewhere shows up); every second while something does
    ui_idle_poll_s: float = Field(10.0, ge=1, le=3600)
    idempotency_ttl_s: float = Field(86_400, gt=0)  # answers to Idempotency-Key requests kept
    # webhooks to users' own URLs (services/webhooks.py, control_plane/deliveries.py)
    webhook_secret: str = ""  # `whsec_…`: signs the webhooks of jobs without a user
    webhook_timeout_s: float = Field(10.0, gt=0, le=300)
    webhook_retry_window_s: float = Field(86_400, ge=0)  # retried this long after creation
    # waits after the 1st, 2nd, … failed attempt; the last one repeats
    webhook_retry_delays_s: str = "5,300,1800,7200,18000,36000"
    webhook_concurrency: int = Field(8, ge=1, le=256)  # deliveries in flight per process
    default_model: str = "gemini-2.5-flash-image"
    text_model: str = Field("gemini-2.5-flash", min_length=1, max_length=80)  # text tasks

    @model_validator(mode="after")
    def _defaults_and_safety(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'pixelfleet.db').resolve()}"
        if self.environment == "production":
            problems = [
                msg
                for bad, msg in (
                    (self.database_url.startswith("sqlite"), "PIXELFLEET_DATABASE_URL is SQLite"),
                    (self.runpod_api_key == DEV_RUNPOD_API_KEY, "PIXELFLEET_RUNPOD_API_KEY unset"),
                    (
                        _is_local(self.public_url),
                        "PIXELFLEET_PUBLIC_URL is a loopback address RunPod cannot reach",
                    ),
                    (
                        not self.public_url.startswith("https://"),
                        "PIXELFLEET_PUBLIC_URL is not https (webhook tokens would travel in clear)",
                    ),
                    (
                        _is_local(self.runpod_base_url)
                        or not self.runpod_base_url.startswith("https://"),
                        "PIXELFLEET_RUNPOD_BASE_URL is not RunPod's https API",
                    ),
                    (
                        self.runpod_endpoint_id == "local",
                        "PIXELFLEET_RUNPOD_ENDPOINT_ID unset",
                    ),
                    (
                        0 < len(self.api_password) < MIN_PASSWORD_CHARS,
                        f"PIXELFLEET_API_PASSWORD is under {MIN_PASSWORD_CHARS} characters "
                        "(anyone guessing it could spend your Gemini budget)",
                    ),
                )
                if bad
            ]
            if problems:
                raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    @field_validator("webhook_secret")
    @classmethod
    def _signing_secret(cls, value: str) -> str:
        if value and not _is_webhook_secret(value):
            raise ValueError(
                "must be whsec_ followed by base64 (e.g. from `pixelfleet users webhook-secret`)"
            )
        return value

    @field_validator("webhook_retry_delays_s")
    @classmethod
    def _retry_delays(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError:
            delays = []
        if not delays or any(not 0 <= delay < 10**7 for delay in delays):
            raise ValueError("must be seconds (0 or more) separated by commas, e.g. 5,300,1800")
        return value

    @property
    def webhook_retry_delays(self) -> list[float]:
        """PIXELFLEET_WEBHOOK_RETRY_DELAYS_S as numbers: the wait after each failed attempt."""
        return [float(part) for part in self.webhook_retry_delays_s.split(",")]

    @property
    def upload_request_limit(self) -> int:
        """PIXELFLEET_UPLOAD_MAX_REQUEST_BYTES, or room for the most files at full size."""
        files = self.upload_max_files
        derived = (
            files * (self.upload_max_file_bytes + UPLOAD_PART_ALLOWANCE) + UPLOAD_FORM_ALLOWANCE
        )
        return self.upload_max_request_bytes or derived

    @property
    def allowed_host_names(self) -> list[str]:
        return host_list(self.allowed_hosts)

    @property
    def runpod_endpoint_url(self) -> str:
        return f"{self.runpod_base_url.rstrip('/')}/v2/{self.runpod_endpoint_id}"


def _is_local(url: str) -> bool:
    return is_local(urlsplit(url).hostname or "")


def _is_webhook_secret(value: str) -> bool:
    """`whsec_` and base64 of at least 16 bytes (Standard Webhooks' secret format)."""
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 16
    except binascii.Error:
        return False
