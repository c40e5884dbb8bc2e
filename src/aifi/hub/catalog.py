"""The algorithm catalog: every version the hub offers, and its state.

At start-up the hub upserts one row per installed manifest, keyed by
(id, version); a new version becomes a new row beside the old one, which
keeps its own state. Each row carries what the edge needs to prepare a
task: the attributes to keep and the priors to send (:func:`priors_of`).
Operators suspend (no new tasks, temporarily), retire
(no new tasks, for good) or re-activate a version. A task runs on the
version its subscription pins, or on the newest active version.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aifi.algorithms.base import Manifest
from aifi.errors import ConfigError
from aifi.hub.auditing import SYSTEM_ACTOR, record
from aifi.hub.models import CatalogEntry, Subscription
from aifi.protocol.schemas import AlgorithmState

__all__ = ["list_catalog", "priors_of", "select_version", "set_state", "sync_catalog"]


def sync_catalog(session: Session, manifests: Iterable[Manifest]) -> list[CatalogEntry]:
    """Add each manifest's (id, version) not yet catalogued (active); refresh descriptions.

    The state of existing rows is never changed here: a suspended version
    stays suspended across restarts.
    """
    added: list[CatalogEntry] = []
    for manifest in manifests:
        entry = session.get(CatalogEntry, (manifest.id, manifest.version))
        if entry is None:
            entry = CatalogEntry(algorithm_id=manifest.id, version=manifest.version)
            session.add(entry)
            added.append(entry)
        entry.name = manifest.name
        entry.vendor = manifest.vendor
        entry.intended_use = manifest.intended_use
        entry.regulatory_status = manifest.regulatory_status
        entry.keep_attributes = list(manifest.keep_attributes)
        entry.priors = priors_of(manifest)
    for entry in added:
        record(
            session,
            "catalog.registered",
            actor=SYSTEM_ACTOR,
            algorithm=entry.algorithm_id,
            algorithm_version=entry.version,
            detail={"vendor": entry.vendor, "regulatory_status": entry.regulatory_status},
        )
    session.commit()
    return added


def priors_of(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's priors request as the catalog stores and serves it; None: no priors."""
    if manifest.priors is None:
        return None
    return {
        "years": manifest.priors.years,
        "same_body_part": manifest.priors.same_body_part,
        "max_studies": manifest.priors.max_studies,
    }


def list_catalog(session: Session) -> list[CatalogEntry]:
    """Every catalogued version, by id then registration order."""
    return list(
        session.scalars(
            select(CatalogEntry).order_by(CatalogEntry.algorithm_id, CatalogEntry.registered_at)
        )
    )


def set_state(
    session: Session,
    algorithm_id: str,
    version: str,
    state: AlgorithmState,
    *,
    actor: str,
    reason: str | None = None,
) -> CatalogEntry:
    """Suspend, retire or re-activate one version (commits and audits)."""
    entry = session.get(CatalogEntry, (algorithm_id, version))
    if entry is None:
        raise ConfigError(
            f"no version {version!r} of algorithm {algorithm_id!r} in the catalog; "
            "see 'aifi hub algorithm list'"
        )
    if entry.state == AlgorithmState.RETIRED and state != AlgorithmState.RETIRED:
        raise ConfigError(f"{algorithm_id} {version} is retired for good; register a new version")
    previous = entry.state
    if previous != state.value:
        entry.state = state.value
        record(
            session,
            "catalog.state",
            actor=actor,
            algorithm=algorithm_id,
            algorithm_version=version,
            detail={"from": previous, "to": state.value, "reason": reason},
        )
        session.commit()
    return entry


def select_version(session: Session, subscription: Subscription) -> CatalogEntry | str:
    """The catalog version a task under ``subscription`` runs on, or why there is none."""
    algorithm_id = subscription.algorithm_id
    if subscription.algorithm_version is not None:
        entry = session.get(CatalogEntry, (algorithm_id, subscription.algorithm_version))
        if entry is None:
            return (
                f"the subscription pins {algorithm_id} {subscription.algorithm_version}, "
                "which is not in the catalog"
            )
        if entry.state != AlgorithmState.ACTIVE:
            return f"algorithm {algorithm_id} {entry.version} is {entry.state}; it takes no tasks"
        return entry
    versions = list(
        session.scalars(
            select(CatalogEntry)
            .where(CatalogEntry.algorithm_id == algorithm_id)
            .order_by(CatalogEntry.registered_at.desc())
        )
    )
    if not versions:
        return f"algorithm {algorithm_id!r} is not in the catalog"
    for entry in versions:
        if entry.state == AlgorithmState.ACTIVE:
            return entry
    states = ", ".join(f"{e.version} {e.state}" for e in versions)
    return f"no version of algorithm {algorithm_id} is active ({states}); it takes no tasks"
