"""Settings both processes read. Every variable is prefixed PIXELFLEET_ (see the README)."""

from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXELFLEET_", env_file=".env", extra="ignore")

    data_dir: Path = Path("pixelfleet-data")
    storage_url: str = ""  # default: {data_dir}/storage
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _default_storage(self) -> "CommonSettings":
        if not self.storage_url:
            self.storage_url = str((self.data_dir / "storage").resolve())
        return self
