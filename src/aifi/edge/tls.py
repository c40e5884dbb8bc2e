"""DICOM over TLS with the hospital's certificates (PS3.15 Annex B).

The edge speaks the BCP 195 TLS Secure Transport Connection Profile
(PS3.15 B.9): TLS 1.2 or later, the peer authenticated by a certificate
chained to the hospital's CA bundle, the edge's own certificate shown to
the peer. One function builds the :class:`ssl.SSLContext` for each side:
the listener the PACS sends to (server) and the association the edge opens
towards a PACS (client); pynetdicom takes the context as it is.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from aifi.errors import ConfigError

__all__ = ["TlsSettings", "client_context", "server_context"]


class TlsSettings(BaseModel):
    """The hospital's certificates for DICOM TLS (PEM files)."""

    model_config = ConfigDict(extra="forbid")

    cert: Path | None = Field(
        default=None, description="the edge's certificate (PEM, chain after the leaf)"
    )
    key: Path | None = Field(default=None, description="the private key of that certificate (PEM)")
    ca_bundle: Path | None = Field(
        default=None,
        description="the CA certificates peers are checked against (PEM); unset: the system's",
    )
    require_client_cert: bool = Field(
        default=True,
        description="listener only: refuse a sender that shows no certificate from ca_bundle",
    )
    check_hostname: bool = Field(
        default=True,
        description="towards a PACS only: the PACS certificate must name the host configured",
    )


def _base(settings: TlsSettings, purpose: ssl.Purpose, where: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195 (RFC 9325): no TLS 1.0/1.1
    try:
        if settings.ca_bundle is not None:
            ctx.load_verify_locations(cafile=str(settings.ca_bundle))
        if settings.cert is not None:
            key = str(settings.key) if settings.key is not None else None
            ctx.load_cert_chain(str(settings.cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}.tls: cannot load the certificate files ({exc}); check that cert, key and"
            " ca_bundle name readable PEM files and that the key belongs to the certificate"
        ) from exc
    return ctx


def server_context(settings: TlsSettings, where: str = "listener") -> ssl.SSLContext:
    """The listener's context: our certificate, the sender's checked (PS3.15 B.9)."""
    if settings.cert is None:
        raise ConfigError(f"{where}.tls needs cert (and key): the edge must show a certificate")
    ctx = _base(settings, ssl.Purpose.CLIENT_AUTH, where)
    ctx.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(settings: TlsSettings, where: str = "pacs") -> ssl.SSLContext:
    """The context for an association the edge opens: the PACS checked, ours shown."""
    ctx = _base(settings, ssl.Purpose.SERVER_AUTH, where)
    ctx.check_hostname = settings.check_hostname
    return ctx
