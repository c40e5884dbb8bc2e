"""The edge's one typed settings object, read from a TOML file.

Peers (the hub, the hospital's PACS) are named entries here, never
host:port in code. A placeholder hub token is refused outside development.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.uid import UID

from aifi.edge.fhir import FhirPeer
from aifi.edge.notify import RisPeer
from aifi.edge.orders_config import OrdersSettings
from aifi.edge.rules import Rule
from aifi.edge.tls import TlsSettings
from aifi.errors import ConfigError
from aifi.protocol.client import PLACEHOLDER_TOKEN, HubPeer

__all__ = [
    "DeliverySettings",
    "Destination",
    "DicomPeer",
    "EdgeSettings",
    "FhirPeer",
    "HubPeer",
    "ListenerSettings",
    "LoggingSettings",
    "OrdersSettings",
    "QueryRetrievePeer",
    "RetentionSettings",
    "RisPeer",
    "StatusSettings",
    "TlsSettings",
    "load_edge_settings",
]


ResultKind = Literal["sr", "gsps", "sc"]
ALL_RESULT_KINDS: tuple[ResultKind, ...] = ("sr", "gsps", "sc")


class ListenerSettings(BaseModel):
    """The DICOM listener the PACS sends to (PS3.8 association parameters)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(default="AIFI_EDGE", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="calling AE titles accepted; an empty list refuses every association",
    )
    check_called_ae_title: bool = Field(
        default=True,
        description="refuse an association whose called AE title is not ae_title"
        " (A-ASSOCIATE-RJ, PS3.8 9.3.4: called AE title not recognized); false accepts any"
        " called AE title, for a PACS that sends a wrong one",
    )
    tls: TlsSettings | None = Field(
        default=None, description="DICOM TLS on the listener (PS3.15 B.9, BCP 195)"
    )
    fsync: bool = Field(default=True, description="fsync each instance before answering success")
    max_pdu: int = Field(
        default=131072,
        ge=0,
        description="largest PDU we accept (0 = unlimited); 128 KiB is the most dcmtk sends,"
        " and fewer, larger PDUs cost pynetdicom less per instance",
    )
    min_free_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="below this much free space on the data folder's volume every C-STORE is"
        " answered 0xA700 (Out of Resources) before anything is written; 0 turns the guard off",
    )
    max_inflated_bytes: int = Field(
        default=256 << 20,
        ge=1,
        description="largest data set accepted once a Deflated Explicit VR Little Endian"
        " transfer is inflated (a deflate bomb is refused, not inflated)",
    )
    max_nesting_depth: int = Field(
        default=64,
        ge=1,
        le=200,
        description="deepest sequence nesting accepted; no IOD nests anywhere near this",
    )


class DicomPeer(BaseModel):
    """A DICOM node the edge sends to (the hospital's PACS)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = Field(default="AIFI_EDGE", min_length=1, max_length=16)
    tls: TlsSettings | None = Field(
        default=None, description="DICOM TLS towards this peer (PS3.15 B.9, BCP 195)"
    )
    commitment: bool = Field(
        default=False,
        description="ask for Storage Commitment (PS3.4 Annex J) after the stores: delivered"
        " means committed; the peer answers on a new association to the edge's listener",
    )
    commitment_timeout_s: float = Field(
        default=300.0, gt=0, description="how long to wait for the storage commitment report"
    )


class Destination(DicomPeer):
    """One place results go (``[[destinations]]``): a PACS, a VNA, a research archive."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    result_kinds: list[ResultKind] | None = Field(
        default=None, description="result objects this destination takes; unset: result_kinds"
    )
    transfer_syntax: list[str] | None = Field(
        default=None,
        description="transfer syntax UIDs proposed for uncompressed objects; unset: explicit"
        " and implicit VR little endian",
    )
    max_attempts: int | None = Field(
        default=None, ge=1, description="failed attempts before this destination's dead letter"
    )

    @field_validator("transfer_syntax")
    @classmethod
    def _known_syntaxes(cls, value: list[str] | None) -> list[str] | None:
        for uid in value or []:
            if not UID(uid).is_transfer_syntax:
                raise ValueError(f"{uid} is not a transfer syntax UID (PS3.6 Annex A)")
        return value


class QueryRetrievePeer(BaseModel):
    """A PACS the edge queries (C-FIND) and retrieves from (C-MOVE or C-GET), PS3.4 Annex C.

    ``method = "move"`` asks the peer to C-STORE the study to
    ``move_destination`` (default: the edge's own listener AE title, which the
    PACS must know as a modality); ``"get"`` receives it on the same
    association (PS3.4 C.4.3), for a PACS that cannot reach the edge;
    ``"dicomweb"`` searches by QIDO-RS and retrieves by WADO-RS from ``url``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="how the CLI names it; default ae_title")
    ae_title: str = Field(default="PACS", min_length=1, max_length=16)
    host: str = ""
    port: int = Field(default=104, ge=1, le=65535)
    calling_ae_title: str = Field(default="AIFI_EDGE", min_length=1, max_length=16)
    method: Literal["move", "get", "dicomweb"] = "move"
    move_destination: str | None = Field(
        default=None, max_length=16, description="C-MOVE destination; default listener.ae_title"
    )
    url: str | None = Field(
        default=None,
        description='method = "dicomweb": the PACS\'s DICOMweb base URL (QIDO-RS and WADO-RS,'
        " PS3.18 10.6 and 10.4), e.g. http://pacs:8042/dicom-web",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="how long one retrieve may take")
    tls: TlsSettings | None = Field(
        default=None,
        description="DICOM TLS towards this peer for C-FIND, C-MOVE and C-GET (PS3.15 B.9,"
        ' BCP 195), the same shape as [pacs.tls]; for method = "dicomweb", HTTPS with the'
        " hospital's client certificate and CA bundle (url https://)",
    )

    @model_validator(mode="after")
    def _address_for_its_method(self) -> QueryRetrievePeer:
        if self.method == "dicomweb" and not self.url:
            raise ValueError('method = "dicomweb" needs url (the PACS\'s DICOMweb base URL)')
        if self.method != "dicomweb" and not self.host:
            raise ValueError(f'method = "{self.method}" needs host and port (the PACS\'s DICOM)')
        if (
            self.method == "dicomweb"
            and self.tls is not None
            and urlsplit(self.url or "").scheme != "https"
        ):
            raise ValueError(
                'method = "dicomweb" with a tls table needs an https:// url (the client'
                " certificate and CA bundle are for HTTPS)"
            )
        return self


class RetentionSettings(BaseModel):
    """How long received originals and outbox copies stay on the edge's disk.

    Files go; the state rows (which instance, which task, when, that it was
    purged) stay for the audit. Days may be fractional.
    """

    model_config = ConfigDict(extra="forbid")

    keep_delivered_days: float = Field(
        default=7.0,
        ge=0,
        description="files of a task kept this long after its results are in PACS",
    )
    max_failed_age_days: float = Field(
        default=30.0,
        ge=0,
        description="files of failed or canceled work kept this long after it ended",
    )
    keep_unrouted_days: float = Field(
        default=1.0,
        ge=0,
        description="instances no rule sent anywhere kept this long after their study was stable",
    )
    interval_s: float = Field(default=3600.0, gt=0, description="how often the edge purges")


class DeliverySettings(BaseModel):
    """When the edge stops retrying a delivery and parks it as a dead letter."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=100, ge=1, description="failed attempts before dead letter")
    max_age_s: float = Field(
        default=86400.0, gt=0, description="seconds after the first failure before dead letter"
    )
    reconcile_interval_s: float = Field(
        default=60.0, gt=0, description="how often every open task is checked at the hub"
    )


class StatusSettings(BaseModel):
    """The edge's local status page, ``/metrics``, ``/health`` and ``/ready`` (HTTP).

    It shows patients' names and IDs, so it listens on loopback unless the
    hospital binds it to its own network; the admin password is exchanged for
    a session cookie at the login form.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535, description="0: any free port")
    admin_password: str | None = Field(
        default=None,
        description="the password of the status page's admin (tasks with patients' names,"
        " retry, discard, feedback); unset: only /health, /ready and /metrics are served",
    )
    session_hours: float = Field(default=8.0, gt=0, description="a login lasts this long")
    max_tasks: int = Field(default=200, ge=1, description="tasks shown per page, newest first")


class LoggingSettings(BaseModel):
    """How the edge logs: one line per step, each naming its task (the correlation id)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_requests: bool = Field(
        default=False,
        description="log every HTTP request to the hub (httpx) and to the status page",
    )


class EdgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: Literal["development", "production"] = "development"
    hospital: str | None = Field(default=None, description="this hospital's name, for the audit")
    data_dir: Path = Path("edge-data")
    key_file: Path | None = Field(
        default=None,
        description="the pseudonymization key; AIFI_EDGE_KEY_FILE (a file a KMS agent writes) or"
        " AIFI_EDGE_KEY (the key, base64) override it; default in development:"
        " <data_dir>/secret.key; production refuses a key inside data_dir",
    )
    release_policy: Path | None = Field(
        default=None,
        description="the hospital's release policy (TOML): what may leave per algorithm version;"
        " default: release-policy.toml beside the data folder",
    )
    quiet_period_s: float = Field(default=5.0, ge=0)
    late_instances: Literal["new-task", "ignore"] = "new-task"
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    hub: HubPeer = Field(default_factory=HubPeer)
    pacs: DicomPeer | None = None
    ris: RisPeer | None = Field(default=None, description="where urgent results are announced")
    fhir: FhirPeer | None = Field(
        default=None, description="FHIR R4 server urgent results are POSTed to (with or for RIS)"
    )
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    result_kinds: list[ResultKind] = Field(
        default_factory=lambda: list(ALL_RESULT_KINDS),
        description="which result objects this hospital stores into its PACS",
    )
    destinations: list[Destination] = Field(
        default_factory=list,
        description="where results are stored, in order; [pacs], if set, is the first (named"
        " 'pacs'); the first is the primary: urgent results are announced once it has them",
    )
    rules: list[Rule] = Field(default_factory=list)
    query_retrieve: list[QueryRetrievePeer] = Field(
        default_factory=list, description="PACS the edge pulls studies (and priors) from"
    )
    orders: OrdersSettings | None = Field(
        default=None,
        description="orders from the RIS (HL7 ORM/OMI over MLLP, FHIR ServiceRequest) that ask"
        " for an algorithm on a study; unset: no order triggers (aifi.edge.orders)",
    )
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("data_dir", "key_file", "release_policy")
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
        if self.environment != "development" and self.status.admin_password in (
            PLACEHOLDER_TOKEN,
            "",
        ):
            raise ValueError(
                "status.admin_password is the placeholder; set a password of your own for the"
                " status page (or leave it out: then the page serves only /health, /ready and"
                " /metrics)"
            )
        return self

    @model_validator(mode="after")
    def _key_outside_data_and_hub_over_https(self) -> EdgeSettings:
        env_file = os.environ.get(KEY_FILE_ENV, "").strip()
        if env_file:
            self.key_file = Path(env_file).expanduser().resolve()
        production = self.environment != "development"
        if production and not os.environ.get(KEY_ENV, "").strip():
            key = self.secret_key_path
            if key.is_relative_to(self.data_dir):
                raise ValueError(
                    f"the key file {key} is inside the data folder {self.data_dir}: in "
                    "production keep it apart (a copy of the data folder must not carry the "
                    f"key): set key_file, or {KEY_FILE_ENV} to a file your KMS agent writes, or "
                    f"{KEY_ENV}"
                )
        url = urlsplit(self.hub.url)
        if url.scheme == "http" and (production or not _loopback(url.hostname or "")):
            raise ValueError(
                f"hub.url {self.hub.url} is plain http: use https:// (plain http is accepted "
                "only to a loopback address in development)"
            )
        return self

    @model_validator(mode="after")
    def _destination_names_unique(self) -> EdgeSettings:
        names = [d.name for d in self.result_destinations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"[[destinations]] name {twice[0]!r} is used twice (note: [pacs] is named"
                " 'pacs'); give each destination its own name"
            )
        return self

    @property
    def result_destinations(self) -> list[Destination]:
        """Every destination in order: ``[pacs]`` first (as ``pacs``), then ``[[destinations]]``."""
        first = (
            [Destination(name="pacs", result_kinds=list(self.result_kinds), **dict(self.pacs))]
            if self.pacs is not None
            else []
        )
        return first + list(self.destinations)

    @property
    def secret_key_path(self) -> Path:
        return self.key_file or self.data_dir / "secret.key"

    @property
    def release_policy_path(self) -> Path:
        return self.release_policy or self.data_dir.parent / "release-policy.toml"


#: Environment variables that locate the key outside the configuration file.
KEY_ENV = "AIFI_EDGE_KEY"
KEY_FILE_ENV = "AIFI_EDGE_KEY_FILE"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_edge_settings(path: Path) -> EdgeSettings:
    """Read and validate ``edge.toml``; relative paths are taken from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"edge configuration {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"edge configuration {path} is not valid TOML: {exc}") from exc
    for key in ("data_dir", "key_file", "release_policy"):
        if key in raw and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    if "data_dir" not in raw:
        raw["data_dir"] = str(path.parent / "edge-data")
    _tls_paths_from(raw, path.parent)
    try:
        return EdgeSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {line}" for line in explain_errors(exc))
        raise ConfigError(f"edge configuration {path} is invalid:\n{problems}") from exc


def _tls_paths_from(raw: dict[str, Any], folder: Path) -> None:
    """Relative certificate paths in any ``tls`` table are taken from the file's folder."""
    tables = [
        raw.get("listener"),
        raw.get("pacs"),
        raw.get("orders"),
        *(raw.get("destinations") or []),
        *(raw.get("query_retrieve") or []),
    ]
    for table in tables:
        tls = table.get("tls") if isinstance(table, dict) else None
        if not isinstance(tls, dict):
            continue
        for key in ("cert", "key", "ca_bundle"):
            if isinstance(tls.get(key), str) and not Path(tls[key]).is_absolute():
                tls[key] = str(folder / tls[key])


def explain_errors(exc: ValidationError) -> list[str]:
    """One sentence per problem, naming the TOML section and key as the operator wrote them.

    An unknown key is refused rather than ignored (a rule with ``mach =``
    instead of ``match =`` would otherwise match every image), with the
    nearest known name as a suggestion.
    """
    lines: list[str] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = _toml_path((*loc[:-1], "")).strip() if len(loc) > 1 else ""
        if error["type"] == "extra_forbidden":
            name = str(loc[-1])
            known = _known_fields(loc[:-1])
            if isinstance(error["input"], dict) and not where:
                sections = _known_fields(loc[:-1], sections=True)
                close = difflib.get_close_matches(name, sections, n=1, cutoff=0.6)
                hint = f" (did you mean [{close[0]}]?)" if close else ""
                lines.append(f"unknown section [{name}]{hint}; known: {', '.join(sections)}")
            else:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                place = f" in {where}" if where else " at the top level"
                lines.append(f"unknown key {name!r}{place}{hint}; known: {', '.join(known)}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{_toml_path(loc) or 'the file'}: {message}")
    return lines


def _toml_path(loc: tuple[int | str, ...]) -> str:
    """Where an error is, as written in TOML: ``("rules", 0, "match")`` → ``[[rules]] #1 match``."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] = f"[[{loc[i - 1]}]] #{part + 1}"
        elif i == 0 and len(loc) > 1:
            parts.append(f"[{part}]")
        else:
            parts.append(str(part))
    return " ".join(parts)


def _known_fields(loc: tuple[int | str, ...], *, sections: bool = False) -> list[str]:
    """The field names of the settings model at ``loc``; only tables when ``sections``."""
    model: type[BaseModel] | None = EdgeSettings
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return []
    return [
        name
        for name, field in model.model_fields.items()
        if not sections or _model_in(field.annotation) is not None
    ]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
