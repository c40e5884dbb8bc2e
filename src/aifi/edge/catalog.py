"""What the hub says each algorithm needs kept, for pseudonymizing data sent to it.

The hub's catalog is the authority: it lists every algorithm it runs, its
own and remote vendors' alike, with the attributes each needs beyond the
de-identification profile (data minimisation, PS3.15 E.3). The edge asks
it rather than its own installed copy, so an algorithm the edge has never
heard of (a vendor's, added at the hub) gets exactly what it needs.

A task is created for an algorithm id; the hub runs the version the
hospital's subscription pins, or the newest active one, so the edge judges
every active version's list (:meth:`HubCatalog.requests`), and pulls priors
only as every active version asks for them (:meth:`HubCatalog.priors`). The hub's lists
are requests only: what leaves is decided by the hospital's release policy
(:mod:`aifi.edge.policy`), which sends the intersection with what its privacy
officer approved and holds new versions that ask for more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aifi.core.manifest import Priors
from aifi.errors import HubError, HubRefused
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import AlgorithmState, CatalogEntryOut

__all__ = ["HubCatalog", "requested_priors"]

logger = logging.getLogger(__name__)


class HubCatalog:
    """Keep lists from the hub's ``GET /catalog``, cached for ``ttl_s`` seconds.

    A hub that cannot be reached raises :class:`aifi.errors.HubUnavailable`
    (the outbox retries later); an algorithm the hub does not offer raises
    :class:`aifi.errors.HubRefused` (the task fails with that reason).
    """

    def __init__(
        self,
        hub: HubClient,
        *,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[CatalogEntryOut] = []
        self._fetched_at: float | None = None

    def keep_attributes(self, algorithm_id: str) -> tuple[str, ...]:
        """Every attribute the active versions of ``algorithm_id`` request (sorted, unique)."""
        return tuple(
            sorted({name for names in self.requests(algorithm_id).values() for name in names})
        )

    def requests(self, algorithm_id: str) -> dict[str, tuple[str, ...]]:
        """Version → attributes it requests kept, for each active version of ``algorithm_id``."""
        active = [e for e in self._current(algorithm_id) if e.algorithm_id == algorithm_id]
        if not active:
            raise HubRefused(
                f"the hub offers no active version of algorithm {algorithm_id!r}; check the "
                "edge's routing rules against the hub's catalog ('aifi hub algorithm list')",
                status_code=404,
            )
        return {e.version: tuple(e.keep_attributes) for e in active}

    def priors(self, algorithm_id: str) -> Priors | None:
        """The priors to pull for ``algorithm_id``, or None when its versions take none.

        The edge cannot tell which active version will run (the subscription
        may pin one), and the hub refuses priors a version does not ask for
        and more than it takes (422). So priors are pulled only when every
        active version asks for them: the shortest span of years, the fewest
        studies, the same body part if any version wants it.
        """
        asked = [e.priors for e in self._current(algorithm_id) if e.algorithm_id == algorithm_id]
        if not asked or any(p is None for p in asked):
            return None
        wanted = [p for p in asked if p is not None]
        return Priors(
            years=min(p.years for p in wanted),
            same_body_part=any(p.same_body_part for p in wanted),
            max_studies=min(p.max_studies for p in wanted),
        )

    def entries(self) -> list[CatalogEntryOut]:
        """Every active catalog entry (fetched again when stale)."""
        return self._current("")

    def _current(self, algorithm_id: str) -> list[CatalogEntryOut]:
        """Active entries; fetched again when stale or when ``algorithm_id`` is missing."""
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > self._ttl_s
            known = any(e.algorithm_id == algorithm_id for e in self._entries)
            if stale or not known:
                self._entries = [e for e in self._hub.catalog() if e.state == AlgorithmState.ACTIVE]
                self._fetched_at = now
            return list(self._entries)


def requested_priors(hub: HubClient, algorithm_id: str) -> Priors | None:
    """The priors the hub's catalog says ``algorithm_id`` asks for; None also when no hub answers.

    For a pull made on a workitem or an order: a hub that is down or does
    not offer the algorithm costs the priors, never the pull (the outbox
    then waits for the hub, or the task fails with the hub's reason).
    """
    try:
        return HubCatalog(hub).priors(algorithm_id)
    except HubError as exc:
        logger.warning("priors for %s not looked up in the hub's catalog: %s", algorithm_id, exc)
        return None
