"""The ``[orders]`` section of edge.toml: order triggers from the RIS (HL7 v2, FHIR).

Kept apart from :mod:`aifi.edge.config` so that the order modules and the
settings object import each other in one direction only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aifi.edge.tls import TlsSettings

__all__ = ["OrdersSettings"]


class OrdersSettings(BaseModel):
    """Orders from the RIS that ask for an algorithm on a study (:mod:`aifi.edge.orders`).

    ``codes`` maps the order's procedure code (HL7 OBR-4.1 universal service
    ID or OBR-44.1 procedure code; FHIR ``ServiceRequest.code.coding.code``)
    to an algorithm id; an order with a code not in it is refused with the
    reason, never guessed.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="where the MLLP listener binds")
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="MLLP port for HL7 v2 ORM^O01 / OMI^O23 (2575 is usual); unset: no HL7"
        " listener, FHIR ServiceRequest only",
    )
    codes: dict[str, str] = Field(
        min_length=1, description='order code → algorithm id, e.g. XRHANDBA = "bone-age"'
    )
    fhir: bool = Field(
        default=True,
        description="serve POST /fhir/ServiceRequest on the status server (needs"
        " [status] admin_password, sent as a Bearer token)",
    )
    wait_for_images_s: float = Field(
        default=3600.0,
        gt=0,
        description="how long an order waits for its images (at the edge or on a"
        " [[query_retrieve]] peer) before it ends canceled, with the reason",
    )
    retry_interval_s: float = Field(
        default=30.0, gt=0, description="how often a waiting order looks for its images again"
    )
    max_message_bytes: int = Field(
        default=1 << 20, ge=1024, description="largest HL7 message accepted over MLLP"
    )
    tls: TlsSettings | None = Field(
        default=None,
        description="MLLP over TLS (IHE ATNA secure node, BCP 195): the edge's cert and key,"
        " the CA bundle the RIS's client certificate is checked against; unset: plain TCP",
    )

    @field_validator("codes")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        for code, algorithm in value.items():
            if not code.strip() or not algorithm.strip():
                raise ValueError("each order code and algorithm id must be non-empty")
        return {code.strip(): algorithm.strip() for code, algorithm in value.items()}
