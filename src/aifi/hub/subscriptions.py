"""Subscriptions: which hospital may use which algorithm, when, under which agreement.

No subscription, no processing: :func:`covering` finds the subscription
valid for a hospital, algorithm and moment, or says why there is none.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from aifi.errors import ConfigError
from aifi.hub.auditing import record
from aifi.hub.models import Hospital, Subscription, utcnow

__all__ = [
    "CONNECTION_TEST",
    "add_subscription",
    "covering",
    "end_subscription",
    "list_subscriptions",
]

CONNECTION_TEST = "connection-test"
"""Agreement reference of the default subscription a new hospital gets."""


def add_subscription(
    session: Session,
    *,
    hospital_id: str,
    algorithm_id: str,
    agreement_reference: str,
    controller: str,
    processor: str,
    actor: str,
    algorithm_version: str | None = None,
    sub_processor: str | None = None,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    commit: bool = True,
) -> Subscription:
    """Record a subscription (audits, and commits).

    ``algorithm_version`` None follows the latest active catalog version.
    ``commit=False``: flushed with its ``subscription.added``, for a caller
    that commits them with more (:func:`aifi.hub.hospitals.add_hospital`).
    """
    if session.get(Hospital, hospital_id) is None:
        raise ConfigError(f"no hospital {hospital_id}; see 'aifi hub hospital list'")
    start = valid_from or utcnow()
    if valid_until is not None and valid_until <= start:
        raise ConfigError("valid_until must be later than valid_from")
    for label, value in (
        ("algorithm_id", algorithm_id),
        ("agreement_reference", agreement_reference),
        ("controller", controller),
        ("processor", processor),
    ):
        if not value.strip():
            raise ConfigError(f"a subscription needs a non-empty {label}")
    subscription = Subscription(
        hospital_id=hospital_id,
        algorithm_id=algorithm_id,
        algorithm_version=algorithm_version,
        valid_from=start,
        valid_until=valid_until,
        agreement_reference=agreement_reference,
        controller=controller,
        processor=processor,
        sub_processor=sub_processor,
    )
    session.add(subscription)
    session.flush()  # the subscription's id, for its event
    record(
        session,
        "subscription.added",
        actor=actor,
        hospital=hospital_id,
        algorithm=algorithm_id,
        algorithm_version=algorithm_version,
        agreement=agreement_reference,
        detail={
            "subscription": subscription.id,
            "valid_from": start.isoformat(),
            "valid_until": valid_until.isoformat() if valid_until else None,
            "controller": controller,
            "processor": processor,
            "sub_processor": sub_processor,
        },
    )
    if commit:
        session.commit()
    return subscription


def end_subscription(
    session: Session, subscription_id: str, *, actor: str, at: datetime | None = None
) -> Subscription:
    """End a subscription at ``at`` (default now); tasks after that are refused."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        raise ConfigError(f"no subscription {subscription_id}; see 'aifi hub subscription list'")
    end = at or utcnow()
    if subscription.valid_until is None or subscription.valid_until > end:
        subscription.valid_until = max(end, subscription.valid_from)
        record(
            session,
            "subscription.ended",
            actor=actor,
            hospital=subscription.hospital_id,
            algorithm=subscription.algorithm_id,
            agreement=subscription.agreement_reference,
            detail={"subscription": subscription.id, "valid_until": end.isoformat()},
        )
        session.commit()
    return subscription


def list_subscriptions(session: Session, hospital_id: str | None = None) -> list[Subscription]:
    """Subscriptions, of one hospital or all, oldest first."""
    query = select(Subscription)
    if hospital_id is not None:
        query = query.where(Subscription.hospital_id == hospital_id)
    return list(session.scalars(query.order_by(Subscription.created_at, Subscription.id)))


def covering(
    session: Session, hospital_id: str, algorithm_id: str, at: datetime
) -> Subscription | str:
    """The subscription that covers a task at ``at`` (the newest), or why none does."""
    found = list_subscriptions_for(session, hospital_id, algorithm_id)
    if not found:
        return (
            f"this hospital has no agreement for algorithm {algorithm_id!r}; "
            "ask the hub operator for a subscription"
        )
    valid = [
        s for s in found if s.valid_from <= at and (s.valid_until is None or at < s.valid_until)
    ]
    if not valid:
        periods = "; ".join(
            f"{s.agreement_reference}: {s.valid_from:%Y-%m-%d} to {s.valid_until:%Y-%m-%d}"
            if s.valid_until
            else f"{s.agreement_reference}: from {s.valid_from:%Y-%m-%d}"
            for s in found
        )
        return (
            f"no subscription of this hospital to {algorithm_id!r} is valid now "
            f"({periods}); ask the hub operator to renew it"
        )
    return max(valid, key=lambda s: (s.valid_from, s.created_at))


def list_subscriptions_for(
    session: Session, hospital_id: str, algorithm_id: str
) -> list[Subscription]:
    return list(
        session.scalars(
            select(Subscription).where(
                Subscription.hospital_id == hospital_id,
                Subscription.algorithm_id == algorithm_id,
            )
        )
    )
