"""What the hub says each algorithm needs kept, for pseudonymizing data sent to it.

The hub's catalog is the authority: it lists every algorithm it runs, its
own and remote vendors' alike, with the attributes each needs beyond the
de-identification profile (data minimisation, PS3.15 E.3). The edge asks
it rather than its own installed copy, so an algorithm the edge has never
heard of (a vendor's, added at the hub) gets exactly what it needs.

A task is created for an algorithm id; the hub runs the version the
hospital's subscription pins, or the newest active one, so the edge judges
every active version's list (:meth:`HubCatalog.requests`). The hub's lists
are requests only: what leaves is decided by the hospital's release policy
(:mod:`aifi.edge.policy`), which sends the intersection with what its privacy
officer approved and holds new versions that ask for more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aifi.errors import HubRefused
from aifi.protocol.client import HubClient
from aifi.protocol.schemas import AlgorithmState, CatalogEntryOut

__all__ = ["HubCatalog"]


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
