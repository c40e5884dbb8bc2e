"""The hub's tables, as typed SQLAlchemy 2 ORM classes.

Every row belongs to exactly one hospital (tenant) and every query filters on
``hospital_id``. Nothing here identifies a patient: studies, series and
instances are known only by their pseudonymous UIDs. The schema is created
and changed by the Alembic migrations in :mod:`aifi.hub.migrations`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aifi.audit.tables import define_audit_tables
from aifi.protocol.schemas import AlgorithmState, Role, TaskState

__all__ = [
    "AUDIT_TABLES",
    "INPUT_CURRENT",
    "INPUT_PRIOR",
    "Base",
    "CatalogEntry",
    "Feedback",
    "Hospital",
    "HospitalContact",
    "InputStatistics",
    "Instance",
    "Principal",
    "Refusal",
    "Result",
    "Subscription",
    "Task",
    "TaskInput",
    "Token",
    "UpsEvent",
    "UpsSubscription",
    "new_id",
    "utcnow",
]

UID_LENGTH = 64  # PS3.5 §9.1: a UID is at most 64 characters

BIG_INTEGER = BigInteger().with_variant(Integer(), "sqlite")
"""64 bits for keys that grow with traffic and for sizes: BIGINT on PostgreSQL, SQLite's
INTEGER (64-bit already, and only ``INTEGER PRIMARY KEY`` is the auto-numbered rowid)."""


def new_id() -> str:
    """A random identifier for hub-side rows (tasks, hospitals)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(  # called-by: SQLAlchemy TypeDecorator, on every write
        self,
        value: datetime | None,
        dialect: Dialect,
    ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(  # called-by: SQLAlchemy TypeDecorator, on every read
        self,
        value: datetime | None,
        dialect: Dialect,
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}


class Hospital(Base):
    """A tenant: a care provider with an edge; it calls the hub as a :class:`Principal`."""

    __tablename__ = "hospitals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Principal(Base):
    """Who calls the hub: a hospital's edge, an operator or an auditor.

    A principal of role ``hospital`` acts for exactly one hospital; operators
    and auditors act for none. A principal holds any number of tokens, so a
    token is rotated by adding a new one and revoking the old one later.
    """

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default=Role.HOSPITAL.value)
    hospital_id: Mapped[str | None] = mapped_column(ForeignKey("hospitals.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    hospital: Mapped[Hospital | None] = relationship(lazy="joined")


class Token(Base):
    """A bearer token of a principal, kept only as SHA-256; valid until revoked."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    principal: Mapped[Principal] = relationship(lazy="joined")


class CatalogEntry(Base):
    """One version of an algorithm in the hub's catalog, from its manifest.

    A new version is a new row beside the old one; ``state`` says whether it
    takes new tasks (``active``) or not (``suspended``, ``retired``).
    """

    __tablename__ = "algorithms"

    algorithm_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    vendor: Mapped[str] = mapped_column(String(200))
    intended_use: Mapped[str] = mapped_column(Text)
    regulatory_status: Mapped[str] = mapped_column(String(200))
    # attributes the edge keeps when pseudonymizing for this version (PS3.15 E.3 options)
    keep_attributes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # the manifest's priors request {years, same_body_part, max_studies}; None: no priors
    priors: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    state: Mapped[str] = mapped_column(String(16), default=AlgorithmState.ACTIVE.value)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Subscription(Base):
    """A hospital's contract to use an algorithm: period, agreement and roles under it.

    ``algorithm_version`` pins one catalog version; None means the latest
    active one. ``valid_until`` None means open-ended.
    """

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_hospital_algorithm", "hospital_id", "algorithm_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    algorithm_id: Mapped[str] = mapped_column(String(64))
    algorithm_version: Mapped[str | None] = mapped_column(String(64))
    valid_from: Mapped[datetime] = mapped_column()
    valid_until: Mapped[datetime | None] = mapped_column()
    agreement_reference: Mapped[str] = mapped_column(String(200))
    controller: Mapped[str] = mapped_column(String(200))
    processor: Mapped[str] = mapped_column(String(200))
    sub_processor: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    """A pseudonymized input instance received by STOW-RS, stored under ``object_key``."""

    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("hospital_id", "sop_instance_uid", name="uq_instances_hospital_sop"),
        Index("ix_instances_hospital_study", "hospital_id", "study_instance_uid"),
        Index(
            "ix_instances_unpurged",
            "received_at",
            postgresql_where=text("purged_at IS NULL"),
            sqlite_where=text("purged_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BIG_INTEGER)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column()


class Task(Base):
    """One algorithm on one pseudonymized study for one hospital (a Unified Procedure Step)."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("hospital_id", "client_task_id", name="uq_tasks_hospital_client_task"),
        Index("ix_tasks_poll", "hospital_id", "acknowledged", "state", "created_at", "id"),
        Index("ix_tasks_hospital_created", "hospital_id", "created_at", "id"),
        Index("ix_tasks_state", "state"),
        Index("ix_tasks_queue", "state", "algorithm_id", "created_at"),
        Index("ix_tasks_priority_queue", "state", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    client_task_id: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    algorithm_id: Mapped[str] = mapped_column(String(64))
    algorithm_version: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    state: Mapped[str] = mapped_column(String(16), default=TaskState.SCHEDULED.value)
    reason: Mapped[str | None] = mapped_column(Text)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    findings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    delivered_sop_instance_uids: Mapped[list[str] | None] = mapped_column(JSON)
    subscription_id: Mapped[str | None] = mapped_column(ForeignKey("subscriptions.id"))
    agreement_reference: Mapped[str | None] = mapped_column(String(200))
    compute_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # the lease of the worker running it (aifi.hub.leases): who, until when, last heard of
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # queue order, Scheduled Procedure Step Priority (0074,1200) as a rank: 0 HIGH, 1 MEDIUM, 2 LOW
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    inputs: Mapped[list[TaskInput]] = relationship(
        back_populates="task", cascade="all, delete-orphan"
    )
    results: Mapped[list[Result]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="Result.id",
    )


#: A task input's role: the study the task is for, or an earlier study of the same patient.
INPUT_CURRENT, INPUT_PRIOR = "current", "prior"


class TaskInput(Base):
    """Which uploaded instances a task was asked to run on, and as what (``role``)."""

    __tablename__ = "task_inputs"
    # which tasks use an instance: the purge asks it of every instance it may delete
    __table_args__ = (Index("ix_task_inputs_instance", "instance_id"),)

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        BIG_INTEGER, ForeignKey("instances.id"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16), default=INPUT_CURRENT, server_default="current")

    task: Mapped[Task] = relationship(back_populates="inputs")
    instance: Mapped[Instance] = relationship(lazy="joined")


class Result(Base):
    """One DICOM object a task produced (SR, presentation state, summary image, ...)."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("hospital_id", "sop_instance_uid", name="uq_results_hospital_sop"),
        Index("ix_results_task", "task_id"),
        Index(
            "ix_results_unpurged",
            "created_at",
            postgresql_where=text("purged_at IS NULL"),
            sqlite_where=text("purged_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    kind: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BIG_INTEGER, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column()

    task: Mapped[Task] = relationship(back_populates="results")


class Refusal(Base):
    """An instance the hub refused at STOW-RS, with the reason; the instance is not stored."""

    __tablename__ = "refusals"
    __table_args__ = (Index("ix_refusals_hospital_time", "hospital_id", "created_at"),)

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    failure_reason: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


AUDIT_TABLES = define_audit_tables(Base.metadata, pending=True)
"""The hub's audit chains (and pending events) live in its own database, migrated with the rest."""


class HospitalContact(Base):
    """When a hospital's edge last called the hub, and as what (its User-Agent).

    Written at most once a minute per hospital by the authentication gate
    (:func:`aifi.hub.contacts.note_contact`); the console shows it as the
    edge's last contact and version.
    """

    __tablename__ = "hospital_contacts"

    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str | None] = mapped_column(String(200))


class Feedback(Base):
    """A radiologist's verdict on one task's result (IHE AIRAI: AI Result Assessment).

    One row per task; a later verdict replaces the earlier one. It carries
    no identity: neither the radiologist's nor the patient's.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_version", "algorithm_id", "algorithm_version", "recorded_at"),
    )

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"), index=True)
    algorithm_id: Mapped[str] = mapped_column(String(64))
    algorithm_version: Mapped[str | None] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))
    correction_code_value: Mapped[str | None] = mapped_column(String(16))
    correction_coding_scheme: Mapped[str | None] = mapped_column(String(16))
    correction_code_meaning: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class InputStatistics(Base):
    """Acquisition figures of one received instance, for drift of a version's inputs.

    Taken at STOW-RS from the pseudonymized header (:func:`aifi.hub.drift.input_statistics`):
    Manufacturer (0008,0070), KVP (0018,0060) and Pixel Spacing (0028,0030) or
    Imager Pixel Spacing (0018,1164), whichever the edge kept; nothing else.
    """

    __tablename__ = "input_statistics"
    __table_args__ = (
        UniqueConstraint("hospital_id", "sop_instance_uid", name="uq_input_statistics_sop"),
        Index("ix_input_statistics_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str | None] = mapped_column(String(16))
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    kvp: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_mm: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class UpsSubscription(Base):
    """A UPS-RS subscription (PS3.4 CC.2.3, PS3.18 §11.10) of a principal's AE title.

    ``workitem`` is a task id, or ``*`` for the global subscription (every
    workitem the principal may see: a hospital's own, a performer's outside
    ones). Events reach it over the WebSocket of :mod:`aifi.hub.ups_events`.
    """

    __tablename__ = "ups_subscriptions"
    __table_args__ = (
        UniqueConstraint("principal_id", "ae_title", "workitem", name="uq_ups_subscriptions"),
    )

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    workitem: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UpsEvent(Base):
    """An event about a workitem its row does not show: a cancel request (PS3.4 CC.2.4, type 2).

    Written by whichever hub process took the request; every process's
    WebSocket reads them from here, so subscribers learn of them wherever
    they are connected.
    """

    __tablename__ = "ups_events"

    id: Mapped[int] = mapped_column(BIG_INTEGER, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    hospital_id: Mapped[str] = mapped_column(ForeignKey("hospitals.id"))
    event_type: Mapped[int] = mapped_column(Integer)  # Event Type ID (0000,1002)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
