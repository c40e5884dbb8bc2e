"""The hub's one typed settings object, read from a TOML file.

Where a value comes from, strongest first: keyword arguments in code, then
``AIFI_HUB_<SETTING>`` environment variables (``AIFI_HUB_PORT``,
``AIFI_HUB_MODEL_DIR``, ...), then ``hub.toml`` (top level or a ``[hub]``
table), then the defaults below. A key, section or ``AIFI_HUB_*`` variable
that is not a setting is refused at start: a typo never silently falls back
to a default. Relative folders in the file are taken from the file's folder.
The database sits behind ``database_url`` (SQLite by default, PostgreSQL at
national scale); a placeholder password in it is refused outside
development. Example::

    [hub]
    environment = "production"
    host = "127.0.0.1"          # behind a TLS reverse proxy
    port = 8000
    data_dir = "/var/lib/aifi-hub"
    workers = 4
    retention_images_max_hours = 24   # images go at acknowledgement, at the latest after this
    retention_results_days = 30
    # database_url = "postgresql+psycopg://aifi:<password>@db/aifi"
    # object_store = "s3"      # instances and results in a bucket (docs/object-storage.md)
    # s3_endpoint_url = "https://s3.example.org"
    # s3_bucket = "aifi-hub"   # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    model_dir = "/srv/aifi/models"               # <id>.toml + ONNX file: replaces a built-in model
    remote_algorithms_dir = "/srv/aifi/remote"   # <id>.remote.toml: vendor-hosted algorithms
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from aifi.errors import ConfigError

__all__ = ["ENV_PREFIX", "PLACEHOLDER_PASSWORD", "HubSettings", "load_hub_settings"]

PLACEHOLDER_PASSWORD = "change-me"
ENV_PREFIX = "AIFI_HUB_"
_FOLDERS = ("data_dir", "model_dir", "remote_algorithms_dir")


class HubSettings(BaseSettings):
    """Everything the hub needs to start; validated once, passed in everywhere."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("hub-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file <data_dir>/hub.sqlite"
    )
    database_pool_size: int = Field(
        default=5, ge=1, le=1000, description="database connections each process keeps open"
    )
    database_max_overflow: int = Field(
        default=10, ge=0, le=1000, description="extra connections a process may open under load"
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
    lease_s: float = Field(
        default=60.0,
        ge=1,
        description="how long a worker's claim on a task lasts without a heartbeat; the "
        "janitor re-queues a task whose lease ran out (docs/queue.md)",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="runs a task gets (its worker died) before canceled"
    )
    worker_isolation: Literal["process", "thread"] = Field(
        default="process",
        description="run each algorithm in a child process (a time limit can end it) or a thread",
    )
    outside_algorithms: list[str] = Field(
        default_factory=list,
        description="algorithm ids whose workitems an outside performer (role performer) "
        "claims with a Transaction UID; the hub's own workers never take them",
    )
    performer_lease_s: float = Field(
        default=3600.0,
        ge=1,
        description="how long an outside performer's claim lasts without an Update; then the "
        "janitor re-queues the workitem for another claim",
    )
    worker_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often an idle worker looks for a task"
    )
    janitor_interval_s: float = Field(
        default=5.0, gt=0, description="how often the janitor reaps expired leases"
    )
    onnx_providers: tuple[str, ...] = Field(
        default=("CUDAExecutionProvider", "CPUExecutionProvider"),
        min_length=1,
        description="ONNX Runtime execution providers, preferred first; those this "
        "machine lacks are skipped (a CPU node runs CPUExecutionProvider)",
    )
    model_dir: Path | None = Field(
        default=None,
        description="model store: <algorithm-id>.toml manifests and the ONNX files they pin; "
        "each replaces that algorithm's built-in demo model (docs/models.md)",
    )
    remote_algorithms_dir: Path | None = Field(
        default=None,
        description="folder of <id>.remote.toml (or .remote.json) files, one per "
        "vendor-hosted algorithm (docs/remote-algorithms.md)",
    )
    algorithm_plugins: tuple[str, ...] = Field(
        default=(),
        description="in-process algorithms from installed Python packages, as "
        '"module:attribute" (an algorithm, or a class making one), beside the built-in ones',
    )
    console_secret_file: Path | None = Field(
        default=None,
        description="key that signs console session cookies (made on first start, owner-only); "
        "default <data_dir>/console-secret; give every API replica the same file",
    )
    drift_baseline_days: float = Field(
        default=14.0, gt=0, description="a version's first days, the baseline of its drift"
    )
    drift_window_days: float = Field(
        default=7.0, gt=0, description="the recent window compared with the baseline"
    )
    drift_min_samples: int = Field(
        default=20, ge=1, description="observations both windows need before a figure is judged"
    )
    drift_max_positive_rate_change: float = Field(
        default=0.15, gt=0, le=1, description="largest absolute change of the positive rate"
    )
    drift_min_agreement: float = Field(
        default=0.8, ge=0, le=1, description="lowest recent agreement of readers' verdicts"
    )
    drift_max_distribution_distance: float = Field(
        default=0.3, gt=0, le=1, description="largest total variation distance of an input mix"
    )
    drift_max_spacing_change: float = Field(
        default=0.2, gt=0, description="largest relative change of the mean pixel spacing"
    )
    object_store: Literal["local", "s3"] = Field(
        default="local",
        description="where instances and results live: a folder in data_dir, or an "
        "S3-compatible bucket (docs/object-storage.md)",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (SeaweedFS, MinIO, Ceph...); default: AWS's"
    )
    s3_bucket: str | None = Field(default=None, description="bucket (made by the operator)")
    s3_prefix: str = Field(default="", description="key prefix inside the bucket, e.g. 'hub/'")
    s3_region: str | None = Field(default=None, description="region; default: AWS's chain")
    s3_access_key_id: str | None = Field(
        default=None, description="default: AWS_ACCESS_KEY_ID and the rest of AWS's chain"
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="default: AWS_SECRET_ACCESS_KEY and the rest of AWS's chain"
    )
    s3_part_size_mib: int = Field(
        default=8, ge=5, le=5120, description="multipart upload part size (S3: at least 5 MiB)"
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("model_dir", "remote_algorithms_dir")
    @classmethod
    def _existing_folder(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        folder = value.expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; create it or remove the setting")
        return folder

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
    def _s3_needs_a_bucket(self) -> HubSettings:
        if self.object_store == "s3" and not self.s3_bucket:
            raise ValueError("object_store is 's3' but s3_bucket is not set; name the bucket")
        return self

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


def load_hub_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> HubSettings:
    """Read and validate ``hub.toml``, with ``AIFI_HUB_*`` variables winning over it.

    Without ``path`` only defaults, ``AIFI_HUB_*`` variables and ``overrides``
    apply. ``environ`` defaults to the process environment. Raises
    :class:`aifi.errors.ConfigError` naming the file, key or variable at fault.
    """
    environ = os.environ if environ is None else environ
    where = f"hub configuration {path}" if path is not None else "hub settings"
    values = _file_values(path) if path is not None else {}
    from_env = _env_values(environ)
    values.update(from_env)
    values.update(overrides)
    try:
        return HubSettings(**values)
    except ValidationError as exc:
        raise ConfigError(f"{where} is invalid:\n{_explained(exc, set(from_env))}") from exc


def _file_values(path: Path) -> dict[str, Any]:
    """The settings in ``path``; unknown keys and sections are refused, folders made absolute."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"hub configuration {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"hub configuration {path} is not valid TOML: {exc}") from exc
    if isinstance(raw.get("hub"), dict):
        others = sorted(set(raw) - {"hub"})
        if others:
            raise ConfigError(
                f"hub configuration {path}: {_named(others[0], raw)} sits outside the [hub] "
                "table; move it into [hub] or remove it"
            )
        raw = dict(raw["hub"])
    unknown = sorted(set(raw) - set(HubSettings.model_fields))
    if unknown:
        raise ConfigError(
            f"hub configuration {path}: {_named(unknown[0], raw)} is not a hub setting; "
            f"the settings are {', '.join(sorted(HubSettings.model_fields))}"
        )
    for key in _FOLDERS:
        if isinstance(raw.get(key), str):
            folder = Path(raw[key]).expanduser()
            raw[key] = str(folder if folder.is_absolute() else path.parent / folder)
    raw.setdefault("data_dir", str(path.parent / "hub-data"))
    return raw


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """``AIFI_HUB_*`` variables as settings (pydantic-settings' parsing); strangers refused."""
    names = {f"{ENV_PREFIX}{field}".upper() for field in HubSettings.model_fields}
    strangers = sorted(
        k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in names
    )
    if strangers:
        raise ConfigError(
            f"environment variable {strangers[0]} is not a hub setting; the variables are "
            f"{', '.join(sorted(names))}"
        )
    source = EnvSettingsSource(HubSettings)
    source.env_vars = {k.lower(): v for k, v in environ.items()}
    return dict(source())


def _named(key: str, raw: Mapping[str, Any]) -> str:
    return f"section [{key}]" if isinstance(raw.get(key), dict) else f"key {key!r}"


def _explained(exc: ValidationError, from_env: set[str]) -> str:
    """One line per problem: the setting (and its variable), then what is wrong with it."""
    lines = []
    for error in exc.errors(include_url=False):
        setting = ".".join(str(part) for part in error["loc"]) or "settings"
        if setting in from_env:
            setting += f" (from {ENV_PREFIX}{setting.upper()})"
        lines.append(f"  {setting}: {error['msg']}")
    return "\n".join(lines)
