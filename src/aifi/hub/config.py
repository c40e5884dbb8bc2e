"""The hub's one typed settings object, read from a TOML file.

Values come from ``hub.toml`` (top level or a ``[hub]`` table) and may be
overridden by ``AIFI_HUB_*`` environment variables. The database sits behind
``database_url`` (SQLite by default, PostgreSQL at national scale); a
placeholder password in it is refused outside development. Example::

    [hub]
    environment = "production"
    host = "127.0.0.1"          # behind a TLS reverse proxy
    port = 8000
    data_dir = "/var/lib/aifi-hub"
    workers = 4
    retention_images_max_hours = 24   # images go at acknowledgement, at the latest after this
    retention_results_days = 30
    # database_url = "postgresql+psycopg://aifi:<password>@db/aifi"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from aifi.errors import ConfigError

__all__ = ["PLACEHOLDER_PASSWORD", "HubSettings", "load_hub_settings"]

PLACEHOLDER_PASSWORD = "change-me"


class HubSettings(BaseSettings):
    """Everything the hub needs to start; validated once, passed in everywhere."""

    model_config = SettingsConfigDict(env_prefix="AIFI_HUB_", extra="forbid")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("hub-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file <data_dir>/hub.sqlite"
    )
    workers: int = Field(default=2, ge=1, le=256, description="threads that run algorithms")
    max_upload_bytes: int = Field(
        default=4 * 1024**3, gt=0, description="largest STOW-RS request body accepted"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    retention_images_max_hours: float = Field(
        default=24.0, gt=0, description="input images are deleted after this even unacknowledged"
    )
    retention_results_days: float = Field(
        default=30.0, gt=0, description="result objects are deleted this long after they were made"
    )
    purge_interval_s: float = Field(
        default=600.0, gt=0, description="how often the hub runs the retention purge"
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _parseable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"database_url is not a SQLAlchemy URL: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> HubSettings:
        if self.environment == "development" or self.database_url is None:
            return self
        password = make_url(self.database_url).password
        if password is not None and str(password) in ("", PLACEHOLDER_PASSWORD):
            raise ValueError(
                "database_url carries a placeholder or empty password; "
                "set the real one before running in production"
            )
        return self

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file inside ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.sqlite'}"


def load_hub_settings(path: Path | None = None, **overrides: Any) -> HubSettings:
    """Read and validate ``hub.toml``; relative ``data_dir`` is taken from the file's folder.

    Without ``path`` only defaults, ``AIFI_HUB_*`` variables and ``overrides`` apply.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"hub configuration {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"hub configuration {path} is not valid TOML: {exc}") from exc
        if isinstance(raw.get("hub"), dict):
            raw = dict(raw["hub"])
        data_dir = Path(raw.get("data_dir", "hub-data")).expanduser()
        raw["data_dir"] = str(data_dir if data_dir.is_absolute() else path.parent / data_dir)
    raw.update(overrides)
    try:
        return HubSettings(**raw)
    except ValidationError as exc:
        where = f"hub configuration {path}" if path is not None else "hub settings"
        raise ConfigError(f"{where} is invalid:\n{exc}") from exc
