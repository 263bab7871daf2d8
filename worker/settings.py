"""Worker settings (env vars prefixed PIXELFLEET_, plus GEMINI_API_KEY)."""

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr

from shared.hosts import host_list
from shared.settings import CommonSettings


class WorkerSettings(CommonSettings):
    worker_concurrency: int = Field(32, ge=1, description="images in flight per worker process")
    worker_max_jobs: int = Field(
        32,
        ge=1,
        description="most RunPod jobs one worker takes at once (its concurrency_modifier "
        "takes jobs by free image slots, so fewer when they are full)",
    )
    worker_dispatch_deadline_s: float = Field(
        540,
        gt=0,
        description="a dispatch ends within this many seconds (keep it under RunPod's "
        "executionTimeout, 600 s by default): no retry is started that would run past it",
    )
    worker_progress_interval_s: float = Field(
        0.5,
        gt=0,
        description="a dispatch's stored results are posted to the control plane at most this "
        "often (the first at once): no result waits longer than this for its post",
    )
    worker_progress_attempts: int = Field(
        3, ge=1, description="tries per progress post before it is dropped (best effort)"
    )
    provider: Literal["auto", "offline", "gemini"] = "auto"
    offline_latency_ms: int = Field(0, ge=0, description="simulated provider latency")
    gemini_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("GEMINI_API_KEY", "PIXELFLEET_GEMINI_API_KEY")
    )
    gemini_base_url: str | None = Field(
        None, description="override Gemini's endpoint (proxy, gateway, test server)"
    )
    # v1beta, not the SDK's default v1: Google's image-generation docs and REST samples all
    # call v1beta, and v1's GenerationConfig has rejected `responseModalities` / `imageConfig`
    # ("Invalid JSON payload received. Unknown name ... Cannot find field") - the fields every
    # image request needs. Switch to "v1" only once Google documents image output there.
    gemini_api_version: str = "v1beta"
    gemini_timeout_s: float = Field(120, gt=0, description="deadline for one Gemini request")
    gemini_backoff_s: float = Field(1.0, gt=0, description="first retry backoff; doubles")
    gemini_max_attempts: int = Field(5, ge=1, description="tries per image on transient errors")
    gemini_rpm: int = Field(500, ge=1, description="Gemini requests per minute, whole worker")
    gemini_concurrency: int = Field(32, ge=1, description="Gemini requests in flight at once")
    gemini_reseed_on_block: bool = Field(
        False, description="when an output is blocked, try once more with seed + 1"
    )
    gemini_batch_inline_max_bytes: int = Field(
        20_000_000,
        ge=1,
        description="a batch's requests go inline while their JSON stays within this many "
        "bytes (Google's inline limit is 20 MB), else as a JSONL file (Files API)",
    )
    offline_batch_pending_s: float = Field(
        2.0, ge=0, description="offline batches: seconds pending after creation"
    )
    offline_batch_running_s: float = Field(
        3.0, ge=0, description="offline batches: seconds running after that, then succeeded"
    )
    endpoint_api_key: str = "local-dev-key"
    endpoint_id: str = "local"
    webhook_attempts: int = 3
    webhook_retry_delay_s: float = 10.0
    result_retention_s: float = 1800
    endpoint_allow_webhook_hosts: str = Field(
        "", description="comma-separated hosts beyond loopback the local endpoint posts to"
    )

    @property
    def endpoint_webhook_hosts(self) -> list[str]:
        return host_list(self.endpoint_allow_webhook_hosts)

    def secrets(self) -> list[str | None]:
        """What the worker's logs must never show (see shared/logs.py)."""
        gemini = self.gemini_api_key.get_secret_value() if self.gemini_api_key else None
        return [gemini, self.endpoint_api_key]

    def provider_name(self) -> str:
        if self.provider != "auto":
            return self.provider
        return "gemini" if self.gemini_api_key else "offline"
