"""The edge's one typed settings object, read from a TOML file.

Peers (the hub, the hospital's PACS) are named entries here, never
host:port in code. A placeholder hub token is refused outside development.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from aifi.edge.notify import RisPeer
from aifi.edge.rules import Rule
from aifi.errors import ConfigError

__all__ = [
    "DicomPeer",
    "EdgeSettings",
    "HubPeer",
    "ListenerSettings",
    "RisPeer",
    "load_edge_settings",
]

PLACEHOLDER_TOKEN = "change-me"

ResultKind = Literal["sr", "gsps", "sc"]
ALL_RESULT_KINDS: tuple[ResultKind, ...] = ("sr", "gsps", "sc")


class ListenerSettings(BaseModel):
    """The DICOM listener the PACS sends to (PS3.8 association parameters)."""

    ae_title: str = Field(default="AIFI_EDGE", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="calling AE titles accepted; an empty list refuses every association",
    )
    fsync: bool = Field(default=True, description="fsync each instance before answering success")
    max_pdu: int = Field(
        default=131072,
        ge=0,
        description="largest PDU we accept (0 = unlimited); 128 KiB is the most dcmtk sends,"
        " and fewer, larger PDUs cost pynetdicom less per instance",
    )


class HubPeer(BaseModel):
    """The national hub, reached by outgoing HTTPS only."""

    url: str = "http://127.0.0.1:8000"
    token: str = PLACEHOLDER_TOKEN
    poll_interval_s: float = Field(default=0.25, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)


class DicomPeer(BaseModel):
    """A DICOM node the edge sends to (the hospital's PACS)."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = Field(default="AIFI_EDGE", min_length=1, max_length=16)


class EdgeSettings(BaseModel):
    environment: Literal["development", "production"] = "development"
    hospital: str | None = Field(default=None, description="this hospital's name, for the audit")
    data_dir: Path = Path("edge-data")
    key_file: Path | None = Field(default=None, description="default: <data_dir>/secret.key")
    quiet_period_s: float = Field(default=5.0, ge=0)
    late_instances: Literal["new-task", "ignore"] = "new-task"
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    hub: HubPeer = Field(default_factory=HubPeer)
    pacs: DicomPeer | None = None
    ris: RisPeer | None = Field(default=None, description="where urgent results are announced")
    result_kinds: list[ResultKind] = Field(
        default_factory=lambda: list(ALL_RESULT_KINDS),
        description="which result objects this hospital stores into its PACS",
    )
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("data_dir", "key_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> EdgeSettings:
        if self.environment != "development" and self.hub.token == PLACEHOLDER_TOKEN:
            raise ValueError(
                "hub.token is the placeholder; set the token printed by "
                "'aifi hub hospital add' before running in production"
            )
        return self

    @property
    def secret_key_path(self) -> Path:
        return self.key_file or self.data_dir / "secret.key"


def load_edge_settings(path: Path) -> EdgeSettings:
    """Read and validate ``edge.toml``; relative paths are taken from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"edge configuration {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"edge configuration {path} is not valid TOML: {exc}") from exc
    for key in ("data_dir", "key_file"):
        if key in raw and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    if "data_dir" not in raw:
        raw["data_dir"] = str(path.parent / "edge-data")
    try:
        return EdgeSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"edge configuration {path} is invalid:\n{exc}") from exc
