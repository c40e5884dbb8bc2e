"""``/subscriptions``: contracts between hospitals and algorithms (operators change them)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from aifi.errors import ConfigError
from aifi.hub import subscriptions
from aifi.hub.auth import CurrentHospital, Operator, Reader, actor_of
from aifi.hub.deps import SessionDep
from aifi.hub.models import Subscription
from aifi.protocol.schemas import SubscriptionCreate, SubscriptionOut

__all__ = ["router", "subscription_out"]

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])


def subscription_out(s: Subscription) -> SubscriptionOut:
    return SubscriptionOut(
        id=s.id,
        hospital_id=s.hospital_id,
        algorithm_id=s.algorithm_id,
        algorithm_version=s.algorithm_version,
        valid_from=s.valid_from,
        valid_until=s.valid_until,
        agreement_reference=s.agreement_reference,
        controller=s.controller,
        processor=s.processor,
        sub_processor=s.sub_processor,
    )


@router.get("", response_model=list[SubscriptionOut])
def list_subscriptions(
    _reader: Reader, session: SessionDep, hospital_id: str | None = None
) -> list[SubscriptionOut]:
    return [subscription_out(s) for s in subscriptions.list_subscriptions(session, hospital_id)]


@router.get("/mine", response_model=list[SubscriptionOut])
def my_subscriptions(hospital: CurrentHospital, session: SessionDep) -> list[SubscriptionOut]:
    """The calling hospital's own subscriptions (its edge checks its routing rules against them)."""
    return [subscription_out(s) for s in subscriptions.list_subscriptions(session, hospital.id)]


@router.post("", response_model=SubscriptionOut, status_code=status.HTTP_201_CREATED)
def add_subscription(
    body: SubscriptionCreate, operator: Operator, session: SessionDep
) -> SubscriptionOut:
    """Record a hospital's agreement to use an algorithm (pinned version or latest active)."""
    try:
        created = subscriptions.add_subscription(
            session, actor=actor_of(operator), **body.model_dump()
        )
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return subscription_out(created)


@router.post("/{subscription_id}/end", response_model=SubscriptionOut)
def end_subscription(
    subscription_id: str, operator: Operator, session: SessionDep
) -> SubscriptionOut:
    """End a subscription now; tasks under it are refused from then on."""
    try:
        ended = subscriptions.end_subscription(session, subscription_id, actor=actor_of(operator))
    except ConfigError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return subscription_out(ended)
